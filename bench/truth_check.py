"""Kernel decisions you can trust (issue 13), on a GPU: `python3 bench/truth_check.py --out DIR`.

1. The old failures, reproduced with CuPy RawKernel stand-ins (bench/plugins/cupy_plugins.py), each on the OLD
   in-process path (check_correctness and time_candidate called directly, as selection did before isolation) in
   its own subprocess, so the damage stays there:
   - crash: a kernel with an out-of-bounds write at 1 token poisons the CUDA context, and every candidate checked
     after it in the same process fails too;
   - phantom: a kernel on the legacy null stream passes the eager check, and its CUDA-graph timing is below the
     memory roofline (replays skip it) while its replayed output is stale.
2. The new isolated selection (awqd's select_kernels, as `awqd serve` runs it) with both stand-ins and every
   built-in candidate on the fused engine shapes: both rejected with their reasons, the rest measured, the
   worker's start-up time, the copy bandwidth, the per-bucket decisions.
3. Optional (--engine-check): bench/engine_check.py --graph-vs-eager-only, CUDA-graph decode against eager decode
   at batch 1, 16 and 32 on the chosen kernels.

Writes truth-check.json and truth-check.md under --out. `--device cpu --arch tiny` is a dry run of step 2 (no
CuPy parts) that works on any machine.
"""

import argparse
import json
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = ROOT / "bench" / "plugins"
sys.path[:0] = [str(ROOT), str(PLUGIN_DIR)]

from awqd.check_kernels import layer_shapes, statuses  # noqa: E402
from awqd.kernels import plugins, registry  # noqa: E402
from awqd.kernels.selection import select_kernels  # noqa: E402
from awqd.node.devices import discover  # noqa: E402

CUPY_PLUGINS = ("cupy_plugins:OutOfBoundsWrite", "cupy_plugins:NullStreamLinear")
OLD_PATH_LIMIT_S = 600

# The old path, in a fresh interpreter: argv = [root, plugin dir, device, scenario, shapes json].
OLD_PATH = r"""
import json, sys, traceback
sys.path[:0] = sys.argv[1:3]
import torch
from awqd.kernels import registry
from awqd.kernels.requirements import probe_requirements
from awqd.kernels.measure import (check_correctness, check_graph_replay, measure_copy_bandwidth_gbps,
    prepare_layers, random_layer_weights, roofline_floor_ms, rotation_copies, time_candidate)
from cupy_plugins import NullStreamLinear, OutOfBoundsWrite

device, scenario, shapes = torch.device(sys.argv[3]), sys.argv[4], [tuple(s) for s in json.loads(sys.argv[5])]
result = {"scenario": scenario}
try:
    if scenario == "crash":
        others = [n for n in ("dequant_cublas", "awqd_triton_gemv", "awqd_triton_gemm") if n in registry.CANDIDATES]
        checks = [("cupy_out_of_bounds", check_correctness(OutOfBoundsWrite(), device, shapes, 128))]
        checks += [(name, check_correctness(registry.build(name), device, shapes, 128)) for name in others]
        result["checks"] = [{"kernel": n, "passed": c.passed, "error": c.error} for n, c in checks]
    else:
        candidate = NullStreamLinear()
        check = check_correctness(candidate, device, shapes, 128)
        result["eager_check"] = {"passed": check.passed, "error": check.error}
        bandwidth = measure_copy_bandwidth_gbps(device)
        floor_ms = roofline_floor_ms(shapes, bandwidth)
        weights = random_layer_weights(shapes, 128, device, rotation_copies(shapes, device))
        layers = prepare_layers(candidate, weights, device)
        graph = time_candidate(layers, device, 16, 10, 50)
        eager = time_candidate(layers, device, 16, 10, 50, use_cuda_graph=False)
        replay = check_graph_replay(candidate, device, shapes, 128, 16)
        result.update(
            copy_bandwidth_gbps=bandwidth, roofline_floor_ms=floor_ms, graph_timing_ms=graph.median_ms,
            graph_timed=graph.cuda_graph, eager_timing_ms=eager.median_ms,
            replay_check={"passed": replay.passed, "error": replay.error},
        )
except Exception as error:
    result["error"] = f"{type(error).__name__}: {error}"
    result["traceback"] = traceback.format_exc()
print("RESULT " + json.dumps(result))
"""


