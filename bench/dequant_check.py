"""awqd's dequantize kernel (awqd_triton_dequant_cublas) tile by tile: exactness, GB/s per Llama-2-7B linear against
the copy bandwidth, and ms per decoder layer of the candidate (dequantize, then cuBLAS) beside fp16 cuBLAS.

    PYTHONPATH=. python3 bench/dequant_check.py --out DIR [--device cuda:0]
A dry run on a CPU (tiny shapes, the Triton interpreter):
    TRITON_INTERPRET=1 PYTHONPATH=. python3 bench/dequant_check.py --out /tmp/dequant --device cpu

Exactness: the fp16 weight must equal awqd.quant.reference.dequantize's bit for bit ((q - z) * s rounds once), and
bf16 the same product rounded to fp16 and then to bf16, as the kernel computes it (on a CPU within one bf16 unit:
the interpreter truncates to bf16). Timing is awqd.kernels.measure's (CUDA-graph replay, weights rotated past L2).
Only awqd.kernels.triton.dequant's dequantize and DequantConfig are used, so the script also times an earlier tree's
kernel (put first on PYTHONPATH) on the same tiles. Writes DIR/dequant-check.json and .md.
"""

import argparse
import json
from functools import partial

import torch
import torch.nn.functional as F
from graph_timing import parse_out_and_device

from awqd.kernels.measure import (
    measure_copy_bandwidth_gbps,
    per_launch_ms,
    random_layer_weights,
    random_weight,
    rotation_copies,
    time_dense_baseline,
    time_passes,
)
from awqd.kernels.triton.dequant import DequantConfig, dequantize
from awqd.kernels.triton.layout import pack_awqd_w4
from awqd.quant.reference import dequantize as reference_dequantize

SHAPES = {
    "cuda": ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)),
    "cpu": ((96, 256), (64, 352)),
}
GROUP_SIZE = {"cuda": 128, "cpu": 32}
TILES = (
    DequantConfig(32, 256, 4),
    DequantConfig(32, 128, 4),
    DequantConfig(128, 128, 4),
    DequantConfig(8, 512, 1),
    DequantConfig(4, 1024, 1),
    DequantConfig(8, 1024, 2),
    DequantConfig(8, 1024, 4),
    DequantConfig(16, 1024, 2),
    DequantConfig(4, 2048, 2),
    DequantConfig(8, 2048, 4),
)
# Timed over the whole layer: the former default (32 x 256) and the current one.
LAYER_TILES = (TILES[0], DequantConfig())
BUCKETS = {"cuda": (256, 512, 2048), "cpu": (3,)}


def label(tile: DequantConfig) -> str:
    return f"{tile.block_n}x{tile.block_k}, {tile.num_warps} warps"


def check_tiles(device: torch.device) -> list[dict]:
    """Every tile on each shape at group sizes 32/64/128 (CPU: the one), fp16 and bf16, against the reference."""
    generator = torch.Generator(device=device).manual_seed(0)
    group_sizes = (32, 64, 128) if device.type == "cuda" else (GROUP_SIZE["cpu"],)
    results = []
    for out_features, in_features in SHAPES[device.type]:
        for group_size in group_sizes:
            weight = random_weight(out_features, in_features, group_size, device, generator, bias=False)
            packed = pack_awqd_w4(weight, device)
            expected = reference_dequantize(weight, torch.float16)
            for tile in TILES:
                for dtype in (torch.float16, torch.bfloat16):
                    want = expected if dtype == torch.float16 else expected.to(torch.bfloat16)
                    got = dequantize(packed, dtype, tile)
                    if device.type == "cpu" and dtype == torch.bfloat16:  # the interpreter truncates to bf16
                        exact = bool(torch.allclose(got.float(), want.float(), rtol=2**-7, atol=0))
                    else:
                        exact = bool(torch.equal(got, want))
                    shape = f"{out_features}x{in_features}"
                    results.append({"tile": label(tile), "shape": shape, "group": group_size, "dtype": str(dtype)})
                    results[-1]["exact"] = exact
                    if not exact:
                        print(f"NOT EXACT {label(tile)} {shape} g{group_size} {dtype}", flush=True)
    return results


def moved_bytes(out_features: int, in_features: int, group_size: int) -> int:
    """int4 weights and (scale, zero) words read, fp16 written."""
    weights = out_features * in_features
    return weights // 2 + weights // group_size * 4 + weights * 2


