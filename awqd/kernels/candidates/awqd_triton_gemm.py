"""awqd's own Triton tensor-core GEMM on the awqd_w4 layout (awqd/kernels/triton/gemm.py): 16 tokens and up."""

import functools
from collections.abc import Callable

import torch

from awqd.kernels.base import Candidate
from awqd.kernels.triton.layout import LAYOUT, AwqdW4, check_activations, pack_awqd_w4
from awqd.quant.tensors import QuantizedWeight


@functools.cache
def gemm_kernel() -> Callable[[torch.Tensor, AwqdW4], torch.Tensor]:
    from awqd.kernels.triton.gemm import gemm  # imports triton: only when this candidate is used

    return gemm


class AwqdTritonGemm(Candidate):
    name = "awqd_triton_gemm"
    family = "gemm"
    layout = LAYOUT

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> AwqdW4:
        gemm_kernel()  # a missing or broken Triton fails the load, not a model step
        return pack_awqd_w4(weight, device)

    def forward(self, x: torch.Tensor, packed: AwqdW4) -> torch.Tensor:
        check_activations(x, packed)
        rows = x.reshape(-1, packed.in_features).contiguous()
        return gemm_kernel()(rows, packed).reshape(*x.shape[:-1], packed.out_features)
