"""awqd's own Triton tensor-core GEMM on the awqd_w4 layout (awqd/kernels/triton/gemm.py): 16 tokens and up."""

import functools
from collections.abc import Callable

import torch

from awqd.kernels.triton.candidate import AwqdW4Candidate
from awqd.kernels.triton.layout import AwqdW4


@functools.cache
def gemm_kernel() -> Callable[[torch.Tensor, AwqdW4], torch.Tensor]:
    from awqd.kernels.triton.gemm import gemm  # imports triton: only when this candidate is used

    return gemm


class AwqdTritonGemm(AwqdW4Candidate):
    name = "awqd_triton_gemm"
    family = "gemm"

    def kernel(self) -> Callable[[torch.Tensor, AwqdW4], torch.Tensor]:
        return gemm_kernel()
