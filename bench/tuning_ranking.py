"""How often boot tuning picks a slow tile, by how it times a tile: each launch alone, as awqd did up to 2ab2b07,
or per launch with the weight copies' launches back to back (awqd.kernels.measure.per_launch_ms), as now.

    PYTHONPATH=. python3 bench/tuning_ranking.py --out DIR [--trials 5]
A dry run on a CPU (tiny shapes, the Triton interpreter):
    TRITON_INTERPRET=1 PYTHONPATH=. python3 bench/tuning_ranking.py --out /tmp/ranking --device cpu --trials 1

For each Llama-2-7B linear (W4 g128 with a zero point) and each bucket below, every tile of the kernel's tuning
space first gets a reference time: per launch, back to back, with many more repetitions than tuning takes. That is
how the engine's decode graph runs them, launch after launch. Then each method ranks the tiles `trials` times at
tuning's own repetitions. A pick costs its reference time over the fastest tile's. Writes DIR/tuning-ranking.json
and .md.
"""

import argparse
import dataclasses
import json
import statistics
from collections import Counter
from functools import partial

import torch
from graph_timing import parse_out_and_device

from awqd.kernels import registry
from awqd.kernels.measure import per_launch_ms, random_layer_weights, rotation_copies, time_passes
from awqd.kernels.triton.layout import pack_awqd_w4
from awqd.kernels.triton.tuning import TUNING_REPETITIONS

SHAPES = {
    "cuda": ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)),
    "cpu": ((96, 256),),
}
GROUP_SIZE = {"cuda": 128, "cpu": 64}
# The buckets each kernel serves in the engine on an H200: the GEMV at 1-2 tokens, the skinny kernel at 32 streams.
KERNELS = {"cuda": {"awqd_triton_gemv": (1, 2), "awqd_triton_skinny": (32,)}, "cpu": {"awqd_triton_gemv": (1,)}}
REFERENCE_REPETITIONS = {"cuda": (10, 200), "cpu": (1, 2)}
SLOW = 1.05  # a pick this much slower than the fastest tile counts as a miss


def alone_ms(name: str, launches: list, device: torch.device) -> float:
    """The former ranking: one launch per timed replay, the median over the copies."""
    return time_passes(name, launches, device, *TUNING_REPETITIONS).median_ms


def back_to_back_ms(name: str, launches: list, device: torch.device) -> float:
    return per_launch_ms(name, launches, device, TUNING_REPETITIONS)


METHODS = {"each launch alone": alone_ms, "back to back": back_to_back_ms}


def label(tile) -> str:
    return "/".join(str(value) for value in dataclasses.astuple(tile))


def rank(method, launches_by_tile: dict, device: torch.device) -> str | None:
    times = {}
    for tile, launches in launches_by_tile.items():
        try:
            times[tile] = method(tile, launches, device)
        except Exception:  # a tile that does not fit the device, as in tuning
            continue
    return min(times, key=times.get) if times else None


def compare(launches_by_tile: dict, device: torch.device, trials: int) -> dict:
    """Every tile's reference time, then each method's picks over `trials` rankings and what they cost."""
    reference = {}
    for tile, launches in launches_by_tile.items():
        try:
            reference[tile] = per_launch_ms(tile, launches, device, REFERENCE_REPETITIONS[device.type])
        except Exception:
            continue
    launches_by_tile = {tile: launches_by_tile[tile] for tile in reference}
    fastest = min(reference, key=reference.get)
    methods = {}
    for method_name, method in METHODS.items():
        picks = [rank(method, launches_by_tile, device) for _ in range(trials)]
        costs = [reference[pick] / reference[fastest] for pick in picks]
        methods[method_name] = {
            "picks": dict(Counter(picks)),
            "mean_cost": statistics.fmean(costs),
            "worst_cost": max(costs),
            "misses": sum(cost > SLOW for cost in costs),
        }
    return {"reference_ms": reference, "fastest": fastest, "methods": methods}


def markdown(report: dict) -> str:
    lines = [
        f"# Boot tuning's pick by how a tile is timed ({report['device']}, {report['trials']} trials per method)",
        "",
        f"Cost: the pick's reference µs per launch over the fastest tile's. A miss: a pick more than {SLOW}x the "
        "fastest.",
        "",
        "| kernel | linear | bucket | fastest tile (µs) | alone: mean / worst cost, misses | "
        "back to back: mean / worst cost, misses |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        cells = [
            f"{m['mean_cost']:.3f} / {m['worst_cost']:.3f}, {m['misses']}"
            for m in (row["methods"][method] for method in METHODS)
        ]
        fastest_us = row["reference_ms"][row["fastest"]] * 1000
        lines.append(
            f"| {row['kernel']} | {row['linear']} | {row['bucket']} | {row['fastest']} ({fastest_us:.2f}) | "
            f"{cells[0]} | {cells[1]} |"
        )
    fields = sorted({f"{row['kernel']}: {row['tile_fields']}" for row in report["rows"]})
    return "\n".join([*lines, "", "Tiles are " + "; ".join(fields) + "."]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    args, out, device = parse_out_and_device(parser)
    rows = []
    for name, buckets in KERNELS[device.type].items():
        kernel = registry.build(name).kernel()
        fields = "/".join(field.name for field in dataclasses.fields(kernel.config_type))
        for out_features, in_features in SHAPES[device.type]:
            copies = rotation_copies([(out_features, in_features)], device)
            weights = random_layer_weights([(out_features, in_features)], GROUP_SIZE[device.type], device, copies)
            packed = [pack_awqd_w4(copy[0], device) for copy in weights]
            del weights
            for bucket in buckets:
                x = torch.randn(bucket, in_features, device=device, dtype=torch.float16)
                launches_by_tile = {
                    label(tile): [partial(kernel.launch, x, layer, tile) for layer in packed]
                    for tile in kernel.tuning_space(bucket)
                }
                row = {"kernel": name, "tile_fields": fields, "linear": f"{out_features}x{in_features}"}
                row |= {"bucket": bucket, "copies": copies, **compare(launches_by_tile, device, args.trials)}
                rows.append(row)
                print(json.dumps({key: row[key] for key in ("kernel", "linear", "bucket", "methods")}), flush=True)
            del packed
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {"device": device_name, "trials": args.trials, "tuning_repetitions": TUNING_REPETITIONS, "rows": rows}
    (out / "tuning-ranking.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (out / "tuning-ranking.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
