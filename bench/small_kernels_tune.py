"""Times the decode step's launches beside the GEMV on a GPU: `python3 bench/small_kernels_tune.py [--out FILE]`.

- gating: Llama-2-7B's gate_up (22016 x 4096, W4 g128 with zero point) through awqd's GEMV and then the gating
  kernel, against the GEMV's gated form (the gating in its epilogue), at 1 and 2 tokens. 32 layers, each with its own
  weight so that a pass reads more than L2 holds, in one CUDA graph; the two must be equal bit for bit.
- norm: the residual add and RMS norm at hidden 4096 with 1 to 16 warps (the default is 16), at 1, 8, 32 and 256
  rows, 64 launches in one graph on separate buffers.
Reports µs per layer or launch, the median over the graph's replays. Writes JSON to stdout (--out FILE also there).
"""

import argparse
import statistics
import sys
from collections.abc import Callable

import torch
from graph_timing import capture, emit, replay_ms

from awqd.engine.layers.triton_activation import silu_and_mul_rows
from awqd.engine.layers.triton_norm import add_rms_norm_rows
from awqd.kernels.measure import random_weight
from awqd.kernels.triton.gemv import gemv, gemv_gated
from awqd.kernels.triton.layout import pack_awqd_w4

REPLAYS = 50
LAYERS = 32
GATE_UP = (22016, 4096)
HIDDEN = 4096
NORM_LAUNCHES = 64


def graph_us(one_pass: Callable[[], object], launches: int) -> float:
    """µs per launch of one_pass captured as one CUDA graph: the median over REPLAYS replays."""
    graph, _ = capture(one_pass)
    return statistics.median(replay_ms(graph, REPLAYS)) * 1000 / launches


def gating(generator: torch.Generator) -> list[dict]:
    device = torch.device("cuda")
    layers = [pack_awqd_w4(random_weight(*GATE_UP, 128, device, generator, bias=False), device) for _ in range(LAYERS)]
    rows = []
    for tokens in (1, 2):
        x = torch.randn(tokens, GATE_UP[1], device=device, generator=generator).half()
        separate = graph_us(lambda x=x: [silu_and_mul_rows(gemv(x, packed)) for packed in layers], LAYERS)
        gated = graph_us(lambda x=x: [gemv_gated(x, packed) for packed in layers], LAYERS)
        equal = all(torch.equal(gemv_gated(x, p), silu_and_mul_rows(gemv(x, p))) for p in layers[:4])
        rows.append({"tokens": tokens, "gemv_then_gating_us": separate, "gated_us": gated, "bitwise_equal": equal})
    return rows


def norms(generator: torch.Generator) -> list[dict]:
    device = torch.device("cuda")
    weight = torch.rand(HIDDEN, device=device, generator=generator).half() + 0.5
    rows = []
    for count in (1, 8, 32, 256):
        xs = [torch.randn(count, HIDDEN, device=device, generator=generator).half() for _ in range(NORM_LAUNCHES)]
        delta = torch.randn(count, HIDDEN, device=device, generator=generator).half()
        expected = add_rms_norm_rows(xs[0], delta, weight, 1e-5)
        for warps in (1, 2, 4, 8, 16):
            got = add_rms_norm_rows(xs[0], delta, weight, 1e-5, warps)
            same = all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
            launches = [(x, delta, weight, 1e-5, warps) for x in xs]
            us = graph_us(lambda launches=launches: [add_rms_norm_rows(*a) for a in launches], NORM_LAUNCHES)
            rows.append({"rows": count, "warps": warps, "us": us, "equals_default": same})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    generator = torch.Generator(device="cuda").manual_seed(0)
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "gating": gating(generator),
        "norm": norms(generator),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
