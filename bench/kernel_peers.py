"""Every kernel candidate on one device in one run: awqd's, AutoAWQ's, torch's int4 (tinygemm), fbgemm-gpu-genai's and
gemlite's, beside fp16 cuBLAS and the bandwidth roofline, and the daemon's own choice per bucket.

    python bench/kernel_peers.py --out DIR [--shapes llama-2-7b|tiny] [--buckets 1,2,4] [--device cuda:0]

On the GPU machine (wheels in .whl, see GPU-MACHINE.md; fbgemm-gpu-genai 1.6.0 matches its torch 2.11):
    python bench/kernel_peers.py --out $OUT [--seed-gemlite-config h100]
gemlite autotunes every new (shape, batch) cold, for minutes in all; --seed-gemlite-config loads a config first
(gemlite bundles H100's, the same sm_90) and --cache-dir keeps what it tuned for a following run on a warm machine.
On a CPU (a dry run of every step on tiny shapes):
    python bench/kernel_peers.py --out /tmp/peers --shapes tiny --device cpu

The work is one decoder layer as awqd's engine runs it (the fused qkv, o, gate_up and down linears), W4 with a zero
point. Everything is timed by awqd.kernels.measure, the code boot-time selection and the Benchmark RPC use: CUDA-graph
replay where capture works, weights rotated over copies that exceed twice the L2. Steps, each saved to
DIR/kernel-peers.json as soon as it is done, so a run cut short keeps what it measured:
 1. eligibility: every candidate's verdict and reason on this device (the capability table);
 2. selection: the daemon's select_kernels on these shapes, without a decision cache (its kernel per bucket);
 3. correctness against the float32 reference, then ms per layer for each candidate at each bucket, fp16 cuBLAS and
    the roofline (int4 weights, scales and zeros over the measured copy bandwidth);
 4. the bf16 kernels bare (bf16 in and out, no casts) and the casts alone: what running them in an fp16 model costs;
 5. whether the daemon's choice per bucket is the fastest in step 3's table within 5%;
 6. the one-time repack of a 7B (the 4 fused linears x 32 layers) per candidate: seconds and bytes, from the
    canonical weight already on the device.
DIR/kernel-peers.md tabulates it.
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from awqd.benchmark.kernel import quantized_bytes
from awqd.kernels import registry
from awqd.kernels.cache_dir import CACHE_DIR_ENV
from awqd.kernels.measure import (
    FP16_BASELINE,
    KernelTiming,
    check_correctness,
    default_repetitions,
    measure_copy_bandwidth_gbps,
    prepare_layers,
    random_layer_weights,
    random_weight,
    rotation_copies,
    synchronize,
    time_candidate,
    time_dense_baseline,
    time_passes,
)
from awqd.kernels.selection import DEFAULT_BUCKETS, device_eligibility, select_kernels
from awqd.node.devices import DeviceInfo, discover

SHAPES = {
    # awqd.engine's fused Llama-2-7B linears: qkv, o, gate_up, down
    "llama-2-7b": ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)),
    "tiny": ((384, 128), (128, 128), (512, 128), (128, 256)),
}
GROUP_SIZE = {"llama-2-7b": 128, "tiny": 64}
LAYERS_7B = 32
WITHIN = 1.05  # the daemon's choice may be this much slower than the fastest measured
REPACK_REPEATS = 3


def bare_kernels() -> dict[str, tuple[torch.dtype, Callable[[torch.Tensor, Any], torch.Tensor]]]:
    """The op each cast-wrapped candidate calls, with the activation dtype it takes natively."""
    return {
        "torch_int4_tinygemm": (
            torch.bfloat16,
            lambda x, p: torch.ops.aten._weight_int4pack_mm(x, p.weight, p.group_size, p.scales_and_zeros),
        ),
        "fbgemm_bf16i4_rowwise": (
            torch.bfloat16,
            lambda x, p: torch.ops.fbgemm.bf16i4bf16_rowwise(x, p.weight, p.scales, p.zeros),
        ),
        "fbgemm_bf16i4_shuffled": (
            torch.bfloat16,
            lambda x, p: torch.ops.fbgemm.bf16i4bf16_shuffled(x, p.weight, p.scales, p.zeros),
        ),
        "torch_int4_cpu": (  # the CPU's bf16 kernel: exercises this step in a CPU dry run
            torch.bfloat16,
            lambda x, p: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p.weight, p.group_size, p.scales_and_zeros),
        ),
    }


def timing_row(timing: KernelTiming) -> dict[str, Any]:
    return {
        "median_ms": round(timing.median_ms, 5),
        "p10_ms": round(timing.p10_ms, 5),
        "p90_ms": round(timing.p90_ms, 5),
        "cuda_graph": timing.cuda_graph,
    }


def device_info(torch_device: torch.device) -> DeviceInfo:
    devices = discover().devices
    wanted = "cpu" if torch_device.type == "cpu" else str(torch_device)
    return next(d for d in devices if d.torch_device == wanted)


def versions() -> dict[str, str]:
    import importlib.metadata

    found = {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
    for package in ("triton", "fbgemm-gpu-genai", "gemlite", "autoawq"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


def packed_bytes(packed: Any) -> int:
    """Bytes of every tensor a candidate's packed layer holds (dataclass fields, module parameters and buffers)."""
    if isinstance(packed, torch.Tensor):
        return packed.numel() * packed.element_size()
    if isinstance(packed, torch.nn.Module):
        return sum(packed_bytes(t) for t in [*packed.parameters(), *packed.buffers()])
    if dataclasses.is_dataclass(packed):
        return sum(packed_bytes(getattr(packed, f.name)) for f in dataclasses.fields(packed))
    return 0


