"""The Gluon experiment on a GPU (issue 15): correctness of every tile in every mode against awqd's reference,
eagerly and in CUDA-graph replay, then µs per Llama-2-7B linear and ms per layer beside awqd's skinny kernel (every
tile of its boot-time tuning space, the fastest per linear) and fp16 cuBLAS, timed as awqd times kernels
(awqd.kernels.measure: CUDA-graph replay, weights rotated past L2).

    PYTHONPATH=<this folder>:<repo> python3 gluon_check.py OUT
"""

import json
import sys

import torch
from gluon_skinny import MODES, w4_ws

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
BUCKETS = (64, 128, 16, 32)
REPETITIONS = (3, 30)
# (mode, BLOCK_N, warps, stages); the loader warp comes on top of the warps.
FAMILIES = (("sync", 64, 4, 4), ("sync", 128, 8, 4), ("sync", 128, 4, 4), ("smem", 64, 4, 3), ("smem", 128, 8, 3))
FAMILIES += (("smem", 64, 4, 4),)
SMEM_BYTES = 220 * 1024
SMS = torch.cuda.get_device_properties(DEVICE).multi_processor_count
TOLERANCE = TOLERANCES[torch.float16]


def tiles(rows: int, modes: tuple[str, ...] = ("sync", "smem")) -> list[dict]:
    """Each family at this bucket (one M tile of all rows), split K for about 2 or 1 programs per SM."""
    block_m = max(16, rows)
    out = []
    # ASYNC runs SYNC's families: the same tiles with the MMA left in flight.
    families = [*FAMILIES, *(("async", *family[1:]) for family in FAMILIES if family[0] == "sync")]
    for mode, block_n, warps, stages in (family for family in families if family[0] in modes):
        shared = stages * (block_m * 256 + block_n * 64) + (2 * block_n * 256 if mode == "smem" else 0)
        if shared > SMEM_BYTES:
            continue
        # Registers per thread, times (warps + 4 for the loader's warpgroup): 8 warps' tiles share an SM by two.
        maxnreg = 80 if warps == 8 and block_m <= 64 else 128
        for per_sm in (2, 1):
            out.append(
                dict(
                    mode=mode,
                    block_m=block_m,
                    block_n=block_n,
                    warps=warps,
                    stages=stages,
                    per_sm=per_sm,
                    maxnreg=maxnreg,
                )
            )
    return out


