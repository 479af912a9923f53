"""Sweep of awqd's skinny W4A16 kernel (awqd/kernels/triton/skinny.py) on one GPU, against the baselines.

Run on the GPU machine from the repository root:
    PYTHONPATH=.:clients/python/src python3 bench/skinny_tune.py OUT_DIR [--space quick|full|scale-first]
        [--batches 1,2,4]
For the fused Llama-2-7B decoder-layer shapes (qkv, o, gate_up, down; g128 with zero point) at 1..128 tokens (or
--batches) it times every tile of the sweep space (quick: the boot-time tuning space and the default only;
scale-first: those and the scale-first tiles of SCALE_FIRST_TILES, from 16 tokens), checks each
winner against the float32 reference (awqd.quant.reference), and times in the same run fp16 cuBLAS, awqd's GEMV
and GEMM (their boot-time tuning spaces and defaults) and torch's tinygemm. Every timing is CUDA-graph replay over
enough weight copies to stream past L2 (awqd.kernels.measure.time_passes). Compilation runs first, in parallel
worker processes, so the sweep itself only times; the sweep stops at DEADLINE_S and reports what it has.
Writes OUT_DIR/skinny-tune.json (per shape and batch: every kernel's best, the skinny top 5, errors) and
OUT_DIR/skinny-tune.md (ms per decoder layer, the 4 shapes summed, per batch), and prints the table.

CPU smoke test of the script itself (tiny shapes, the Triton interpreter, no tinygemm):
    TRITON_INTERPRET=1 PYTHONPATH=.:clients/python/src python3 bench/skinny_tune.py /tmp/skinny --space quick
"""

import argparse
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import sys
import time
import traceback
import zlib
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from awqd.kernels import registry
from awqd.kernels.measure import (
    cache_bytes,
    measure_copy_bandwidth_gbps,
    random_weight,
    relative_error,
    served_counters,
    time_passes,
)
from awqd.kernels.triton import gemm, gemv, skinny
from awqd.kernels.triton.layout import TOLERANCES, AwqdW4, interpreting, pack_awqd_w4
from awqd.quant.reference import dequantize, reference_linear

GPU_SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}
GPU_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)
SMOKE_SHAPES = {"a": (96, 256), "b": (64, 512)}  # N not a multiple of the tiles
SMOKE_BATCHES = (1, 17)
GROUP_SIZE = 128
TARGET_MS = {1: 0.040, 2: 0.060, 4: 0.060, 8: 0.060, 16: 0.060, 32: 0.080, 64: 0.080, 128: 0.110}
ROTATION_CACHE_MULTIPLE = 3  # one rotation over the weight copies streams 3x the L2
GEMV_MAX_BATCH = 16  # linear in M: beyond this it only costs bench time
REPETITIONS = {"cuda": (3, 20), "cpu": (1, 2)}  # (warm-up, timed) passes per timing
DEADLINE_S = 120  # no new batch starts after this; compile (<= COMPILE_BUDGET_S) comes on top
COMPILE_BUDGET_S = 90
# The full sweep: (BLOCK_N, BLOCK_K, warps) x (TMA, stages) x split-K (the shape's default and twice or half it).
# About 300 distinct compilations over all batches: bounded so that compiling stays within COMPILE_BUDGET_S.
SWEEP_TILES = ((64, 128, 4), (128, 64, 4), (128, 128, 4), (128, 128, 8), (256, 64, 8), (256, 128, 8))
SWEEP_PIPELINES = ((True, 3), (True, 5), (False, 2))
# Scale-first tiles (SkinnyConfig.scale_first): (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages), split-K by shape. Tiles
# of more tokens than the batch are left out.
SCALE_FIRST_TILES = (
    (64, 128, 128, 4, 3),
    (64, 128, 128, 4, 4),
    (64, 256, 64, 8, 3),
    (128, 64, 128, 4, 3),
    (128, 128, 64, 4, 4),
    (128, 128, 128, 8, 3),
    (128, 128, 64, 8, 4),
    (128, 256, 64, 8, 3),
    (256, 64, 64, 4, 3),
    (256, 128, 64, 8, 3),
)
SCALE_FIRST_MIN_BATCH = 16
SPACES = ("quick", "full", "scale-first")