def kernel_pass(
    kernel: Callable[[torch.Tensor, Any], torch.Tensor], pairs: list[tuple[Any, torch.Tensor]]
) -> Callable[[], None]:
    def run_pass() -> None:
        for packed, x in pairs:
            kernel(x, packed)

    return run_pass


def cast_pass(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> Callable[[], None]:
    def run_pass() -> None:
        for x, y in zip(inputs, outputs, strict=True):
            x.to(torch.bfloat16)
            y.to(torch.float16)

    return run_pass


class Run:
    def __init__(self, args: argparse.Namespace):
        self.device = torch.device(args.device)
        self.shapes = list(SHAPES[args.shapes])
        self.group_size = GROUP_SIZE[args.shapes]
        self.buckets = [int(b) for b in args.buckets.split(",")]
        self.out = Path(args.out)
        self.warmup, self.iterations = default_repetitions(self.device)
        self.result: dict[str, Any] = {
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "host CPU",
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "versions": versions(),
            "shapes": self.shapes,
            "group_size": self.group_size,
            "buckets": self.buckets,
            "unit": "ms per decoder layer (sum over the 4 fused linears), median of CUDA-event or perf_counter times",
            "notes": [],
        }

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "kernel-peers.json").write_text(json.dumps(self.result, indent=1))
        (self.out / "kernel-peers.md").write_text(markdown(self.result))

    def step(self, name: str, work: Callable[[], Any]) -> None:
        started = time.perf_counter()
        print(f"[kernel-peers] {name} ...", flush=True)
        try:
            self.result[name] = work()
        except Exception as error:  # one failed step must not lose the others
            self.result["notes"].append(f"step {name} failed: {type(error).__name__}: {error}")
        self.result.setdefault("step_seconds", {})[name] = round(time.perf_counter() - started, 1)
        self.save()

    def eligibility(self) -> list[dict[str, Any]]:
        return [
            {"name": e.name, "family": e.family, "supported": e.supported, "reason": e.reason}
            for e in device_eligibility(device_info(self.device))
        ]

    def supported(self) -> list[str]:
        """Supported candidates, gemlite last: a cold gemlite autotunes for minutes, and the others come first."""
        names = [row["name"] for row in self.result.get("eligibility", []) if row["supported"]]
        return sorted(names, key=lambda name: name.startswith("gemlite"))

    def selection(self, budget_s: float) -> dict[str, Any]:
        decisions = select_kernels(
            device_info(self.device), self.shapes, self.group_size, None, budget_s=budget_s, buckets=self.buckets
        )
        # select_kernels installs the worker's tuned tiles here too: the table below times awqd's kernels at them
        return {
            "source": decisions.source,
            "duration_s": round(decisions.duration_s, 1),
            "kernels": {str(d.batch_tokens): d.kernel for d in decisions.decisions},
            "reasons": {str(d.batch_tokens): d.reason for d in decisions.decisions},
            "timings": {
                str(d.batch_tokens): {t.kernel: round(t.median_ms, 5) for t in d.timings} for d in decisions.decisions
            },
            "rejected": {
                r.name: r.correctness.error for r in decisions.candidates if r.correctness and not r.correctness.passed
            },
            "notes": decisions.notes,
        }

    def table(self) -> dict[str, Any]:
        correctness, timings, bare = {}, {}, {}
        self.result.update({"correctness": correctness, "timings": timings, "bare_kernels": bare})
        copies = rotation_copies(self.shapes, self.device)
        weights = random_layer_weights(self.shapes, self.group_size, self.device, copies)
        for name in self.supported():
            candidate = registry.build(name)
            check = check_correctness(candidate, self.device, self.shapes, self.group_size)
            correctness[name] = dataclasses.asdict(check)
            self.save()
            if not check.passed:
                continue
            try:
                layers = prepare_layers(candidate, weights, self.device)
            except Exception as error:
                self.result["notes"].append(f"{name}: prepare failed: {type(error).__name__}: {error}")
                continue
            rows = timings.setdefault(name, {})
            for bucket in self.buckets:
                try:
                    rows[str(bucket)] = timing_row(
                        time_candidate(layers, self.device, bucket, self.warmup, self.iterations)
                    )
                except Exception as error:
                    self.result["notes"].append(f"{name} at {bucket} tokens: {type(error).__name__}: {error}")
            if name in bare_kernels():
                bare[name] = self.time_bare(name, layers)
            del layers
            self.save()
        baseline = timings.setdefault(FP16_BASELINE, {})
        for bucket in self.buckets:
            baseline[str(bucket)] = timing_row(
                time_dense_baseline(self.shapes, self.group_size, self.device, bucket, self.warmup, self.iterations)
            )
        return {"weight_copies": copies}

    def time_bare(self, name: str, layers: Any) -> dict[str, Any]:
        dtype, kernel = bare_kernels()[name]
        rows = {}
        for bucket in self.buckets:
            inputs = [
                [torch.randn(bucket, i, device=self.device).to(dtype) for _, i in layers.shapes] for _ in layers.packed
            ]
            passes = [
                kernel_pass(kernel, list(zip(packed, x, strict=True)))
                for packed, x in zip(layers.packed, inputs, strict=True)
            ]
            rows[str(bucket)] = timing_row(time_passes(name, passes, self.device, self.warmup, self.iterations))
        return rows

    def casts(self) -> dict[str, Any]:
        """fp16 -> bf16 of every linear's input and bf16 -> fp16 of its output, alone: the casts a bf16 kernel adds."""
        if self.device.type != "cuda":
            return {"skipped": "the casts are an fp16-model cost: CUDA only"}
        rows = {}
        for bucket in self.buckets:
            inputs = [torch.randn(bucket, i, device=self.device, dtype=torch.float16) for _, i in self.shapes]
            outputs = [torch.randn(bucket, o, device=self.device, dtype=torch.bfloat16) for o, _ in self.shapes]
            timing = time_passes("casts", [cast_pass(inputs, outputs)], self.device, self.warmup, self.iterations)
            rows[str(bucket)] = timing_row(timing)
        return rows

    def roofline(self) -> dict[str, Any]:
        bandwidth = measure_copy_bandwidth_gbps(self.device)
        num_bytes = quantized_bytes(self.shapes, self.group_size)
        return {
            "copy_bandwidth_gbps": round(bandwidth, 1),
            "bytes_per_layer": num_bytes,
            "ms_per_layer": round(num_bytes / (bandwidth * 1e9) * 1e3, 5),
        }

    def choice_check(self) -> dict[str, Any]:
        chosen = self.result.get("selection", {}).get("kernels", {})
        timings = self.result.get("timings", {})
        verdicts = {}
        for bucket in map(str, self.buckets):
            measured = {
                k: rows[bucket]["median_ms"] for k, rows in timings.items() if k != FP16_BASELINE and bucket in rows
            }
            if not measured or bucket not in chosen:
                continue
            fastest = min(measured, key=measured.get)
            kernel = chosen[bucket]
            ratio = measured[kernel] / measured[fastest] if kernel in measured else None
            verdicts[bucket] = {
                "chosen": kernel,
                "fastest": fastest,
                "ratio": None if ratio is None else round(ratio, 3),
                "within_5_percent": ratio is not None and ratio <= WITHIN,
            }
        return verdicts

    def repack(self) -> dict[str, Any]:
        costs = {}
        generator = torch.Generator(device=self.device).manual_seed(0)
        canonical = [random_weight(o, i, self.group_size, self.device, generator, False) for o, i in self.shapes]
        for name, check in self.result.get("correctness", {}).items():
            if not check["passed"]:
                continue
            candidate = registry.build(name)
            per_shape_ms, layer_bytes, peak_extra = [], 0, 0
            for weight in canonical:
                times = []
                for _ in range(REPACK_REPEATS):
                    synchronize(self.device)
                    if self.device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(self.device)
                    before = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
                    started = time.perf_counter()
                    packed = candidate.prepare(weight, self.device)
                    synchronize(self.device)
                    times.append((time.perf_counter() - started) * 1e3)
                    if self.device.type == "cuda":
                        peak_extra = max(peak_extra, torch.cuda.max_memory_allocated(self.device) - before)
                size = packed_bytes(packed)
                del packed
                per_shape_ms.append(statistics.median(times))
                layer_bytes += size
            costs[name] = {
                "per_layer_ms": round(sum(per_shape_ms), 3),
                "model_7b_s": round(sum(per_shape_ms) * LAYERS_7B / 1e3, 2),
                "model_7b_packed_gib": round(layer_bytes * LAYERS_7B / 2**30, 3),
                "peak_extra_mib_per_linear": round(peak_extra / 2**20, 1),
            }
        return costs


