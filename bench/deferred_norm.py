"""One decoder layer's linears and norms at 1 token, as decode runs them on awqd's GEMV: the residual add and RMS
norm as their own launch after o and down, against the norm deferred into the GEMVs.

    PYTHONPATH=. python3 bench/deferred_norm.py --out DIR [--device cuda:0]
A dry run on a CPU (tiny shapes, the Triton interpreter):
    TRITON_INTERPRET=1 PYTHONPATH=. python3 bench/deferred_norm.py --out /tmp/deferred --device cpu

A layer is qkv, o, gate_up (gated) and down on Llama-2-7B's shapes (W4 g128 with a zero point); o takes qkv's first
4096 columns where attention's output would be, since attention is the same in both. With the norm kernel, each of o
and down is followed by the residual add and norm launch (awqd.engine.layers.triton_norm). Deferred, o and down
add their output to the residual stream in their own launch (gemv_add_norm), and gate_up and the next layer's qkv
scale by 1/rms. A timed pass (CUDA-graph replay) runs the layer on every weight copy in turn, each layer's output
feeding the next, with enough copies to read past L2; the time is per layer. Then each linear alone in both of its
forms, and the norm launch alone, on the same copies: with few copies, these carry the timed pass's own overhead and
the smaller linears' reads hit L2, so they compare forms, not launch times. Both forms run on the same tiles
(TILES_TIMED). Writes DIR/deferred-norm.json and .md.
"""

import argparse
import json
from dataclasses import dataclass
from functools import partial

import torch
from graph_timing import parse_out_and_device

from awqd.engine.layers.triton_norm import add_rms_norm_rows
from awqd.kernels.base import DeferredNorm
from awqd.kernels.measure import per_launch_ms, random_layer_weights, rotation_copies
from awqd.kernels.triton.gemv import DEFAULT_TILE, TILES, GemvConfig, gemv, gemv_add_norm, gemv_gated
from awqd.kernels.triton.layout import AwqdW4, pack_awqd_w4

SHAPES = {  # qkv, o, gate_up, down
    "cuda": ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)),
    "cpu": ((384, 128), (128, 128), (512, 128), (128, 256)),
}
GROUP_SIZE = {"cuda": 128, "cpu": 64}
EPS = 1e-5
REPETITIONS = {"cuda": (5, 50), "cpu": (1, 1)}  # (warm-up, timed) passes
LINEAR_FORMS = (
    "qkv",
    "qkv, deferred",
    "o",
    "o, adding",
    "gate_up",
    "gate_up, deferred",
    "down",
    "down, adding",
    "add and norm kernel",
)
# Tiles for (qkv, o, gate_up, down): the GEMV's default, one other, and what selection tuned on an H200 for 1 token
# (bench/results/h200-2026-12-04-deferred-norm).
TILES_TIMED = {
    "default": (DEFAULT_TILE,) * 4,
    "16x1024, 4 warps": (TILES[5],) * 4,
    "as tuned": (DEFAULT_TILE, TILES[5], TILES[6], TILES[5]),
}


Tiles = tuple[GemvConfig, GemvConfig, GemvConfig, GemvConfig]


@dataclass
class Stream:
    """The residual stream between layers, and the next qkv's input: normed rows or a deferred norm."""

    x: torch.Tensor
    h: torch.Tensor | DeferredNorm


def norm_kernel_layer(layer: list[AwqdW4], norm: torch.Tensor, tiles: Tiles, stream: Stream) -> None:
    (qkv_proj, o_proj, gate_up_proj, down_proj), (qkv_tile, o_tile, gate_up_tile, down_tile) = layer, tiles
    qkv = gemv(stream.h, qkv_proj, qkv_tile)
    x, h = add_rms_norm_rows(stream.x, gemv(qkv[:, : o_proj.in_features], o_proj, o_tile), norm, EPS)
    gated = gemv_gated(h, gate_up_proj, gate_up_tile)
    stream.x, stream.h = add_rms_norm_rows(x, gemv(gated, down_proj, down_tile), norm, EPS)


def deferred_layer(layer: list[AwqdW4], norm: torch.Tensor, tiles: Tiles, stream: Stream) -> None:
    (qkv_proj, o_proj, gate_up_proj, down_proj), (qkv_tile, o_tile, gate_up_tile, down_tile) = layer, tiles
    qkv = gemv(stream.h.weighted, qkv_proj, qkv_tile, norm=stream.h)
    x, h = gemv_add_norm(qkv[:, : o_proj.in_features], o_proj, stream.x, norm, EPS, o_tile)
    gated = gemv_gated(h.weighted, gate_up_proj, gate_up_tile, norm=h)
    stream.x, stream.h = gemv_add_norm(gated, down_proj, x, norm, EPS, down_tile)