def time_tiles(device: torch.device) -> dict:
    shapes = SHAPES[device.type]
    group_size = GROUP_SIZE[device.type]
    weights = random_layer_weights(shapes, group_size, device, rotation_copies(shapes, device))
    packed = [[pack_awqd_w4(weight, device) for weight in copy] for copy in weights]
    repetitions = (3, 30) if device.type == "cuda" else (1, 1)
    timings: dict = {"linear_ms": {}, "linear_gbps": {}, "layer_ms": {}}
    for index, (out_features, in_features) in enumerate(shapes):
        shape = f"{out_features}x{in_features}"
        for tile in TILES:
            launches = [partial(dequantize, copy[index], torch.float16, tile) for copy in packed]
            ms = per_launch_ms(label(tile), launches, device, repetitions)
            timings["linear_ms"].setdefault(shape, {})[label(tile)] = ms
            gbps = moved_bytes(out_features, in_features, group_size) / (ms * 1e-3) / 1e9
            timings["linear_gbps"].setdefault(shape, {})[label(tile)] = gbps
            print(f"{shape} {label(tile)}: {ms * 1e3:.1f} µs, {gbps:.0f} GB/s", flush=True)
    best = [min(TILES, key=lambda tile, s=f"{o}x{i}": timings["linear_ms"][s][label(tile)]) for o, i in shapes]
    timings["fastest"] = [label(tile) for tile in best]
    layers = {f"{label(tile)} on every linear": [tile] * len(shapes) for tile in dict.fromkeys(LAYER_TILES)}
    layers["each linear on its fastest"] = best
    for rows in BUCKETS[device.type]:
        inputs = [torch.randn(rows, i, device=device).half() for _, i in shapes]
        for name, tiles in layers.items():

            def make_pass(copy: list, inputs: list = inputs, tiles: list = tiles):
                def run_pass() -> None:
                    for x, weight, tile in zip(inputs, copy, tiles, strict=True):
                        F.linear(x, dequantize(weight, x.dtype, tile))

                return run_pass

            passes = [make_pass(copy) for copy in packed]
            ms = time_passes(name, passes, device, *repetitions).median_ms
            timings["layer_ms"].setdefault(name, {})[rows] = ms
            print(f"rows {rows}, {name}: {ms:.4f} ms per layer", flush=True)
        dense = time_dense_baseline(shapes, group_size, device, rows, *repetitions)
        timings["layer_ms"].setdefault("fp16 cuBLAS", {})[rows] = dense.median_ms
    if device.type == "cuda":
        timings["copy_gbps"] = measure_copy_bandwidth_gbps(device)
    return timings


def report(results: list[dict], timings: dict) -> str:
    shapes = list(timings["linear_ms"])
    copy = timings.get("copy_gbps")
    lines = [f"µs per linear (GB/s: int4 and scales read, fp16 written); copy bandwidth {copy or 0:.0f} GB/s:", ""]
    lines += ["| tile | " + " | ".join(shapes) + " |", "|---" * (len(shapes) + 1) + "|"]
    for tile in timings["linear_ms"][shapes[0]]:
        cells = [f"{timings['linear_ms'][s][tile] * 1e3:.1f} ({timings['linear_gbps'][s][tile]:.0f})" for s in shapes]
        lines.append(f"| {tile} | " + " | ".join(cells) + " |")
    lines += ["", f"Fastest per linear: {', '.join(timings['fastest'])}.", ""]
    rows_seen = list(timings["layer_ms"]["fp16 cuBLAS"])
    lines += ["ms per layer, dequantize + cuBLAS, beside fp16 cuBLAS:", ""]
    lines += ["| tiles | " + " | ".join(f"{rows} tokens" for rows in rows_seen) + " |"]
    lines.append("|---" * (len(rows_seen) + 1) + "|")
    for name, by_rows in timings["layer_ms"].items():
        lines.append(f"| {name} | " + " | ".join(f"{by_rows[rows]:.4f}" for rows in rows_seen) + " |")
    inexact = [r for r in results if not r["exact"]]
    cases = f"{len(results) - len(inexact)} of {len(results)}"
    lines.append(f"\nExactness: {cases} (tile, shape, group, dtype) cases exact.")
    lines += [f"- NOT EXACT {r['tile']} {r['shape']} g{r['group']} {r['dtype']}" for r in inexact]
    return "\n".join(lines) + "\n"


def main() -> None:
    _, out, device = parse_out_and_device(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    results = check_tiles(device)
    timings = time_tiles(device)
    (out / "dequant-check.json").write_text(json.dumps({"exactness": results, "timing": timings}, indent=1))
    (out / "dequant-check.md").write_text(report(results, timings))
    print(report(results, timings))


if __name__ == "__main__":
    main()
