"""Sweep of awqd's Triton kernel configurations on one GPU: which tile wins per (layer shape, batch).

Run on the GPU machine from the repository root (PYTHONPATH=.): python3 bench/triton_tune.py OUT_DIR
For each Llama-2-7B decoder-layer shape and batch it times every configuration of CONFIG_SPACE (CUDA-graph replay
over enough weight copies to defeat L2), checks each winner against the float32 reference, and times fp16 cuBLAS
and AutoAWQ's Triton GEMM the same way. The per-shape winners summed over the seven layers give the tuned
pass time to compare with the issue's targets. Compilation runs first, in parallel worker processes, so the
sweep itself only times. Writes OUT_DIR/triton-tune.json and prints a Markdown table.
"""

import itertools
import json
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from awqd.kernels import registry
from awqd.kernels.measure import measure_copy_bandwidth_gbps, random_weight, relative_error
from awqd.kernels.triton.dequant import dequant_matmul
from awqd.kernels.triton.gemm import GemmConfig, gemm
from awqd.kernels.triton.gemv import GemvConfig, gemv
from awqd.kernels.triton.layout import TOLERANCES, pack_awqd_w4
from awqd.quant.reference import dequantize, reference_linear

SHAPES = {(4096, 4096): 4, (11008, 4096): 2, (4096, 11008): 1}  # (out, in): layers per decoder layer
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
GEMV_BATCHES = (1, 2, 4)
DEQUANT_MIN_BATCH = 64
GROUP_SIZE = 128
TARGET_MS = {1: 0.040, 2: 0.060, 4: 0.060, 8: 0.060, 16: 0.060, 64: 0.100}
L2_MULTIPLE = 3
DEADLINE_S = 480


def gemv_space(batch: int) -> list[GemvConfig]:
    if batch == 1:
        tiles = itertools.product((4, 8, 16, 32), (256, 512, 1024, 2048), (1, 2, 4), (1, 2, 4))
        return [GemvConfig(n, k, split, warps) for n, k, split, warps in tiles if n * k <= 8192 * warps]
    tiles = itertools.product((4, 8, 16, 32), (256, 512, 1024), (1, 2, 4))  # gemv.TILES among them
    return [GemvConfig(n, k, 1, warps) for n, k, warps in tiles if n * k <= min(16384, 8192 * warps)]


def gemm_space(batch: int) -> list[GemmConfig]:
    if batch > 64:
        return [
            GemmConfig(block_m, block_n, block_k, split_k, warps, stages)
            for block_m, block_n, block_k, split_k, warps, stages in itertools.product(
                (64, 128), (64, 128), (64, 128), (1, 2), (4, 8), (3, 4)
            )
        ]
    block_ms = (16,) if batch <= 16 else (32,) if batch <= 32 else (32, 64)
    return [
        GemmConfig(block_m, block_n, block_k, split_k, warps, 3, prefetch)
        for block_m, block_n, block_k, split_k, warps, prefetch in itertools.product(
            block_ms, (64, 128, 256), (64, 128), (2, 4, 8), (4, 8), (True, False)
        )
        if block_n * block_k <= 16384
    ]


def jobs() -> list[tuple[str, int, object]]:
    work = [("gemv", batch, config) for batch in GEMV_BATCHES for config in gemv_space(batch)]
    return work + [("gemm", batch, config) for batch in BATCHES for config in gemm_space(batch)]


def launch(kernel: str, x: torch.Tensor, packed, config):
    return gemv(x, packed, config) if kernel == "gemv" else gemm(x, packed, config)


def compile_worker(index: int, workers: int) -> None:
    """Compiles (by running once) every workth job on small weights; the Triton cache carries them over."""
    device = torch.device("cuda")
    generator = torch.Generator(device=device).manual_seed(index)
    packed = {
        shape: pack_awqd_w4(random_weight(*shape, GROUP_SIZE, device, generator, bias=False), device)
        for shape in SHAPES
    }
    for kernel, batch, config in jobs()[index::workers]:
        for shape, weight in packed.items():
            with suppress(Exception):  # an invalid config is reported by the sweep
                launch(kernel, torch.randn(batch, shape[1], device=device, dtype=torch.float16), weight, config)
    torch.cuda.synchronize()


def precompile(workers: int) -> float:
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=compile_worker, args=(i, workers)) for i in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=max(1.0, 240 - (time.monotonic() - started)))
        if process.is_alive():
            process.kill()
    return time.monotonic() - started


