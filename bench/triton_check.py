"""Full-size check of awqd's Triton kernels on one GPU: correctness, then timing against the issue's targets.

Run on the GPU machine from the repository root (PYTHONPATH=.): python3 bench/triton_check.py > $OUT/triton_check.txt
0. Boot-time tuning of awqd's kernels on the Llama-2-7B shapes (as selection does), so 1 and 2 run the tuned tiles.
1. Correctness of awqd's three Triton candidates against the float32 reference (awqd.quant.reference) on the
   Llama-2-7B, Llama-3-8B and Mistral-7B decoder-layer shapes: group 128 (32 and 64 on 4096x4096), zero point on
   and off, fp16 and bf16, batch 1 to 512. Tolerance: awqd.kernels.triton.layout.TOLERANCES.
2. Timing of the seven Llama-2-7B layers (awqd.kernels.measure, as boot-time selection times them) for awqd's
   kernels, autoawq_gemm_triton and fp16 cuBLAS at batch 1..512, with int4 GB/s and the issue's targets.
A kernel failure is reported in the table and the JSON summary, never raised. Stays within ~6 minutes on an H200.
"""

import json
import sys
import time
import traceback

import torch

from awqd.kernels import registry
from awqd.kernels.measure import (
    measure_copy_bandwidth_gbps,
    prepare_layers,
    random_layer_weights,
    random_weight,
    relative_error,
    rotation_copies,
    synchronize,
    time_candidate,
    time_dense_baseline,
)
from awqd.kernels.triton.layout import TOLERANCES
from awqd.quant.reference import dequantize

