"""How much an in-kernel merge of split-K partials could give the GEMV at 1 token (issue 15): an upper bound.

Split-K GEMV tiles were rejected on 2026-12-02 with their reduce launch counted (bench/results/
h200-2026-12-02-gemv-splitk-pdl). The skinny kernel has since learnt to let a tile's last K slice add the partials
(splitk.merge_if_last), which saves that launch. Before building the same into the GEMV, this times, per
Llama-2-7B linear and GEMV tile, at 1 token:
- the tile unsplit (what awqd runs);
- split-K 2 and 4 with the reduce launch (the rejected form);
- split-K 2 and 4, the GEMV launch alone: what a merged split would cost if the merge were free.
So the last is a lower bound on a merged split's time, and the gain it shows over the unsplit tiles is the most
the merge can give. Timing as awqd tunes (measure.per_launch_ms: CUDA-graph replay, weights rotated past L2).

    PYTHONPATH=.:bench python3 bench/results/h100-2026-12-06-gemv-split-bound/split_bound.py --out DIR
A dry run on a CPU: TRITON_INTERPRET=1 and --device cpu.
"""

import argparse
import dataclasses
import json
from functools import partial

import torch
from graph_timing import parse_out_and_device

from awqd.kernels.measure import per_launch_ms, random_layer_weights, rotation_copies
from awqd.kernels.triton.gemv import TILES, gemv, launch
from awqd.kernels.triton.layout import pack_awqd_w4
from awqd.kernels.triton.splitk import output_buffers

SHAPES = {
    "cuda": ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)),
    "cpu": ((96, 2048), (64, 2560)),  # a dry run under the Triton interpreter
}
GROUP_SIZE = {"cuda": 128, "cpu": 64}
SPLITS = (2, 4)


def launch_only(x: torch.Tensor, packed, config, target: torch.Tensor) -> None:
    launch(x, packed, config, target, gated=False)


def time_linear(shape: tuple[int, int], copies: list, device: torch.device) -> dict[str, float]:
    """µs per launch of each form on one linear, over its rotated weight copies."""
    x = torch.randn(1, shape[1], device=device).half()
    repetitions = (3, 50) if device.type == "cuda" else (1, 1)
    times = {}
    for tile in TILES:
        name = f"{tile.block_n}x{tile.block_k} {tile.num_warps}w"
        times[f"{name} unsplit"] = 1e3 * per_launch_ms(
            name, [partial(gemv, x, w, tile) for w in copies], device, repetitions
        )
        for split in SPLITS:
            config = dataclasses.replace(tile, split_k=split)
            times[f"{name} split {split} + reduce"] = 1e3 * per_launch_ms(
                name, [partial(gemv, x, w, config) for w in copies], device, repetitions
            )
            target, _ = output_buffers(1, shape[0], split, x.dtype, device)
            times[f"{name} split {split} launch only"] = 1e3 * per_launch_ms(
                name, [partial(launch_only, x, w, config, target) for w in copies], device, repetitions
            )
        print(
            shape, name, {k.split(" ", 2)[-1]: round(v, 2) for k, v in times.items() if k.startswith(name)}, flush=True
        )
    return times


def main() -> None:
    _, out, device = parse_out_and_device(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    shapes = SHAPES[device.type]
    copies = rotation_copies(shapes, device)
    weights = random_layer_weights(shapes, GROUP_SIZE[device.type], device, copies)
    packed = [[pack_awqd_w4(weight, device) for weight in copy] for copy in weights]
    results = {}
    for index, shape in enumerate(shapes):
        results[f"{shape[0]}x{shape[1]}"] = time_linear(shape, [copy[index] for copy in packed], device)
    lines = [
        "| linear | unsplit, fastest | split + reduce, fastest | split launch only, fastest |",
        "|---|---|---|---|",
    ]
    totals = [0.0, 0.0, 0.0]
    for linear, times in results.items():
        row = []
        for column, form in enumerate(("unsplit", "+ reduce", "launch only")):
            name = min((k for k in times if k.endswith(form)), key=times.get)
            totals[column] += times[name]
            row.append(f"{times[name]:.2f} ({name.removesuffix(' ' + form).removesuffix(' unsplit')})")
        lines.append(f"| {linear} | " + " | ".join(row) + " |")
    lines.append("| sum of the linears | " + " | ".join(f"{t:.2f}" for t in totals) + " |")
    table = "µs per linear at 1 token:\n\n" + "\n".join(lines) + "\n"
    print(table)
    (out / "split-bound.md").write_text(table)
    (out / "split-bound.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
