"""awqd's GEMV configuration by configuration (its boot tuning space): correctness, then ms per Llama-2-7B decoder
layer and per linear at 1, 2 and 4 tokens.

    PYTHONPATH=. python3 bench/gemv_check.py --out DIR [--device cuda:0]
A dry run on a CPU (tiny shapes, the Triton interpreter):
    TRITON_INTERPRET=1 PYTHONPATH=. python3 bench/gemv_check.py --out /tmp/gemv --device cpu

The layer is the engine's four fused linears (qkv, o, gate_up, down), W4 g128 with a zero point. Correctness is
against the float32 reference in fp16 and bf16, and in fp16 with outlier activations (a few columns at +-3000, as
LLMs' massive activations): the fp16 path sums a word's 8 products in fp16, so this is where an overflow would
show. Timing is awqd.kernels.measure's (CUDA-graph replay, weights rotated past L2), beside fp16 cuBLAS and the
roofline (int4 weights, scales and zeros at the measured copy bandwidth). Writes DIR/gemv-check.json and .md.
"""

import argparse
import json
from functools import partial

import torch
from graph_timing import parse_out_and_device

from awqd.kernels.measure import (
    measure_copy_bandwidth_gbps,
    per_launch_ms,
    random_layer_weights,
    random_weight,
    reference,
    relative_error,
    roofline_floor_ms,
    rotation_copies,
    time_dense_baseline,
    time_passes,
)
from awqd.kernels.triton.gemv import gemv, tuning_space
from awqd.kernels.triton.layout import TOLERANCES, pack_awqd_w4
from awqd.quant.reference import dequantize

SHAPES = {
    "cuda": ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)),
    "cpu": ((96, 256), (64, 512)),
}
GROUP_SIZE = {"cuda": 128, "cpu": 64}
BUCKETS = (1, 2, 4)
OUTLIER_COLUMNS = 8
OUTLIER_VALUE = 3000.0


def label(tile) -> str:
    return f"{tile.block_n}x{tile.block_k} split-K {tile.split_k}, {tile.num_warps} warps"


def activations(rows: int, in_features: int, case: str, device: torch.device, seed: int) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(rows, in_features, device=device, generator=generator)
    if case == "fp16 outliers":
        columns = torch.randperm(in_features, device=device, generator=generator)[:OUTLIER_COLUMNS]
        x[:, columns] = OUTLIER_VALUE * torch.sign(x[:, columns])
    return x.to(torch.bfloat16 if case == "bf16" else torch.float16)


def check_tiles(device: torch.device) -> list[dict]:
    """Every tile, bucket and case on each shape: the worst relative error and whether it is within tolerance."""
    group_size = GROUP_SIZE[device.type]
    generator = torch.Generator(device=device).manual_seed(0)
    layers = []
    for out_features, in_features in SHAPES[device.type]:
        weight = random_weight(out_features, in_features, group_size, device, generator, bias=False)
        layers.append((weight, dequantize(weight, torch.float32), pack_awqd_w4(weight, device)))
    results = []
    for tile in tuning_space(1):
        for rows in BUCKETS:
            for case in ("fp16", "fp16 outliers", "bf16"):
                worst, finite = 0.0, True
                for seed, (weight, dense, packed) in enumerate(layers):
                    x = activations(rows, weight.in_features, case, device, seed)
                    out = gemv(x, packed, tile)
                    finite &= bool(torch.isfinite(out).all())
                    worst = max(worst, relative_error(out, reference(x, dense, weight)))
                tolerance = TOLERANCES[torch.bfloat16 if case == "bf16" else torch.float16]
                ok = finite and worst <= tolerance
                results.append({"tile": label(tile), "rows": rows, "case": case, "error": worst, "ok": ok})
                verdict = "ok " if ok else "BAD"
                print(f"{verdict} {label(tile)} rows {rows} {case}: relative error {worst:.3g}", flush=True)
    return results


def time_layer(
    label_: str, configs: list, inputs: list, packed: list, device: torch.device, repetitions: tuple[int, int]
) -> float:
    """ms of one decoder layer's four linears, linear i on configs[i], rotating over the weight copies."""

    def make_pass(copy: int):
        def run_pass() -> None:
            for x, weight, config in zip(inputs, packed[copy], configs, strict=True):
                gemv(x, weight, config)

        return run_pass

    return time_passes(label_, [make_pass(copy) for copy in range(len(packed))], device, *repetitions).median_ms


def time_linear(
    label_: str, config, x: torch.Tensor, copies: list, device: torch.device, repetitions: tuple[int, int]
) -> float:
    """ms of one linear, launched on every weight copy back to back."""
    return per_launch_ms(label_, [partial(gemv, x, weight, config) for weight in copies], device, repetitions)