def set_gemlite_autotune(mode: str) -> str:
    """gemlite's own autotune setting: "fast" (its default), "max", or "default" (one config per kernel, no search)."""
    import gemlite

    gemlite.set_autotune(mode)
    return mode


def seed_gemlite_configs(source: str) -> str:
    """Load gemlite configs before anything runs: a JSON path, or the tag of one gemlite bundles (e.g. "h100", the
    same sm_90 as an H200), so covered shapes skip the cold autotune. Their winners were tuned on that GPU."""
    import gemlite

    path = Path(source) if source.endswith(".json") else Path(gemlite.__file__).parent / "configs" / f"{source}.json"
    if not gemlite.GemLiteLinear.load_config(str(path)):
        raise FileNotFoundError(f"no gemlite config at {path}")
    return str(path)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Kernel candidates on {result['device']} ({result['date']})",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}.",
        f"Work: {len(result['shapes'])} linears {result['shapes']}, W4 g{result['group_size']} with zero point; "
        f"{result['unit']}.",
        "",
    ]
    timings = result.get("timings", {})
    chosen = result.get("selection", {}).get("kernels", {})
    roofline = result.get("roofline", {})
    if timings:
        kernels = sorted(timings, key=lambda k: (k != FP16_BASELINE, k))
        lines += [
            "| tokens | " + " | ".join(kernels) + " | fastest | daemon's choice |",
            "|---" * (len(kernels) + 3) + "|",
        ]
        for bucket in map(str, result["buckets"]):
            row = {k: timings[k][bucket]["median_ms"] for k in kernels if bucket in timings[k]}
            quantized = {k: v for k, v in row.items() if k != FP16_BASELINE}
            fastest = min(quantized, key=quantized.get) if quantized else "-"
            cells = [
                "-" if k not in row else (f"**{row[k]:.4f}**" if k == fastest else f"{row[k]:.4f}") for k in kernels
            ]
            lines.append(f"| {bucket} | " + " | ".join(cells) + f" | {fastest} | {chosen.get(bucket, '-')} |")
        if roofline:
            lines += [
                "",
                f"Roofline: {roofline['ms_per_layer']} ms per layer ({roofline['bytes_per_layer']} bytes at the "
                f"measured copy bandwidth {roofline['copy_bandwidth_gbps']} GB/s).",
            ]
    check = result.get("choice_check", {})
    if check:
        ok = sum(v["within_5_percent"] for v in check.values())
        lines += ["", f"The daemon's choice is the fastest within 5% at {ok} of {len(check)} buckets:"]
        lines += [
            f"- {b}: chose {v['chosen']}, fastest {v['fastest']}, ratio {v['ratio']}"
            for b, v in check.items()
            if not v["within_5_percent"]
        ]
    bare, casts = result.get("bare_kernels", {}), result.get("casts", {})
    if bare:
        lines += ["", "## bf16 kernels: with the casts (as timed above) and bare", ""]
        lines += [
            "| tokens | " + " | ".join(f"{k} bare" for k in bare) + " | casts alone |",
            "|---" * (len(bare) + 2) + "|",
        ]
        for bucket in map(str, result["buckets"]):
            cells = [f"{bare[k][bucket]['median_ms']:.4f}" if bucket in bare[k] else "-" for k in bare]
            cast = casts.get(bucket, {}).get("median_ms", "-") if isinstance(casts, dict) else "-"
            lines.append(f"| {bucket} | " + " | ".join(cells) + f" | {cast} |")
    repack = result.get("repack_7b", {})
    if repack:
        lines += [
            "",
            "## One-time repack of 32 layers of these shapes (a 7B for llama-2-7b), from the canonical weight",
            "",
        ]
        lines += [
            "| candidate | per layer (ms) | 7B (s) | 7B packed (GiB) | peak extra per linear (MiB) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {v['per_layer_ms']} | {v['model_7b_s']} | {v['model_7b_packed_gib']} | "
            f"{v['peak_extra_mib_per_linear']} |"
            for k, v in repack.items()
        ]
    failed = {k: v["error"] for k, v in result.get("correctness", {}).items() if not v["passed"]}
    unsupported = [row for row in result.get("eligibility", []) if not row["supported"]]
    if failed or unsupported:
        lines += ["", "## Not timed", ""]
        lines += [f"- {k}: failed its correctness check: {v}" for k, v in failed.items()]
        lines += [f"- {row['name']}: {row['reason']}" for row in unsupported]
    if result["notes"]:
        lines += ["", "## Notes", "", *[f"- {note}" for note in result["notes"]]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="llama-2-7b")
    parser.add_argument("--buckets", default=",".join(map(str, DEFAULT_BUCKETS)))
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--selection-budget", type=float, default=300.0)
    parser.add_argument(
        "--cache-dir",
        default="/tmp/awqd-kernel-peers",
        help="what the daemon's --cache-dir would be: gemlite's tuned configs and Triton's builds go there",
    )
    parser.add_argument(
        "--seed-gemlite-config",
        help="a gemlite config JSON, or a bundled tag such as h100, loaded first to skip covered cold autotunes",
    )
    parser.add_argument(
        "--gemlite-autotune",
        choices=("fast", "max", "default"),
        help="gemlite's autotune setting (it defaults to fast); 'default' skips the search when time is short",
    )
    args = parser.parse_args()
    os.environ.setdefault(CACHE_DIR_ENV, args.cache_dir)
    os.environ.setdefault("TRITON_CACHE_DIR", str(Path(args.cache_dir) / "triton"))

    run = Run(args)
    if args.gemlite_autotune:
        run.step("gemlite_autotune", lambda: set_gemlite_autotune(args.gemlite_autotune))
    if args.seed_gemlite_config:
        run.step("gemlite_seed_config", lambda: seed_gemlite_configs(args.seed_gemlite_config))
    run.step("eligibility", run.eligibility)
    run.step("selection", lambda: run.selection(args.selection_budget))
    run.step("roofline", run.roofline)
    run.step("table", run.table)
    run.step("casts", run.casts)
    run.step("choice_check", run.choice_check)
    run.step("repack_7b", run.repack)
    print((run.out / "kernel-peers.md").read_text())


if __name__ == "__main__":
    main()