def shape_only(out_features: int, in_features: int) -> AwqdW4:
    return AwqdW4(None, None, None, in_features, out_features, GROUP_SIZE)


def skinny_space(batch: int, shape: tuple[int, int], device: torch.device, space: str) -> list[skinny.SkinnyConfig]:
    """Concrete (resolved) tiles to time, the boot-time tuning space first: split-K made explicit, no duplicates."""
    packed = shape_only(*shape)
    configs = [skinny.default_tile(batch), *skinny.tuning_space(batch)]
    if space == "scale-first" and batch >= SCALE_FIRST_MIN_BATCH:
        configs += [
            skinny.SkinnyConfig(block_m, block_n, block_k, 0, warps, stages, scale_first=True)
            for block_m, block_n, block_k, warps, stages in SCALE_FIRST_TILES
            if block_m <= max(64, batch)
        ]
    if space == "full":
        block_m = skinny.block_m_for(batch)
        for (block_n, block_k, warps), (tma, stages) in itertools.product(SWEEP_TILES, SWEEP_PIPELINES):
            auto = skinny.skinny_split_k(batch, packed, block_m, block_n, min(block_k, GROUP_SIZE), device)
            other = min(skinny.MAX_SPLIT_K, 2 * auto) if batch <= 16 else max(1, auto // 2)
            for split in (auto, other):
                configs.append(skinny.SkinnyConfig(block_m, block_n, block_k, split, warps, stages, tma))
    return list(dict.fromkeys(skinny.resolve(config, batch, packed, device) for config in configs))


def gemm_space(batch: int) -> list[gemm.GemmConfig | None]:
    return [None, *gemm.tuning_space(batch)]  # None: the untuned default


def gemv_space(batch: int) -> list[gemv.GemvConfig | None]:
    return [None, *gemv.tuning_space(batch)] if batch <= GEMV_MAX_BATCH else []


LAUNCHES: dict[str, Callable] = {"skinny": skinny.skinny, "gemm": gemm.gemm, "gemv": gemv.gemv}


def jobs(shapes: dict, batches: tuple, device: torch.device, space: str) -> list[tuple[str, int, tuple, object]]:
    work = []
    for batch, shape in itertools.product(batches, shapes.values()):
        work += [("skinny", batch, shape, config) for config in skinny_space(batch, shape, device, space)]
        work += [("gemm", batch, shape, config) for config in gemm_space(batch)]
        work += [("gemv", batch, shape, config) for config in gemv_space(batch)]
    return work


def compile_key(kernel: str, batch: int, shape: tuple[int, int], config, device: torch.device) -> str:
    """What a compiled kernel depends on: Triton specializes integer arguments equal to 1 or divisible by 16 (the
    shapes' N and K all are), so one run per key compiles the job for every shape."""
    if config is None:  # the default depends on the shape (split-K)
        config = {"skinny": skinny.resolve(skinny.default_tile(batch), batch, shape_only(*shape), device)}.get(
            kernel, shape
        )
    return f"{kernel} {config} {batch == 1} {batch % 16 == 0}"


def compile_worker(index: int, workers: int, space: str, batches: tuple[int, ...]) -> None:
    """Compiles (by running once) the jobs whose key hashes to this worker; Triton's cache carries them over."""
    device = torch.device("cuda")
    generator = torch.Generator(device=device).manual_seed(index)
    packed = {
        shape: pack_awqd_w4(random_weight(*shape, GROUP_SIZE, device, generator, bias=False), device)
        for shape in GPU_SHAPES.values()
    }
    work = [(torch.float16, *job) for job in jobs(GPU_SHAPES, batches, device, space)]
    work += [(torch.bfloat16, "skinny", b, shape, None) for b in batches for shape in GPU_SHAPES.values()]
    seen = set()
    with served_counters(device):  # the merging variants compile only where counters are held
        for dtype, kernel, batch, shape, config in work:
            key = f"{dtype} {compile_key(kernel, batch, shape, config, device)}"
            if key in seen or zlib.crc32(key.encode()) % workers != index:
                continue
            seen.add(key)
            with suppress(Exception):  # a tile that does not fit is reported by the sweep
                LAUNCHES[kernel](torch.randn(batch, shape[1], device=device, dtype=dtype), packed[shape], config)
        torch.cuda.synchronize()


def precompile(workers: int, space: str, batches: tuple[int, ...]) -> float:
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=compile_worker, args=(i, workers, space, batches)) for i in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=max(1.0, COMPILE_BUDGET_S - (time.monotonic() - started)))
        if process.is_alive():
            process.kill()
    return time.monotonic() - started