def time_graph(calls: list[Callable[[], object]], iterations: int = 20) -> float:
    """Median ms of one call, from a CUDA graph of the calls (one per weight copy), replayed."""
    for call in calls:
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(calls))
    del graph
    return sorted(times)[len(times) // 2]


def main() -> None:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    device = torch.device("cuda")
    import triton

    compile_s = precompile(workers=min(16, os.cpu_count() or 4))
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    copy_gbps = measure_copy_bandwidth_gbps(device)
    generator = torch.Generator(device=device).manual_seed(0)
    autoawq = registry.build("autoawq_gemm_triton")
    layers = {}
    for out_features, in_features in SHAPES:
        int4_bytes = out_features * in_features // 2
        copies = max(2, -(-L2_MULTIPLE * l2 // int4_bytes))
        weights = [
            random_weight(out_features, in_features, GROUP_SIZE, device, generator, bias=False) for _ in range(copies)
        ]
        dense = [dequantize(w, torch.float16) for w in weights[: max(2, -(-L2_MULTIPLE * l2 // (4 * int4_bytes)))]]
        try:
            awq_packed = [autoawq.prepare(w, device) for w in weights]
        except Exception as error:
            awq_packed = f"{type(error).__name__}: {error}"
        layers[out_features, in_features] = (weights, [pack_awqd_w4(w, device) for w in weights], dense, awq_packed)
    results = []
    for batch in BATCHES:
        for (out_features, in_features), (weights, packed, dense, awq_packed) in layers.items():
            if time.monotonic() - started > DEADLINE_S:
                break
            x = torch.randn(batch, in_features, device=device, dtype=torch.float16)
            row = {"shape": [out_features, in_features], "batch": batch, "int4_bytes": out_features * in_features // 2}
            row["fp16_cublas_ms"] = time_graph([partial(F.linear, x, d) for d in dense])
            if isinstance(awq_packed, list):
                row["autoawq_gemm_triton_ms"] = time_graph([partial(autoawq.forward, x, p) for p in awq_packed])
            if batch >= DEQUANT_MIN_BATCH:
                row["awqd_dequant_cublas_ms"] = time_graph([partial(dequant_matmul, x, p) for p in packed])
            for kernel, space in (
                ("gemv", gemv_space(batch) if batch in GEMV_BATCHES else []),
                ("gemm", gemm_space(batch)),
            ):
                timings = []
                for config in space:
                    try:
                        timings.append((time_graph([partial(launch, kernel, x, p, config) for p in packed]), config))
                    except Exception as error:
                        message = f"{config}: {type(error).__name__}: {error}"[:300]
                        row.setdefault(f"{kernel}_errors", []).append(message)
                if not timings:
                    continue
                timings.sort(key=lambda pair: pair[0])
                best_ms, best = timings[0]
                errors = {}
                for dtype in (torch.float16, torch.bfloat16):
                    xd = x.to(dtype)
                    out = launch(kernel, xd, packed[0], best)
                    errors[str(dtype)] = relative_error(out, reference_linear(xd.float(), weights[0]))
                row[kernel] = {
                    "best_ms": best_ms,
                    "best": best.__dict__,
                    "top5": [{"ms": ms, **config.__dict__} for ms, config in timings[:5]],
                    "configs_timed": len(timings),
                    "relative_error": errors,
                    "correct": all(errors[str(d)] <= TOLERANCES[d] for d in (torch.float16, torch.bfloat16)),
                }
            results.append(row)
            print(json.dumps(row), flush=True)
    summary = summarize(results, copy_gbps)
    report = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "copy_bandwidth_gbps": copy_gbps,
        "compile_s": compile_s,
        "wall_s": time.monotonic() - started,
        "per_shape": results,
        "decoder_layer": summary,
    }
    (out_dir / "triton-tune.json").write_text(json.dumps(report, indent=1))


def layer_total(rows: dict, key: str) -> float | None:
    """Sum over the decoder layer's linears of one shape's time (a kernel's best) times its layer count."""
    total = 0.0
    for shape, count in SHAPES.items():
        value = rows[shape].get(key)
        value = value["best_ms"] if isinstance(value, dict) else value
        if value is None:
            return None
        total += value * count
    return total


def summarize(results: list[dict], copy_gbps: float) -> list[dict]:
    """Seven-layer pass per batch: each shape's best time times its layer count, per kernel and baselines."""
    layer_bytes = sum(o * i // 2 * count for (o, i), count in SHAPES.items())
    print(f"\n7 Llama-2-7B layers, g{GROUP_SIZE}, {layer_bytes / 1e6:.1f} MB int4; copy {copy_gbps:.0f} GB/s")
    print(
        "| batch | fp16 cuBLAS | autoawq triton | awqd gemv (tuned) | awqd gemm (tuned) | awqd dequant+cuBLAS "
        "| best awqd GB/s | target |"
    )
    print("|---|---|---|---|---|---|---|---|")
    summary = []
    for batch in BATCHES:
        rows = {tuple(r["shape"]): r for r in results if r["batch"] == batch}
        if len(rows) != len(SHAPES):
            continue

        entry = {
            "batch": batch,
            "fp16_cublas_ms": layer_total(rows, "fp16_cublas_ms"),
            "autoawq_gemm_triton_ms": layer_total(rows, "autoawq_gemm_triton_ms"),
            "awqd_gemv_ms": layer_total(rows, "gemv"),
            "awqd_gemm_ms": layer_total(rows, "gemm"),
            "awqd_dequant_cublas_ms": layer_total(rows, "awqd_dequant_cublas_ms"),
        }
        awqd = [v for v in (entry["awqd_gemv_ms"], entry["awqd_gemm_ms"], entry["awqd_dequant_cublas_ms"]) if v]
        if not awqd:
            continue
        entry["best_awqd_gbps"] = layer_bytes / (min(awqd) * 1e-3) / 1e9
        summary.append(entry)
        cells = [f"{v:.4f}" if v is not None else "-" for v in list(entry.values())[1:6]]
        target = TARGET_MS.get(batch) or (1.25 * entry["fp16_cublas_ms"] if batch == 512 else None)
        print(
            f"| {batch} | {' | '.join(cells)} | {entry['best_awqd_gbps']:.0f} "
            f"({100 * entry['best_awqd_gbps'] / copy_gbps:.0f}%) | {target if target is None else round(target, 3)} |"
        )
    return summary


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
