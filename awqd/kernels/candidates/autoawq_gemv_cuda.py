"""AutoAWQ's CUDA GEMV on the GEMV layout: gemv_forward_cuda up to 8 rows, gemmv2_forward_cuda above.

The 8-row switch is WQLinear_GEMV's own; both kernels read the same tensors.
"""

import torch

from awqd.errors import FailedPrecondition
from awqd.kernels.base import Candidate
from awqd.kernels.candidates.layouts import PackedLinear, pack_gemv_layout
from awqd.kernels.requirements import optional_module
from awqd.quant.tensors import QuantizedWeight

awq_ext, AWQ_EXT_ERROR = optional_module("awq_ext")

GEMV_MAX_ROWS = 8
SPLIT_K_ITERS = 8  # as WQLinear_GEMV passes to gemmv2


class AutoawqGemvCuda(Candidate):
    name = "autoawq_gemv_cuda"
    family = "gemv"
    layout = "gemv"

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> PackedLinear:
        if awq_ext is None:
            raise FailedPrecondition(f"{self.name}: awq_ext (autoawq-kernels) is not importable: {AWQ_EXT_ERROR}")
        return pack_gemv_layout(weight, device)

    def forward(self, x: torch.Tensor, packed: PackedLinear) -> torch.Tensor:
        rows = x.reshape(-1, packed.in_features).to(torch.float16).contiguous()
        if rows.shape[0] > GEMV_MAX_ROWS:
            out = awq_ext.gemmv2_forward_cuda(
                rows, packed.qweight, packed.scales, packed.qzeros, packed.group_size, SPLIT_K_ITERS
            )
        else:
            out = awq_ext.gemv_forward_cuda(rows, packed.qweight, packed.scales, packed.qzeros, packed.group_size)
        if packed.bias is not None:
            out = out + packed.bias
        return out.to(x.dtype).reshape(*x.shape[:-1], packed.out_features)