def median_ms(name: str, passes: list[Callable[[], object]], device: torch.device) -> float:
    warmup, iterations = REPETITIONS[device.type if device.type == "cuda" else "cpu"]
    timing = time_passes(name, passes, device, warmup, iterations)
    if device.type == "cuda" and not timing.cuda_graph:
        raise RuntimeError(f"{name}: CUDA-graph capture failed, so no graph-replay time")
    return timing.median_ms


@dataclasses.dataclass
class ShapeWeights:
    weights: list  # QuantizedWeight copies, rotated over
    packed: list[AwqdW4]
    dense: list[torch.Tensor]
    tinygemm: list | str  # packed copies, or why not


def copies_for(nbytes: int, device: torch.device) -> int:
    if device.type != "cuda":
        return 2
    return max(2, math.ceil(ROTATION_CACHE_MULTIPLE * cache_bytes(device) / nbytes))


def shape_weights(shape: tuple[int, int], device: torch.device, generator: torch.Generator) -> ShapeWeights:
    out_features, in_features = shape
    int4_bytes = out_features * in_features // 2
    weights = [
        random_weight(out_features, in_features, GROUP_SIZE, device, generator, bias=False)
        for _ in range(copies_for(int4_bytes, device))
    ]
    dense = [dequantize(w, torch.float16) for w in weights[: copies_for(4 * int4_bytes, device)]]
    tinygemm_candidate = registry.build("torch_int4_tinygemm")
    try:
        tinygemm: list | str = [tinygemm_candidate.prepare(w, device) for w in weights]
    except Exception as error:
        tinygemm = f"{type(error).__name__}: {error}"[:300]
    return ShapeWeights(weights, [pack_awqd_w4(w, device) for w in weights], dense, tinygemm)


def check(kernel: str, config, x: torch.Tensor, layer: ShapeWeights) -> float:
    with served_counters(x.device):
        out = LAUNCHES[kernel](x, layer.packed[0], config)
    return relative_error(out, reference_linear(x.float(), layer.weights[0]))


def sweep_kernel(
    kernel: str, space: list, x: torch.Tensor, layer: ShapeWeights, device: torch.device
) -> tuple[dict, dict]:
    """Every configuration's graph-replay time ({config: ms}) and a summary: the best, the top 5, failures, and the
    best one's error (fp16)."""
    timings, failures = [], []
    for config in space:
        passes = [partial(LAUNCHES[kernel], x, packed, config) for packed in layer.packed]
        try:
            timings.append((median_ms(kernel, passes, device), config))
        except Exception as error:
            failures.append(f"{config}: {type(error).__name__}: {error}"[:300])
    if not timings:
        return {"failures": failures}, {}
    timings.sort(key=lambda pair: pair[0])
    best_ms, best = timings[0]
    error = check(kernel, best, x, layer)
    return {
        "best_ms": best_ms,
        "best": dataclasses.asdict(best) if best is not None else "default",
        "top5": [{"ms": ms, **(dataclasses.asdict(c) if c else {"default": True})} for ms, c in timings[:5]],
        "timed": len(timings),
        "failures": failures[:5],
        "failed": len(failures),
        "relative_error_fp16": error,
        "correct": error <= TOLERANCES[torch.float16],
    }, {config: ms for ms, config in timings}


