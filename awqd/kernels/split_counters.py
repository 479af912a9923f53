"""Counters that let a split-K launch finish in-kernel: the K slice that completes an output tile last adds the
tile's partial sums, instead of a second (reduce) launch adding them all.

Each tile needs an int32 counter that is zero when the launch starts; the launch leaves it zero again. So the
counters can live as long as their owner, with no fill before each launch, but two launches must never count on
the same counters at the same time. Only an owner that runs its launches one after another (one CUDA stream,
whose graphs replay on that stream) can promise that. It says so by holding its counters around its launches:

    with held(counters):
        y = linear(x)

The engine's step runner and the timing code in awqd.kernels.measure hold counters of their own. Elsewhere (the
quality benchmark's side stream, tests) kernels fall back to the reduce launch. A CUDA graph keeps the counters
that were held while it was captured.
"""

import contextlib
import contextvars
from collections.abc import Iterator

import torch

# 64 KB. Covers the tile grids of 7B-70B shapes at up to 512 rows (70B's fused gate_up, 57344 outputs, in 64 x 64
# tiles: 7168); a larger grid falls back to the reduce launch.
CAPACITY = 16384

_held: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("split_counters", default=None)


def new(device: torch.device, size: int = CAPACITY) -> torch.Tensor:
    return torch.zeros(size, dtype=torch.int32, device=device)


@contextlib.contextmanager
def held(counters: torch.Tensor) -> Iterator[None]:
    token = _held.set(counters)
    try:
        yield
    finally:
        _held.reset(token)


def for_launch(device: torch.device, tiles: int) -> torch.Tensor | None:
    """The held counters, if they are on `device` and cover `tiles` tiles; else None (use the reduce launch)."""
    counters = _held.get()
    if counters is None or counters.device != device or counters.numel() < tiles:
        return None
    return counters
