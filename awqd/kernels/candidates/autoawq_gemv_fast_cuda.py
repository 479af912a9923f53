"""AutoAWQ's GEMV_FAST (awq_v2_ext) on its interleaved int16 layout.

Below 8 rows it runs the decode GEMV, one row per sequence, as WQLinear_GEMVFast does for batch < 8 with
one token each; otherwise its prefill GEMM. The decode kernel is compiled for group size 128 only and
1..7 rows (awq_ext/quantization_new/gemv/gemv_cuda.cu), so other group sizes are refused at prepare.
"""

import torch

from awqd.errors import FailedPrecondition, InvalidArgument
from awqd.kernels.base import Candidate
from awqd.kernels.candidates.layouts import PackedLinear, pack_gemv_fast_layout
from awqd.kernels.requirements import optional_module
from awqd.quant.tensors import QuantizedWeight

awq_v2_ext, AWQ_V2_EXT_ERROR = optional_module("awq_v2_ext")

DECODE_MAX_ROWS = 7
DECODE_GROUP_SIZE = 128


class AutoawqGemvFastCuda(Candidate):
    name = "autoawq_gemv_fast_cuda"
    family = "gemv_fast"
    layout = "gemv_fast"

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> PackedLinear:
        if awq_v2_ext is None:
            raise FailedPrecondition(f"{self.name}: awq_v2_ext (autoawq-kernels) is not importable: {AWQ_V2_EXT_ERROR}")
        if weight.group_size != DECODE_GROUP_SIZE:
            raise InvalidArgument(
                "group_size",
                f"{self.name}: awq_v2_ext's decode kernel is built for group size {DECODE_GROUP_SIZE} only, "
                f"got {weight.group_size}",
            )
        return pack_gemv_fast_layout(weight, device)

    def forward(self, x: torch.Tensor, packed: PackedLinear) -> torch.Tensor:
        rows = x.reshape(-1, packed.in_features).to(torch.float16).contiguous()
        num_rows = rows.shape[0]
        if num_rows <= DECODE_MAX_ROWS:
            out = awq_v2_ext.gemv_forward_cuda_decode(
                rows.view(num_rows, 1, packed.in_features),
                packed.qweight,
                packed.scales,
                packed.qzeros,
                num_rows,
                packed.out_features,
                packed.in_features,
                packed.group_size,
            )
        else:
            out = awq_v2_ext.gemm_forward_cuda_prefill(
                rows.view(1, num_rows, packed.in_features), packed.qweight, packed.scales, packed.qzeros
            )
        out = out.reshape(num_rows, packed.out_features)
        if packed.bias is not None:
            out = out + packed.bias
        return out.to(x.dtype).reshape(*x.shape[:-1], packed.out_features)
