"""AutoAWQ's CUDA GEMM, awq_ext.gemm_forward_cuda, on the GEMM layout.

Unlike WQLinear_GEMM it never switches to dequantize + matmul at >= 1024 tokens: that path is the
dequant_cublas candidate, timed on its own, so every timing names the one kernel that ran.
"""

import torch

from awqd.errors import FailedPrecondition
from awqd.kernels.base import Candidate
from awqd.kernels.candidates.layouts import PackedLinear, pack_gemm_layout
from awqd.kernels.requirements import optional_module
from awqd.quant.tensors import QuantizedWeight

awq_ext, AWQ_EXT_ERROR = optional_module("awq_ext")

SPLIT_K_ITERS = 8  # as WQLinear_GEMM passes


class AutoawqGemmCuda(Candidate):
    name = "autoawq_gemm_cuda"
    family = "gemm"
    layout = "gemm"

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> PackedLinear:
        if awq_ext is None:
            raise FailedPrecondition(f"{self.name}: awq_ext (autoawq-kernels) is not importable: {AWQ_EXT_ERROR}")
        return pack_gemm_layout(weight, device)

    def forward(self, x: torch.Tensor, packed: PackedLinear) -> torch.Tensor:
        rows = x.reshape(-1, packed.in_features).to(torch.float16).contiguous()
        out = awq_ext.gemm_forward_cuda(rows, packed.qweight, packed.scales, packed.qzeros, SPLIT_K_ITERS)
        if packed.bias is not None:
            out = out + packed.bias
        return out.to(x.dtype).reshape(*x.shape[:-1], packed.out_features)
