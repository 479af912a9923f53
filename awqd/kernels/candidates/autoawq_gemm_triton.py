"""AutoAWQ's Triton GEMM, awq.modules.triton.gemm.awq_gemm_triton, on the GEMM layout (CUDA only).

Like autoawq_gemm_cuda it leaves >= 1024 tokens to dequant_cublas instead of switching internally.
"""

import functools
from collections.abc import Callable

import torch

from awqd.kernels.base import Candidate
from awqd.kernels.candidates.layouts import PackedLinear, pack_gemm_layout
from awqd.quant.tensors import QuantizedWeight

SPLIT_K_ITERS = 8  # as WQLinearMMFunction passes


@functools.cache
def awq_gemm_triton() -> Callable[..., torch.Tensor]:
    from awq.modules.triton.gemm import awq_gemm_triton as kernel  # importing awq costs seconds: only when used

    return kernel


class AutoawqGemmTriton(Candidate):
    name = "autoawq_gemm_triton"
    family = "gemm"
    layout = "gemm"

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> PackedLinear:
        awq_gemm_triton()
        return pack_gemm_layout(weight, device)

    def forward(self, x: torch.Tensor, packed: PackedLinear) -> torch.Tensor:
        rows = x.reshape(-1, packed.in_features).to(torch.float16).contiguous()
        out = awq_gemm_triton()(rows, packed.qweight, packed.scales, packed.qzeros, split_k_iters=SPLIT_K_ITERS)
        if packed.bias is not None:
            out = out + packed.bias
        return out.to(x.dtype).reshape(*x.shape[:-1], packed.out_features)