def measure_row(name: str, batch: int, shape: tuple, layer: ShapeWeights, device: torch.device, space: str) -> dict:
    x = torch.randn(batch, shape[1], device=device, dtype=torch.float16)
    row: dict = {"shape": name, "out_in": list(shape), "batch": batch}
    row["fp16_cublas_ms"] = median_ms("cublas", [partial(F.linear, x, d) for d in layer.dense], device)
    if isinstance(layer.tinygemm, list):
        tinygemm = registry.build("torch_int4_tinygemm")
        row["tinygemm_ms"] = median_ms("tinygemm", [partial(tinygemm.forward, x, p) for p in layer.tinygemm], device)
    else:
        row["tinygemm_error"] = layer.tinygemm
    row["skinny"], skinny_ms = sweep_kernel("skinny", skinny_space(batch, shape, device, space), x, layer, device)
    default = skinny.resolve(skinny.default_tile(batch), batch, shape_only(*shape), device)
    row["skinny_default_ms"] = skinny_ms.get(default)
    row["skinny_default_reduce_ms"] = skinny_ms.get(dataclasses.replace(default, merge=False))
    tuned = [skinny_ms[config] for config in skinny_space(batch, shape, device, "quick") if config in skinny_ms]
    row["skinny_tuning_space_best_ms"] = min(tuned, default=None)
    scale_first = [(ms, config) for config, ms in skinny_ms.items() if config.scale_first]
    if scale_first:
        ms, config = min(scale_first, key=lambda timed: timed[0])
        errors = {dtype: check("skinny", config, x.to(dtype), layer) for dtype in TOLERANCES}
        row["skinny_scale_first"] = {
            "best_ms": ms,
            "best": dataclasses.asdict(config),
            **{f"relative_error_{str(dtype)[6:]}": error for dtype, error in errors.items()},
            "correct": all(error <= TOLERANCES[dtype] for dtype, error in errors.items()),
        }
    row["skinny_bf16_default_error"] = check("skinny", None, x.to(torch.bfloat16), layer)
    row["skinny_bf16_default_correct"] = row["skinny_bf16_default_error"] <= TOLERANCES[torch.bfloat16]
    row["gemm"], _ = sweep_kernel("gemm", gemm_space(batch), x, layer, device)
    if gemv_space(batch):
        row["gemv"], _ = sweep_kernel("gemv", gemv_space(batch), x, layer, device)
    return row


def value_ms(row: dict, key: str) -> float | None:
    value = row.get(key)
    return value.get("best_ms") if isinstance(value, dict) else value


COLUMNS = (
    ("fp16 cuBLAS", "fp16_cublas_ms"),
    ("awqd GEMV", "gemv"),
    ("awqd GEMM", "gemm"),
    ("tinygemm", "tinygemm_ms"),
    ("skinny default, split-K reduce launch", "skinny_default_reduce_ms"),
    ("skinny default", "skinny_default_ms"),
    ("skinny tuned (boot space)", "skinny_tuning_space_best_ms"),
    ("skinny scale-first best", "skinny_scale_first"),
    ("skinny best (sweep)", "skinny"),
)