def old_path(scenario: str, device: str, shapes: list) -> dict:
    command = [sys.executable, "-c", OLD_PATH, str(ROOT), str(PLUGIN_DIR), device, scenario, json.dumps(shapes)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=OLD_PATH_LIMIT_S)
    except subprocess.TimeoutExpired:
        return {"scenario": scenario, "error": f"no result in {OLD_PATH_LIMIT_S} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(lines[-1].removeprefix("RESULT ")) if lines else {"scenario": scenario}
    result["exit_status"] = done.returncode
    result["seconds"] = round(time.perf_counter() - started, 1)
    if not lines:
        result["stderr_tail"] = done.stderr[-2000:]
    return result


def isolated_selection(device: str, arch: str, budget_s: float, graph_batch: int) -> dict:
    shapes, group_size = layer_shapes(arch, None)
    info = next(d for d in discover().devices if d.torch_device == device)
    decisions = select_kernels(info, shapes, group_size, None, budget_s, graph_batch=graph_batch)
    return {
        "shapes": [list(shape) for shape in shapes],
        "device_label": decisions.device_label,
        "source": decisions.source,
        "duration_s": decisions.duration_s,
        "worker_startup_s": decisions.worker_startup_s,
        "worker_restarts": decisions.worker_restarts,
        "copy_bandwidth_gbps": decisions.copy_bandwidth_gbps,
        "graph_buckets": decisions.graph_buckets,
        "degraded": decisions.degraded,
        "candidates": [asdict(report) for report in decisions.candidates],
        "decisions": [{**asdict(d), "statuses": statuses(decisions, d)} for d in decisions.decisions],
        "notes": decisions.notes,
    }


def engine_check(out: Path, device: str) -> dict:
    command = [sys.executable, str(ROOT / "bench" / "engine_check.py"), "--out", str(out), "--device", device]
    done = subprocess.run([*command, "--graph-vs-eager-only"], capture_output=True, text=True, timeout=1800)
    path = out / "engine-check.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    return {"exit_status": done.returncode, "graph_vs_eager": data.get("graph_vs_eager"), "errors": data.get("errors")}


def markdown(data: dict) -> str:
    lines = [f"# Truth check: {data['device']['name']} ({data['started_at'][:10]})", ""]
    for result in data.get("old_path", []):
        lines.append(f"## Old in-process path: {result['scenario']}")
        lines.append("")
        lines.append("```json")
        lines.append(json.dumps({k: v for k, v in result.items() if k != "traceback"}, indent=1))
        lines.append("```")
        lines.append("")
    selection = data.get("selection")
    if selection:
        lines += [
            "## Isolated selection",
            "",
            f"{selection['device_label']}: {selection['source']} in {selection['duration_s']:.1f} s; worker start-up "
            f"{selection['worker_startup_s']:.2f} s, {selection['worker_restarts']} restart(s); copy bandwidth "
            f"{selection['copy_bandwidth_gbps']:.1f} GB/s; CUDA-graph buckets {selection['graph_buckets']}",
            "",
            "| candidate | supported | correctness | graph replay | rejected |",
            "|---|---|---|---|---|",
        ]
        for c in selection["candidates"]:
            correctness = c["correctness"]
            check = "-" if correctness is None else "passed" if correctness["passed"] else correctness["error"]
            replay = c["graph_replay"]
            replay_text = (
                "-" if replay is None else ("passed " + replay["error"]) if replay["passed"] else replay["error"]
            )
            lines.append(f"| {c['name']} | {c['supported']} | {check} | {replay_text} | {c['rejected'] or '-'} |")
        lines += ["", "| bucket | chosen | source | timings (ms) | left out |", "|---|---|---|---|---|"]
        for d in selection["decisions"]:
            timings = ", ".join(f"{t['kernel']} {t['median_ms']:.4g}" for t in d["timings"])
            left_out = "; ".join(f"{r['kernel']}: {r['reason']}" for r in d["rejected"])
            lines.append(f"| {d['batch_tokens']} | {d['kernel']} | {d['source']} | {timings} | {left_out or '-'} |")
        lines += ["", "Notes:", *(f"- {note}" for note in selection["notes"])]
    if data.get("engine_check"):
        lines += ["", "## CUDA-graph decode vs eager decode", "", "```json"]
        lines += [json.dumps(data["engine_check"], indent=1), "```"]
    if data["errors"]:
        lines += ["", "## Errors", *(f"- {error}" for error in data["errors"])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--arch", default="llama-2-7b", help="layer shapes (tiny for a quick CPU dry run)")
    parser.add_argument("--budget", type=float, default=120.0, help="selection budget in seconds")
    parser.add_argument("--graph-batch", type=int, default=64)
    parser.add_argument("--engine-check", action="store_true", help="also run engine_check --graph-vs-eager-only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    on_gpu = args.device.startswith("cuda")
    data: dict = {
        "started_at": datetime.now(UTC).isoformat(),
        "device": {
            "name": torch.cuda.get_device_name(args.device) if on_gpu else f"CPU ({platform.processor() or 'host'})",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        },
        "args": {k: str(v) for k, v in vars(args).items()},
        "errors": [],
    }
    shapes, _ = layer_shapes(args.arch, None)

    def save() -> None:
        (args.out / "truth-check.json").write_text(json.dumps(data, indent=1))
        (args.out / "truth-check.md").write_text(markdown(data))

    specs: list[str] = []
    if on_gpu:
        data["old_path"] = [old_path(scenario, args.device, shapes) for scenario in ("crash", "phantom")]
        save()
        specs = list(CUPY_PLUGINS)
    else:
        data["notes"] = ["CPU dry run: the CuPy stand-ins and the old-path reproductions need a GPU"]
    try:
        plugins.activate(specs, registry.CANDIDATES)
        data["selection"] = isolated_selection(args.device, args.arch, args.budget, args.graph_batch)
    except Exception as error:
        data["errors"].append(f"isolated selection: {type(error).__name__}: {error}: {traceback.format_exc()}")
    save()
    if args.engine_check and on_gpu:
        data["engine_check"] = engine_check(args.out / "engine-check", args.device)
        save()
    print(markdown(data))
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
