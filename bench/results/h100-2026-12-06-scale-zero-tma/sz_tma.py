"""Does the skinny kernel wait on its (scale, zero) loads (issue 15)? Pointer loads vs TMA, same run.

At 16 tokens the skinny kernel's top stall is long_scoreboard (bench/results/h100-2026-12-05-ncu-skinny). Its
weight and activation tiles come through TMA, staged num_stages deep by Triton's pipeliner; the per-row (scale,
zero) words are pointer loads issued by hand one step ahead. Issuing them two steps ahead stopped the pipeliner
(bench/results/h100-2026-12-06-scale-zero-ahead). sz-tma.patch instead reads them through a TMA descriptor over a
group-major copy ([K / group, N], so a step's words are one contiguous row segment), which the pipeliner stages
with the tiles (checked offline for sm_90: 9 TMA copies for 3 stages, no pointer loads left in the loop).

For each bucket, every tile of the boot tuning space on each Llama-2-7B linear, timed as tuning times them
(measure.per_launch_ms: CUDA-graph replay, weights rotated past L2), with pointer and TMA (scale, zero) loads in
alternating rounds; the layer is each linear on its fastest tile. Every tile with TMA (scale, zero) loads is first
checked against the float32 reference in fp16 and bf16.

    git apply bench/results/h100-2026-12-06-scale-zero-tma/sz-tma.patch   # adds skinny.SZ_TMA
    PYTHONPATH=.:bench python3 bench/results/h100-2026-12-06-scale-zero-tma/sz_tma.py --out DIR [--buckets 8,16]
A dry run on a CPU: TRITON_INTERPRET=1 and --device cpu.
"""

import argparse
import json
from functools import partial

import torch
from graph_timing import parse_out_and_device

from awqd.kernels.measure import (
    per_launch_ms,
    random_layer_weights,
    random_weight,
    reference,
    relative_error,
    rotation_copies,
)
from awqd.kernels.triton import skinny
from awqd.kernels.triton.layout import TOLERANCES, pack_awqd_w4
from awqd.quant.reference import dequantize

SHAPES = {
    "cuda": ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)),
    "cpu": ((256, 512), (128, 1024)),
}
GROUP_SIZE = {"cuda": 128, "cpu": 64}
FORMS = (False, True)  # skinny.SZ_TMA
ROUNDS = 2


def check(device: torch.device, buckets: list[int]) -> list[dict]:
    """Each tile of each bucket with TMA (scale, zero) loads against the float32 reference, on two shapes."""
    skinny.SZ_TMA = True
    generator = torch.Generator(device=device).manual_seed(0)
    results = []
    for out_features, in_features in SHAPES[device.type][:2]:
        weight = random_weight(out_features, in_features, GROUP_SIZE[device.type], device, generator, bias=False)
        dense, packed = dequantize(weight, torch.float32), pack_awqd_w4(weight, device)
        for rows in buckets:
            for tile in skinny.tuning_space(rows):
                for dtype in (torch.float16, torch.bfloat16):
                    x = torch.randn(rows, in_features, device=device, generator=generator).to(dtype)
                    error = relative_error(skinny.skinny(x, packed, tile), reference(x, dense, weight))
                    ok = error <= TOLERANCES[dtype]
                    results.append(
                        {
                            "shape": [out_features, in_features],
                            "rows": rows,
                            "tile": str(tile),
                            "dtype": str(dtype),
                            "error": error,
                            "ok": ok,
                        }
                    )
    return results


def time_bucket(rows: int, packed: list, device: torch.device) -> dict[bool, dict[str, dict[str, float]]]:
    """µs per launch of each tile on each linear, for each form, alternating."""
    shapes = SHAPES[device.type]
    repetitions = (3, 50) if device.type == "cuda" else (1, 1)
    times: dict[bool, dict[str, dict[str, float]]] = {form: {} for form in FORMS}
    for _ in range(ROUNDS):
        for form in FORMS:
            skinny.SZ_TMA = form
            for index, (out_features, in_features) in enumerate(shapes):
                x = torch.randn(rows, in_features, device=device).half()
                linear = times[form].setdefault(f"{out_features}x{in_features}", {})
                for tile in skinny.tuning_space(rows):
                    launches = [partial(skinny.skinny, x, copy[index], tile) for copy in packed]
                    us = 1e3 * per_launch_ms(str(tile), launches, device, repetitions)
                    linear[str(tile)] = min(us, linear.get(str(tile), float("inf")))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buckets", default="2,8,16,32,64,128")
    args, out, device = parse_out_and_device(parser)
    buckets = [int(b) for b in args.buckets.split(",")]
    checks = check(device, buckets)
    failed = [c for c in checks if not c["ok"]]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks pass; worst {max(c['error'] for c in checks):.3g}")
    shapes = SHAPES[device.type]
    copies = rotation_copies(shapes, device)
    weights = random_layer_weights(shapes, GROUP_SIZE[device.type], device, copies)
    packed = [[pack_awqd_w4(weight, device) for weight in copy] for copy in weights]
    lines = ["| tokens | pointer loads (awqd) | TMA | change |", "|---|---|---|---|"]
    record = {"checks": checks, "times_us": {}}
    for rows in buckets:
        times = time_bucket(rows, packed, device)
        record["times_us"][rows] = {str(form): by_linear for form, by_linear in times.items()}
        layer = {form: sum(min(by_tile.values()) for by_tile in times[form].values()) for form in FORMS}
        lines.append(f"| {rows} | {layer[False]:.2f} | {layer[True]:.2f} | {layer[True] / layer[False] - 1:+.1%} |")
        print(lines[-1], flush=True)
    table = "µs per layer (each linear on its fastest tile, best of the rounds):\n\n" + "\n".join(lines) + "\n"
    print(table)
    (out / "sz-tma.md").write_text(table)
    (out / "sz-tma.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
