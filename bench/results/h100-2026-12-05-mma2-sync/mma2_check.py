"""The mma.sync Gluon kernel on a GPU (issue 15), as ../h200-2026-12-05-gluon-warp-specialized/gluon_check.py checks
and times the wgmma one: every tile against awqd's reference (eagerly, and in CUDA-graph replay on 4096 x 4096), then
µs per Llama-2-7B linear and ms per layer beside awqd's skinny kernel (every tile of its tuning space, the fastest per
linear) and fp16 cuBLAS, timed as awqd times kernels (CUDA-graph replay, weights rotated past L2).

    PYTHONPATH=<this folder>:<repo> python3 mma2_check.py OUT
"""

import json
import sys

import torch
from gluon_mma2 import tile_words, w4_mma2

from awqd.kernels.measure import (
    measure_copy_bandwidth_gbps,
    per_launch_ms,
    random_layer_weights,
    random_weight,
    relative_error,
    rotation_copies,
    time_dense_baseline,
    time_passes,
)
from awqd.kernels.triton import skinny
from awqd.kernels.triton.layout import TOLERANCES, pack_awqd_w4
from awqd.quant.reference import dequantize

DEVICE = torch.device("cuda")
SHAPES = ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008))
BUCKETS = (64, 16, 128, 32)
REPETITIONS = (3, 30)
FAMILIES = ((128, 4), (64, 4), (128, 8))  # (BLOCK_N, warps): 32, 16 and 16 weight rows a warp
STAGE_BUDGET = 96 * 1024  # a program's stages: two programs share an SM
SMS = torch.cuda.get_device_properties(DEVICE).multi_processor_count
TOLERANCE = TOLERANCES[torch.float16]


