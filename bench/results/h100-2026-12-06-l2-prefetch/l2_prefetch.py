"""Would prefetching the next linear's weights into L2, during the current one, bring the 1-token layer down (issue
15)? An experiment, not awqd code.

One launch cannot read at the copy bandwidth: it loses 1.4-2 µs to ramp-up and tail, so four launches put a layer's
read floor at 32 µs on an H200 against the 26 µs that its bytes need (bench/results/h200-2026-12-03-read-floor).
While a GEMV ramps up and drains, DRAM has room. Here a side stream, forked in the same CUDA graph, issues
cp.async.bulk.prefetch.L2 (sm_90) over the next linear's int4 weights and (scale, zero) words while the current
linear runs. The next GEMV then finds the first part of its weights in L2. Prefetch reads no byte the layer does
not read anyway, so the layer's DRAM bytes are unchanged, and the roofline (those bytes at the copy bandwidth) still
bounds it from below.

Timed as awqd times kernels (measure.time_passes: CUDA-graph replay, weights rotated past L2), the four Llama-2-7B
linears at 1 token on their fastest GEMV tiles (per linear, as tuning picks), with and without the prefetch, in the
same run, in alternating rounds.

    PYTHONPATH=.:bench python3 bench/results/h100-2026-12-06-l2-prefetch/l2_prefetch.py --out DIR
"""

import argparse
import json
from functools import partial

import torch
import triton
import triton.language as tl
from graph_timing import parse_out_and_device

from awqd.kernels.measure import (
    measure_copy_bandwidth_gbps,
    per_launch_ms,
    random_layer_weights,
    roofline_floor_ms,
    rotation_copies,
    time_passes,
)
from awqd.kernels.triton.gemv import TILES, gemv
from awqd.kernels.triton.layout import pack_awqd_w4

SHAPES = ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008))
GROUP_SIZE = 128
LANE_BYTES = 4096  # one bulk prefetch per lane
LANES = 32
FRACTIONS = (0.25, 0.5, 1.0)  # how much of the next linear's bytes to prefetch
ROUNDS = 3
REPETITIONS = (5, 200)


@triton.jit
def l2_prefetch_kernel(base, n_bytes, LANE_BYTES: tl.constexpr, LANES: tl.constexpr):
    offsets = (tl.program_id(0) * LANES + tl.arange(0, LANES)).to(tl.int64) * LANE_BYTES
    sizes = tl.minimum(tl.maximum(n_bytes - offsets, 0), LANE_BYTES).to(tl.int32)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r",
        [base + offsets, sizes],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


def prefetch(tensor: torch.Tensor, fraction: float) -> None:
    """L2 prefetch of the first `fraction` of tensor's bytes (16-byte multiples, as the instruction needs)."""
    n_bytes = int(tensor.numel() * tensor.element_size() * fraction) // 16 * 16
    grid = (triton.cdiv(n_bytes, LANES * LANE_BYTES),)
    l2_prefetch_kernel[grid](tensor.view(torch.uint8), n_bytes, LANE_BYTES=LANE_BYTES, LANES=LANES, num_warps=1)


def layer_pass(inputs, linears, tiles, side: torch.cuda.Stream, fraction: float | None):
    """The four GEMVs; with a fraction, each next linear's first bytes prefetched on `side` during the current."""

    def run() -> list[torch.Tensor]:
        main = torch.cuda.current_stream()
        outputs = []
        for index, (x, weight, tile) in enumerate(zip(inputs, linears, tiles, strict=True)):
            if fraction is not None and index + 1 < len(linears):
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    following = linears[index + 1]
                    prefetch(following.qweight, fraction)
                    prefetch(following.scale_zero, fraction)
            outputs.append(gemv(x, weight, tile))
        if fraction is not None:
            main.wait_stream(side)
        return outputs

    return run


def main() -> None:
    _, out, device = parse_out_and_device(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    copies = rotation_copies(SHAPES, device)
    packed = [
        [pack_awqd_w4(w, device) for w in copy] for copy in random_layer_weights(SHAPES, GROUP_SIZE, device, copies)
    ]
    inputs = [torch.randn(1, k, device=device).half() for _, k in SHAPES]
    tiles = []
    for index, x in enumerate(inputs):
        by_tile = {
            tile: per_launch_ms("tile", [partial(gemv, x, copy[index], tile) for copy in packed], device, (3, 50))
            for tile in TILES
        }
        tiles.append(min(by_tile, key=by_tile.get))
    print("tiles:", tiles, flush=True)

    # Same result with the prefetch: it is a hint, and must change nothing.
    side = torch.cuda.Stream(device)
    plain = layer_pass(inputs, packed[0], tiles, side, None)()
    prefetched = layer_pass(inputs, packed[0], tiles, side, 1.0)()
    torch.cuda.synchronize(device)
    identical = all(torch.equal(a, b) for a, b in zip(plain, prefetched, strict=True))

    forms = {"no prefetch": None, **{f"prefetch {f:.0%} of the next linear": f for f in FRACTIONS}}
    times: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(ROUNDS):
        for name, fraction in forms.items():
            passes = [layer_pass(inputs, copy, tiles, side, fraction) for copy in packed]
            times[name].append(time_passes(name, passes, device, *REPETITIONS).median_ms)
        print({name: [round(t * 1e3, 2) for t in ts] for name, ts in times.items()}, flush=True)
    roofline = roofline_floor_ms(SHAPES, measure_copy_bandwidth_gbps(device))
    lines = [
        f"µs per layer at 1 token, median of each round ({ROUNDS} rounds, alternating), roofline {roofline * 1e3:.2f}:",
        "",
        "| form | rounds | best |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {', '.join(f'{t * 1e3:.2f}' for t in ts)} | {min(ts) * 1e3:.2f} |" for n, ts in times.items()]
    lines.append(f"\nOutputs identical with and without the prefetch: {identical}.")
    table = "\n".join(lines) + "\n"
    print(table)
    (out / "l2-prefetch.md").write_text(table)
    record = {"tiles": [str(t) for t in tiles], "ms": times, "roofline_ms": roofline, "identical": identical}
    (out / "l2-prefetch.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