def time_tiles(device: torch.device) -> dict:
    """Every configuration of the boot tuning space on each linear, and on the whole layer; the tuned layer (each
    linear on its fastest configuration, as boot tuning picks them) beside fp16 cuBLAS and the roofline."""
    shapes = SHAPES[device.type]
    copies = rotation_copies(shapes, device)
    weights = random_layer_weights(shapes, GROUP_SIZE[device.type], device, copies)
    packed = [[pack_awqd_w4(weight, device) for weight in copy] for copy in weights]
    by_linear = [[copy[index] for copy in packed] for index in range(len(shapes))]
    repetitions = (3, 50) if device.type == "cuda" else (1, 1)
    timings: dict = {"ms": {}, "linear_ms": {}, "tuned": {}}
    for rows in BUCKETS:
        inputs = [torch.randn(rows, i, device=device).half() for _, i in shapes]
        for tile in tuning_space(rows):
            ms = time_layer(label(tile), [tile] * len(shapes), inputs, packed, device, repetitions)
            timings["ms"].setdefault(label(tile), {})[rows] = ms
            for (out_features, in_features), x, linear in zip(shapes, inputs, by_linear, strict=True):
                linear_ms = time_linear(label(tile), tile, x, linear, device, repetitions)
                timings["linear_ms"].setdefault(f"{out_features}x{in_features}", {}).setdefault(label(tile), {})[
                    rows
                ] = linear_ms
            print(f"{label(tile)} rows {rows}: {ms:.4f} ms per layer", flush=True)
        best = [
            min(tuning_space(rows), key=lambda tile, shape=shape: timings["linear_ms"][shape][label(tile)][rows])
            for shape in (f"{o}x{i}" for o, i in shapes)
        ]
        tuned_ms = time_layer("tuned", best, inputs, packed, device, repetitions)
        timings["tuned"][rows] = {"ms": tuned_ms, "tiles": [label(tile) for tile in best]}
        print(f"tuned rows {rows}: {tuned_ms:.4f} ms per layer ({', '.join(label(tile) for tile in best)})")
        dense = time_dense_baseline(shapes, GROUP_SIZE[device.type], device, rows, *repetitions)
        timings.setdefault("fp16 cuBLAS", {})[rows] = dense.median_ms
    if device.type == "cuda":
        timings["roofline_ms"] = roofline_floor_ms(shapes, measure_copy_bandwidth_gbps(device))
    return timings


def report(results: list[dict], timings: dict) -> str:
    header = " | ".join(f"{rows} token(s) ms" for rows in BUCKETS)
    lines = ["ms per layer, one configuration for all four linears:", "", f"| configuration | {header} |"]
    lines.append("|---" * (len(BUCKETS) + 1) + "|")
    for tile, by_rows in timings["ms"].items():
        lines.append(f"| {tile} | " + " | ".join(f"{by_rows[rows]:.4f}" for rows in BUCKETS) + " |")
    tuned = timings["tuned"]
    lines.append(
        "| **tuned: each linear on its fastest** | " + " | ".join(f"**{tuned[r]['ms']:.4f}**" for r in BUCKETS) + " |"
    )
    dense = timings["fp16 cuBLAS"]
    lines.append("| fp16 cuBLAS | " + " | ".join(f"{dense[rows]:.4f}" for rows in BUCKETS) + " |")
    if "roofline_ms" in timings:
        lines.append(f"\nRoofline {timings['roofline_ms']:.4f} ms per layer.")
    for rows in BUCKETS:
        lines += ["", f"ms per linear at {rows} token(s), on its fastest configuration:", ""]
        lines += ["| linear | fastest | ms |", "|---|---|---|"]
        for shape, by_tile in timings["linear_ms"].items():
            fastest = min(by_tile, key=lambda tile: by_tile[tile][rows])
            lines.append(f"| {shape} | {fastest} | {by_tile[fastest][rows]:.4f} |")
    failures = [r for r in results if not r["ok"]]
    worst = max(results, key=lambda r: r["error"])
    lines.append(
        f"\nCorrectness: {len(results) - len(failures)} of {len(results)} cases within tolerance; worst "
        f"{worst['error']:.3g} ({worst['tile']}, {worst['rows']} rows, {worst['case']})."
    )
    lines += [f"- FAILED {r['tile']} rows {r['rows']} {r['case']}: {r['error']:.3g}" for r in failures]
    return "\n".join(lines) + "\n"


def main() -> None:
    _, out, device = parse_out_and_device(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    results = check_tiles(device)
    timings = time_tiles(device)
    (out / "gemv-check.json").write_text(json.dumps({"correctness": results, "timing": timings}, indent=1))
    (out / "gemv-check.md").write_text(report(results, timings))
    print(report(results, timings))


if __name__ == "__main__":
    main()
