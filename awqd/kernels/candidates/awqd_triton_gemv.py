"""awqd's own Triton GEMV on the awqd_w4 layout (awqd/kernels/triton/gemv.py): meant for 1 to a few tokens."""

import functools
from collections.abc import Callable

import torch

from awqd.kernels.triton.candidate import AwqdW4Candidate
from awqd.kernels.triton.layout import AwqdW4


@functools.cache
def gemv_kernel() -> Callable[[torch.Tensor, AwqdW4], torch.Tensor]:
    from awqd.kernels.triton.gemv import gemv  # imports triton: only when this candidate is used

    return gemv


class AwqdTritonGemv(AwqdW4Candidate):
    name = "awqd_triton_gemv"
    family = "gemv"

    def kernel(self) -> Callable[[torch.Tensor, AwqdW4], torch.Tensor]:
        return gemv_kernel()