def per_linear_launches(
    layers: list[list[AwqdW4]],
    x: torch.Tensor,
    normed: torch.Tensor,
    deferred: DeferredNorm,
    norm: torch.Tensor,
    tiles: Tiles,
) -> dict[str, list]:
    """Each linear alone, copy after copy, in the form it takes with the norm kernel and in the form it takes with the
    norm deferred (the layer's other launches do not run), and the norm kernel alone."""
    qkv, o, gate_up, down = ([layer[index] for layer in layers] for index in range(4))
    qkv_tile, o_tile, gate_up_tile, down_tile = tiles
    hidden, intermediate = o[0].in_features, down[0].in_features
    inputs = {n: torch.randn(1, n, device=x.device).to(x.dtype) for n in (hidden, intermediate)}
    squares = deferred.partial_squares.expand(1, hidden // down_tile.block_n).contiguous()
    wide = DeferredNorm(deferred.weighted, squares, EPS)  # as many sums as down's launch writes
    return {
        "qkv": [partial(gemv, normed, w, qkv_tile) for w in qkv],
        "qkv, deferred": [partial(gemv, wide.weighted, w, qkv_tile, norm=wide) for w in qkv],
        "o": [partial(gemv, inputs[hidden], w, o_tile) for w in o],
        "o, adding": [partial(gemv_add_norm, inputs[hidden], w, x, norm, EPS, o_tile) for w in o],
        "gate_up": [partial(gemv_gated, normed, w, gate_up_tile) for w in gate_up],
        "gate_up, deferred": [partial(gemv_gated, wide.weighted, w, gate_up_tile, norm=wide) for w in gate_up],
        "down": [partial(gemv, inputs[intermediate], w, down_tile) for w in down],
        "down, adding": [partial(gemv_add_norm, inputs[intermediate], w, x, norm, EPS, down_tile) for w in down],
        "add and norm kernel": [partial(add_rms_norm_rows, x, inputs[hidden], norm, EPS) for _ in layers],
    }


def main() -> None:
    _, out, device = parse_out_and_device(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    shapes = SHAPES[device.type]
    copies = rotation_copies(shapes, device)
    weights = random_layer_weights(shapes, GROUP_SIZE[device.type], device, copies)
    layers = [[pack_awqd_w4(weight, device) for weight in copy] for copy in weights]
    del weights
    hidden = shapes[1][0]
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, hidden, device=device, generator=generator).to(torch.float16)
    norm = (1 + 0.5 * torch.rand(hidden, device=device, generator=generator)).to(torch.float16)
    _, normed = add_rms_norm_rows(x, None, norm, EPS)
    deferred = DeferredNorm((x.float() * norm.float()).half(), x.float().pow(2).sum(-1, keepdim=True), EPS)
    results = {}
    for tile_name, tiles in TILES_TIMED.items():
        linears = per_linear_launches(layers, x, normed, deferred, norm, tiles)
        assert tuple(linears) == LINEAR_FORMS
        for form, launches in linears.items():
            results[f"{form}, {tile_name}"] = per_launch_ms(form, launches, device, REPETITIONS[device.type])
            print(form, tile_name, results[f"{form}, {tile_name}"], flush=True)
        for form, run_layer, h in (("norm kernel", norm_kernel_layer, normed), ("deferred", deferred_layer, deferred)):
            stream = Stream(x, h)
            launches = [partial(run_layer, layer, norm, tiles, stream) for layer in layers]
            results[f"layer, {form}, {tile_name}"] = per_launch_ms(form, launches, device, REPETITIONS[device.type])
            print("layer", form, tile_name, results[f"layer, {form}, {tile_name}"], flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {"device": name, "copies": copies, "shapes": shapes, "ms": results}
    (out / "deferred-norm.json").write_text(json.dumps(report, indent=1))
    lines = [
        f"# The residual add and norm: its own launch against deferred into the GEMVs, 1 token ({name})",
        "",
        f"µs per layer (qkv, o, gate_up, down and two norms), CUDA-graph replay, {copies} weight copies in turn.",
        "",
        "| tile | norm kernel | deferred | deferred / norm kernel |",
        "|---|---|---|---|",
    ]
    for tile_name in TILES_TIMED:
        kernel_us, deferred_us = (results[f"layer, {form}, {tile_name}"] * 1000 for form in ("norm kernel", "deferred"))
        lines.append(f"| {tile_name} | {kernel_us:.2f} | {deferred_us:.2f} | {deferred_us / kernel_us:.3f} |")
    lines += ["", "µs per launch, each linear alone:", "", f"| launch | {' | '.join(TILES_TIMED)} |"]
    lines.append("|---" * (len(TILES_TIMED) + 1) + "|")
    for form in LINEAR_FORMS:
        lines.append(f"| {form} | " + " | ".join(f"{results[f'{form}, {t}'] * 1000:.2f}" for t in TILES_TIMED) + " |")
    (out / "deferred-norm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