AWQD_KERNELS = ("awqd_triton_gemv", "awqd_triton_gemm", "awqd_triton_dequant_cublas")
TIMED_KERNELS = (*AWQD_KERNELS, "autoawq_gemm_triton")
# (out, in) of each decoder-layer linear: q, k, v, o, gate, up, down.
LLAMA2_7B = ((4096, 4096),) * 4 + ((11008, 4096),) * 2 + ((4096, 11008),)
LLAMA3_8B = ((4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (14336, 4096), (14336, 4096), (4096, 14336))
MISTRAL_7B = LLAMA3_8B  # same projections: GQA with 8 KV heads of 128, MLP 14336
MODELS = {"llama-2-7b": LLAMA2_7B, "llama-3-8b": LLAMA3_8B, "mistral-7b": MISTRAL_7B}
CORRECTNESS_BATCHES = (1, 2, 3, 7, 16, 33, 64, 128, 512)
EXTRA_GROUP_SIZES = ((4096, 4096), (32, 64))
TIMED_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
GEMV_MAX_TIMED_BATCH = 16  # beyond a few rows the GEMV is far off and only costs bench time
TARGET_MS = {1: 0.040, 2: 0.060, 4: 0.060, 8: 0.060, 16: 0.060, 64: 0.100}
TARGET_VS_CUBLAS = {512: 1.25}
DEADLINE_S = 300
TUNING_BUDGET_S = 60


def correctness_cases() -> list[tuple[tuple[int, int], int]]:
    shapes = dict.fromkeys(shape for layers in MODELS.values() for shape in layers)
    cases = [(shape, 128) for shape in shapes]
    shape, group_sizes = EXTRA_GROUP_SIZES
    return cases + [(shape, g) for g in group_sizes]


def check_kernel(name: str, device: torch.device, started: float) -> list[dict]:
    """One row per (shape, group, zero point, dtype): the worst relative error over the batches, or the error."""
    candidate = registry.build(name)
    generator = torch.Generator(device=device).manual_seed(0)
    rows = []
    for (out_features, in_features), group_size in correctness_cases():
        for zero_point in (True, False):
            weight = random_weight(
                out_features, in_features, group_size, device, generator, bias=zero_point
            )  # both paths
            if not zero_point:
                weight.zeros.fill_(8)
            reference = dequantize(weight, torch.float32)
            for dtype in (torch.float16, torch.bfloat16):
                row = {
                    "kernel": name,
                    "shape": f"{out_features}x{in_features}",
                    "group_size": group_size,
                    "zero_point": zero_point,
                    "dtype": str(dtype).removeprefix("torch."),
                    "tolerance": TOLERANCES[dtype],
                }
                if time.monotonic() - started > DEADLINE_S / 2:
                    rows.append({**row, "ok": False, "error": "skipped: correctness time budget spent"})
                    continue
                try:
                    packed = candidate.prepare(weight, device)
                    worst, worst_batch = 0.0, 0
                    for batch in CORRECTNESS_BATCHES:
                        x = torch.randn(batch, in_features, device=device, generator=generator).to(dtype)
                        expected = x.float() @ reference.t()
                        if weight.bias is not None:
                            expected += weight.bias.float()
                        out = candidate.forward(x, packed)
                        synchronize(device)
                        usable = out.dtype == dtype and bool(torch.isfinite(out).all())
                        error = relative_error(out, expected) if usable else float("inf")
                        if error > worst or worst_batch == 0:
                            worst, worst_batch = error, batch
                    rows.append({**row, "ok": worst <= TOLERANCES[dtype], "max_error": worst, "at_batch": worst_batch})
                except Exception as error:  # a compile error or a CUDA fault is the result, not a crash
                    rows.append({**row, "ok": False, "error": f"{type(error).__name__}: {error}"})
                    traceback.print_exc(file=sys.stderr)
    return rows


def print_correctness(rows: list[dict]) -> None:
    print("| kernel | shape | g | zero point | dtype | max rel. error (batch) | tolerance | ok |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        result = f"{r['max_error']:.2e} ({r['at_batch']})" if "max_error" in r else r["error"][:100]
        print(
            f"| {r['kernel']} | {r['shape']} | {r['group_size']} | {r['zero_point']} | {r['dtype']} | {result} "
            f"| {r['tolerance']} | {'yes' if r['ok'] else 'NO'} |"
        )


def time_kernels(device: torch.device, started: float) -> tuple[list[dict], float, int]:
    shapes, group_size = LLAMA2_7B, 128
    int4_bytes = sum(o * i // 2 for o, i in shapes)
    copy_gbps = measure_copy_bandwidth_gbps(device)
    weights = random_layer_weights(shapes, group_size, device, rotation_copies(shapes, device))
    layers, rows = {}, []
    for name in TIMED_KERNELS:
        try:
            layers[name] = prepare_layers(registry.build(name), weights, device)
        except Exception as error:
            layers[name] = f"{type(error).__name__}: {error}"
    for batch in TIMED_BATCHES:
        row: dict = {"batch": batch}
        try:
            row["fp16_cublas"] = time_dense_baseline(shapes, group_size, device, batch, 10, 50).median_ms
        except Exception as error:
            row["fp16_cublas"] = f"{type(error).__name__}: {error}"
        for name in TIMED_KERNELS:
            if isinstance(layers[name], str):
                row[name] = layers[name]
            elif name == "awqd_triton_gemv" and batch > GEMV_MAX_TIMED_BATCH:
                row[name] = "not timed"
            elif time.monotonic() - started > DEADLINE_S:
                row[name] = "skipped: time budget spent"
            else:
                try:
                    timing = time_candidate(layers[name], device, batch, warmup=10, iterations=50)
                    row[name] = timing.median_ms
                    row[f"{name}_cuda_graph"] = timing.cuda_graph
                except Exception as error:
                    row[name] = f"{type(error).__name__}: {error}"
                    traceback.print_exc(file=sys.stderr)
        rows.append(row)
    return rows, copy_gbps, int4_bytes


def target_ms(row: dict) -> float | None:
    if row["batch"] in TARGET_MS:
        return TARGET_MS[row["batch"]]
    if row["batch"] in TARGET_VS_CUBLAS and isinstance(row["fp16_cublas"], float):
        return TARGET_VS_CUBLAS[row["batch"]] * row["fp16_cublas"]
    return None


def print_timings(rows: list[dict], copy_gbps: float, int4_bytes: int) -> None:
    megabytes = int4_bytes / 1e6
    print(f"\nSeven Llama-2-7B layers, g128: {megabytes:.1f} MB of int4 weights; copy bandwidth {copy_gbps:.0f} GB/s")
    print("ms per pass (median); int4 GB/s and % of copy bandwidth in brackets; target from the issue; best/target")
    print(f"| batch | fp16 cuBLAS | {' | '.join(TIMED_KERNELS)} | target ms | best awqd / target |")
    print("|---|---|" + "---|" * len(TIMED_KERNELS) + "---|---|")
    for row in rows:
        cells = []
        for name in TIMED_KERNELS:
            value = row[name]
            if isinstance(value, float):
                gbps = int4_bytes / (value * 1e-3) / 1e9
                cells.append(f"{value:.4f} ({gbps:.0f} GB/s, {100 * gbps / copy_gbps:.0f}%)")
            else:
                cells.append(str(value)[:60])
        cublas = row["fp16_cublas"]
        target = target_ms(row)
        awqd = [row[n] for n in AWQD_KERNELS if isinstance(row[n], float)]
        ratio = f"{min(awqd) / target:.2f}" if awqd and target else "-"
        row["target_ms"], row["best_awqd_over_target"] = target, (min(awqd) / target if awqd and target else None)
        cublas_cell = f"{cublas:.4f}" if isinstance(cublas, float) else str(cublas)[:60]
        target_cell = f"{target:.3f}" if target else "-"
        print(f"| {row['batch']} | {cublas_cell} | {' | '.join(cells)} | {target_cell} | {ratio} |")


def main() -> None:
    started = time.monotonic()
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device: this script checks the Triton kernels on a GPU"}))
        return
    device = torch.device("cuda")
    import triton

    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, triton {triton.__version__}\n")
    tuning_notes: list[str] = []
    for name in AWQD_KERNELS:  # as boot-time selection does: the checks and timings below run the tuned tiles
        deadline = time.perf_counter() + TUNING_BUDGET_S
        tuning_notes += registry.build(name).tune(LLAMA2_7B, TIMED_BATCHES, 128, device, deadline).notes
    print("\n".join(tuning_notes) + "\n")
    correctness = [row for name in AWQD_KERNELS for row in check_kernel(name, device, started)]
    print_correctness(correctness)
    try:
        timings, copy_gbps, int4_bytes = time_kernels(device, started)
        print_timings(timings, copy_gbps, int4_bytes)
    except Exception as error:
        timings, copy_gbps, int4_bytes = [{"error": f"{type(error).__name__}: {error}"}], 0.0, 0
        traceback.print_exc(file=sys.stderr)
    summary = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "correct": all(row["ok"] for row in correctness),
        "failures": [row for row in correctness if not row["ok"]],
        "correctness": correctness,
        "tuning_notes": tuning_notes,
        "copy_bandwidth_gbps": copy_gbps,
        "int4_weight_bytes": int4_bytes,
        "timings_ms": timings,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print("\nJSON " + json.dumps(summary))


if __name__ == "__main__":
    main()