def tiles(rows: int) -> list[dict]:
    """Each family at this bucket (one M tile of all rows), with stages of 1 or 4 steps (a group), as many as the
    budget holds (at least 2), split K to fill the last wave of about 2 or 1 programs per SM."""
    block_m = max(16, rows)
    out = []
    for block_n, warps in FAMILIES:
        # fp32 accumulators a thread: up to 128, as Triton's setmaxnreg gives the consumer partition 232 registers
        # (at 128, 16 bytes spill outside the MMAs, offline).
        if (block_n // warps) * block_m // 32 > 128:
            continue
        maxnreg = 80 if warps == 8 and block_m <= 64 else 128  # 80: no spills offline; two 12-warp tiles an SM
        for sps in (1, 4):
            stages = max(2, min(32, STAGE_BUDGET // (sps * (block_m * 64 + block_n * 16))))
            for per_sm in (2, 1):
                tile = dict(block_m=block_m, block_n=block_n, warps=warps, stages=stages, sps=sps, per_sm=per_sm)
                out.append(tile | dict(maxnreg=maxnreg))
    return out


TILED = {}  # (id(packed), block_n) -> (packed, its tile_words): the packed weight is held, so its id stays its own


def words(packed, block_n: int) -> torch.Tensor:
    cached = TILED.get((id(packed), block_n))
    if cached is None:
        cached = TILED[id(packed), block_n] = (packed, tile_words(packed, block_n))
    return cached[1]


def split_for(programs: int, groups: int, per_sm: int) -> int:
    """The K split (at least 4 groups a slice) whose programs fill the last wave best, per_sm programs an SM; the
    smaller split on a tie. Without it, 172 gate_up tiles at 16 tokens ran 0.65 waves (H200 profile)."""
    slots = per_sm * SMS

    def fill(split: int) -> float:
        total = programs * split
        return total / (-(-total // slots) * slots)

    return max(range(1, max(1, groups // 4) + 1), key=lambda split: (round(fill(split), 2), -split))


def launch(x: torch.Tensor, packed, tile: dict) -> torch.Tensor:
    programs = -(-x.shape[0] // tile["block_m"]) * -(-packed.out_features // tile["block_n"])
    split = split_for(programs, packed.in_features // packed.group_size, tile["per_sm"])
    sizes = tile["block_m"], tile["block_n"], tile["stages"], tile["sps"], split
    return w4_mma2(x, packed, words(packed, tile["block_n"]), *sizes, tile["warps"], tile["maxnreg"])


def label(tile: dict) -> str:
    shape = f"{tile['block_n']}x{tile['block_m']} w{tile['warps']}"
    return f"mma2 {shape} s{tile['stages']}x{tile['sps']} p{tile['per_sm']}"


def error(x: torch.Tensor, weight, packed, tile: dict, graph: bool) -> float | str:
    ref = x.float() @ dequantize(weight, torch.float16).float().T
    try:
        if graph:
            launch(x, packed, tile)
            captured = torch.cuda.CUDAGraph()
            with torch.cuda.graph(captured):
                y = launch(x, packed, tile)
            y.zero_()
            captured.replay()
        else:
            y = launch(x, packed, tile)
        torch.cuda.synchronize()
    except Exception as failure:
        return f"{type(failure).__name__}: {str(failure)[:200]}"
    return relative_error(y, ref)


def check(results: dict, rows: int, generator: torch.Generator, out: str) -> None:
    """Row and column tails on a 200 x 512 weight, then every layer shape; the graph replay on 4096 x 4096."""
    for out_features, in_features in ((200, 512), *SHAPES):
        weight = random_weight(out_features, in_features, 128, DEVICE, generator, bias=False)
        packed = pack_awqd_w4(weight, DEVICE)
        for m in (rows, rows - 3) if out_features == 200 else (rows,):
            x = torch.randn(m, in_features, device=DEVICE, generator=generator).half()
            for tile in tiles(rows):
                for graph in (False, True) if out_features == in_features == 4096 else (False,):
                    err = error(x, weight, packed, tile, graph)
                    ok = isinstance(err, float) and err < TOLERANCE
                    case = [rows, m, out_features, in_features, label(tile), graph, err, ok]
                    results["check"].append(case)
                    if not ok:
                        print("FAIL", *case, flush=True)
    passed = sum(case[-1] for case in results["check"])
    results["check_summary"] = f"{passed} of {len(results['check'])} pass"
    print(f"{passed} of {len(results['check'])} checks pass", flush=True)
    save(results, out)


def timing(results: dict, rows: int, packed: list, out: str) -> None:
    xs = [torch.randn(rows, in_features, device=DEVICE).half() for _, in_features in SHAPES]
    for weight in (weight for copy in packed for weight in copy):  # regrouped before any graph capture
        for block_n, _ in FAMILIES:
            words(weight, block_n)
    fastest = {"mma2": [], "skinny": []}
    for index, (out_features, in_features) in enumerate(SHAPES):
        us = {}
        for tile in tiles(rows):
            launches = [lambda c=copy[index], x=xs[index], t=tile: launch(x, c, t) for copy in packed]
            us["mma2 " + label(tile)] = per_launch_ms(label(tile), launches, DEVICE, REPETITIONS) * 1e3
        for config in skinny.tuning_space(rows):
            launches = [lambda c=copy[index], x=xs[index], t=config: skinny.skinny(x, c, t) for copy in packed]
            us["skinny " + str(config)] = per_launch_ms(str(config), launches, DEVICE, REPETITIONS) * 1e3
        results["linear_us"].setdefault(str(rows), {})[f"{out_features}x{in_features}"] = us
        save(results, out)  # a call cut short keeps every linear timed so far
        best = {kind: min((v, k) for k, v in us.items() if k.startswith(kind)) for kind in ("mma2", "skinny")}
        fastest["mma2"].append(next(t for t in tiles(rows) if "mma2 " + label(t) == best["mma2"][1]))
        fastest["skinny"].append(next(t for t in skinny.tuning_space(rows) if "skinny " + str(t) == best["skinny"][1]))
        print(
            f"{rows} tokens {out_features}x{in_features}: skinny {best['skinny'][0]:.1f} µs; "
            f"mma2 {best['mma2'][0]:.1f} ({best['mma2'][1][5:]})",
            flush=True,
        )

    def mma2_pass(copy, chosen=fastest["mma2"], xs=xs):
        return lambda: [launch(x, w, t) for x, w, t in zip(xs, copy, chosen, strict=True)]

    def skinny_pass(copy, chosen=fastest["skinny"], xs=xs):
        return lambda: [skinny.skinny(x, w, t) for x, w, t in zip(xs, copy, chosen, strict=True)]

    layer = {
        "mma2, fastest tile per linear": time_passes("mma2", [mma2_pass(c) for c in packed], DEVICE, *REPETITIONS),
        "skinny, fastest tile per linear": time_passes(
            "skinny", [skinny_pass(c) for c in packed], DEVICE, *REPETITIONS
        ),
        "fp16 cuBLAS": time_dense_baseline(SHAPES, 128, DEVICE, rows, *REPETITIONS),
    }
    results["layer_ms"][str(rows)] = {name: timing.median_ms for name, timing in layer.items()}
    save(results, out)
    results["fastest"][str(rows)] = {
        "mma2": [label(t) for t in fastest["mma2"]],
        "skinny": [str(t) for t in fastest["skinny"]],
    }
    print(f"{rows} tokens, ms per layer: " + ", ".join(f"{k} {v.median_ms:.4f}" for k, v in layer.items()), flush=True)


def save(results: dict, out: str) -> None:
    with open(f"{out}/mma2-check.json", "w") as file:
        json.dump(results, file, indent=1)


def main() -> None:
    out = sys.argv[1]
    results = {
        "device": torch.cuda.get_device_name(DEVICE),
        "check": [],
        "check_summary": {},
        "linear_us": {},
        "layer_ms": {},
        "fastest": {},
    }
    generator = torch.Generator(device=DEVICE).manual_seed(1)
    weights = random_layer_weights(SHAPES, 128, DEVICE, rotation_copies(SHAPES, DEVICE))
    packed = [[pack_awqd_w4(weight, DEVICE) for weight in copy] for copy in weights]
    for rows in BUCKETS:  # checked, then timed: a bucket's figures stand even if a later bucket runs out of time
        check(results, rows, generator, out)
        timing(results, rows, packed, out)
    results["copy_gbps"] = measure_copy_bandwidth_gbps(DEVICE)
    save(results, out)


if __name__ == "__main__":
    main()