def launch(x: torch.Tensor, packed, tile: dict) -> torch.Tensor:
    programs = -(-x.shape[0] // tile["block_m"]) * -(-packed.out_features // tile["block_n"])
    k_steps = packed.in_features // 128
    split = 1
    while programs * split < tile["per_sm"] * SMS and k_steps // (split * 2) >= 4:
        split *= 2
    return w4_ws(
        x,
        packed,
        tile["block_m"],
        tile["block_n"],
        tile["stages"],
        split,
        tile["warps"],
        tile["maxnreg"],
        MODES[tile["mode"]],
    )


def label(tile: dict) -> str:
    return f"{tile['mode']} {tile['block_n']}x{tile['block_m']} w{tile['warps']} s{tile['stages']} p{tile['per_sm']}"


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


def check(results: dict) -> None:
    """Row and column tails on a 200 x 512 weight, then every layer shape; the graph replay on 4096 x 4096."""
    generator = torch.Generator(device=DEVICE).manual_seed(1)
    for rows in BUCKETS:
        modes = ("sync", "smem", "async") if rows in (16, 128) else ("sync", "smem")
        for out_features, in_features in ((200, 512), *SHAPES):
            weight = random_weight(out_features, in_features, 128, DEVICE, generator, bias=False)
            packed = pack_awqd_w4(weight, DEVICE)
            for m in (rows, rows - 3) if out_features == 200 else (rows,):
                x = torch.randn(m, in_features, device=DEVICE, generator=generator).half()
                for tile in tiles(rows, modes):
                    for graph in (False, True) if out_features == in_features == 4096 else (False,):
                        err = error(x, weight, packed, tile, graph)
                        ok = isinstance(err, float) and err < TOLERANCE
                        case = [rows, m, out_features, in_features, label(tile), graph, err, ok]
                        results["check"].append(case)
                        if not ok:
                            print("FAIL", *case, flush=True)
    for mode in ("sync", "smem", "async"):
        cases = [case for case in results["check"] if case[4].startswith(mode)]
        passed = sum(case[-1] for case in cases)
        results["check_summary"][mode] = f"{passed} of {len(cases)} pass"
        print(f"{mode}: {passed} of {len(cases)} checks pass", flush=True)


def timing(results: dict) -> None:
    weights = random_layer_weights(SHAPES, 128, DEVICE, rotation_copies(SHAPES, DEVICE))
    packed = [[pack_awqd_w4(weight, DEVICE) for weight in copy] for copy in weights]
    for rows in BUCKETS:
        xs = [torch.randn(rows, in_features, device=DEVICE).half() for _, in_features in SHAPES]
        fastest = {"gluon": [], "skinny": []}
        for index, (out_features, in_features) in enumerate(SHAPES):
            us = {}
            for tile in tiles(rows):
                launches = [lambda c=copy[index], x=xs[index], t=tile: launch(x, c, t) for copy in packed]
                us["gluon " + label(tile)] = per_launch_ms(label(tile), launches, DEVICE, REPETITIONS) * 1e3
            for config in skinny.tuning_space(rows):
                launches = [lambda c=copy[index], x=xs[index], t=config: skinny.skinny(x, c, t) for copy in packed]
                us["skinny " + str(config)] = per_launch_ms(str(config), launches, DEVICE, REPETITIONS) * 1e3
            results["linear_us"].setdefault(str(rows), {})[f"{out_features}x{in_features}"] = us
            best = {kind: min((v, k) for k, v in us.items() if k.startswith(kind)) for kind in ("gluon", "skinny")}
            fastest["gluon"].append(next(t for t in tiles(rows) if "gluon " + label(t) == best["gluon"][1]))
            fastest["skinny"].append(
                next(t for t in skinny.tuning_space(rows) if "skinny " + str(t) == best["skinny"][1])
            )
            by_mode = [min((v, k) for k, v in us.items() if k.startswith("gluon " + mode)) for mode in ("sync", "smem")]
            print(
                f"{rows} tokens {out_features}x{in_features}: skinny {best['skinny'][0]:.1f} µs; "
                + "; ".join(f"{v:.1f} ({k[6:]})" for v, k in by_mode),
                flush=True,
            )

        def gluon_pass(copy, chosen=fastest["gluon"], xs=xs):
            return lambda: [launch(x, w, t) for x, w, t in zip(xs, copy, chosen, strict=True)]

        def skinny_pass(copy, chosen=fastest["skinny"], xs=xs):
            return lambda: [skinny.skinny(x, w, t) for x, w, t in zip(xs, copy, chosen, strict=True)]

        layer = {
            "gluon, fastest tile per linear": time_passes(
                "gluon", [gluon_pass(c) for c in packed], DEVICE, *REPETITIONS
            ),
            "skinny, fastest tile per linear": time_passes(
                "skinny", [skinny_pass(c) for c in packed], DEVICE, *REPETITIONS
            ),
            "fp16 cuBLAS": time_dense_baseline(SHAPES, 128, DEVICE, rows, *REPETITIONS),
        }
        results["layer_ms"][str(rows)] = {name: timing.median_ms for name, timing in layer.items()}
        results["fastest"][str(rows)] = {
            "gluon": [label(t) for t in fastest["gluon"]],
            "skinny": [str(t) for t in fastest["skinny"]],
        }
        print(
            f"{rows} tokens, ms per layer: " + ", ".join(f"{k} {v.median_ms:.4f}" for k, v in layer.items()), flush=True
        )


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
    check(results)
    timing(results)
    results["copy_gbps"] = measure_copy_bandwidth_gbps(DEVICE)
    with open(f"{out}/gluon-check.json", "w") as file:
        json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