def layer_table(rows: list[dict], shapes: dict, batches: tuple, copy_gbps: float) -> tuple[list[dict], str]:
    """ms per decoder layer (the shapes summed) per batch and kernel, with the roofline and the issue's targets."""
    layer_bytes = sum(o * i // 2 + o * i // GROUP_SIZE * 4 for o, i in shapes.values())
    roofline_ms = layer_bytes / (copy_gbps * 1e9) * 1e3
    lines = [
        f"One decoder layer ({', '.join(f'{n} {o}x{i}' for n, (o, i) in shapes.items())}), W4 g{GROUP_SIZE} with "
        f"zero point, ms per layer, CUDA-graph replay, weights rotated past L2. Roofline {roofline_ms:.4f} ms "
        f"({layer_bytes / 1e6:.1f} MB of int4 + scales at the measured copy bandwidth {copy_gbps:.0f} GB/s).",
        "",
        "| tokens | " + " | ".join(title for title, _ in COLUMNS) + " | skinny GB/s | target | all correct |",
        "|---" * (len(COLUMNS) + 4) + "|",
    ]
    summary = []
    for batch in batches:
        by_shape = {row["shape"]: row for row in rows if row["batch"] == batch}
        if set(by_shape) != set(shapes):
            continue
        entry: dict = {"batch": batch}
        for _, key in COLUMNS:
            values = [value_ms(by_shape[name], key) for name in shapes]
            entry[key] = sum(values) if all(v is not None for v in values) else None
        best = entry["skinny"]
        entry["skinny_gbps"] = layer_bytes / (best * 1e-3) / 1e9 if best else None
        entry["all_correct"] = all(
            row["skinny"].get("correct")
            and row["skinny_bf16_default_correct"]
            and row.get("skinny_scale_first", {}).get("correct", True)
            for row in by_shape.values()
        )
        summary.append(entry)
        cells = [f"{entry[key]:.4f}" if entry[key] is not None else "-" for _, key in COLUMNS]
        gbps = f"{entry['skinny_gbps']:.0f}" if entry["skinny_gbps"] else "-"
        lines.append(
            f"| {batch} | {' | '.join(cells)} | {gbps} | {TARGET_MS.get(batch, '-')} | {entry['all_correct']} |"
        )
    return summary, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--space", choices=SPACES, default="full", help="which tiles to time (see above)")
    parser.add_argument("--batches", type=lambda text: tuple(int(b) for b in text.split(",")), default=None)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    on_gpu = torch.cuda.is_available() and not interpreting()
    device = torch.device("cuda" if on_gpu else "cpu")
    shapes, batches = (GPU_SHAPES, GPU_BATCHES) if on_gpu else (SMOKE_SHAPES, SMOKE_BATCHES)
    batches = args.batches or batches
    import triton

    compile_s = precompile(min(16, os.cpu_count() or 4), args.space, batches) if on_gpu else 0.0
    print(f"compiled in {compile_s:.0f} s", flush=True)
    copy_gbps = measure_copy_bandwidth_gbps(device)
    generator = torch.Generator(device=device).manual_seed(0)
    layers = {name: shape_weights(shape, device, generator) for name, shape in shapes.items()}
    rows = []
    for batch in batches:  # batch-major: a deadline leaves whole decoder layers for the batches it reached
        if time.monotonic() - started > compile_s + DEADLINE_S:
            print(f"deadline: {batch} tokens and up not timed", flush=True)
            break
        for name, shape in shapes.items():
            row = measure_row(name, batch, shape, layers[name], device, args.space)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary, table = layer_table(rows, shapes, batches, copy_gbps)
    header = torch.cuda.get_device_name(device) if on_gpu else "CPU (Triton interpreter)"
    header += f", torch {torch.__version__}"
    header += f", triton {triton.__version__}, {args.space} sweep"
    print(f"\n{header}\n\n{table}", flush=True)
    report = {
        "device": header,
        "copy_bandwidth_gbps": copy_gbps,
        "compile_s": compile_s,
        "wall_s": time.monotonic() - started,
        "space": args.space,
        "per_shape": rows,
        "decoder_layer": summary,
    }
    (args.out_dir / "skinny-tune.json").write_text(json.dumps(report, indent=1))
    (args.out_dir / "skinny-tune.md").write_text(f"{header}\n\n{table}\n")


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
