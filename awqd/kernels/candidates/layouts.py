"""The packed layouts AutoAWQ's kernels read, built from the canonical QuantizedWeight on a device.

Candidates with the same layout name share one PackedLinear, so a model holds each layout once.
"""

from dataclasses import dataclass

import torch

from awqd.errors import InvalidArgument
from awqd.quant.packing import PACK_NUM, pack, zeros_width
from awqd.quant.tensors import QuantizedWeight

GEMV_FAST_INTERLEAVE = 4  # output rows interleaved per int16 group (awq/modules/linear/gemv_fast.py)
GEMV_FAST_KSTRIDE = 64


@dataclass(frozen=True)
class PackedLinear:
    layout: str
    qweight: torch.Tensor
    qzeros: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None
    in_features: int
    out_features: int
    group_size: int


def packed(
    layout: str, tensors: dict[str, torch.Tensor], weight: QuantizedWeight, device: torch.device
) -> PackedLinear:
    bias = weight.bias.to(device=device, dtype=torch.float16) if weight.bias is not None else None
    return PackedLinear(
        layout=layout,
        qweight=tensors["qweight"].to(device).contiguous(),
        qzeros=tensors["qzeros"].to(device).contiguous(),
        scales=tensors["scales"].to(device).contiguous(),
        bias=bias,
        in_features=weight.in_features,
        out_features=weight.out_features,
        group_size=weight.group_size,
    )


def pack_gemm_layout(weight: QuantizedWeight, device: torch.device) -> PackedLinear:
    """AutoAWQ GEMM: qweight int32 [in, out/8], qzeros int32 [in/g, out/8], scales fp16 [in/g, out]."""
    return packed("gemm", pack(weight, "GEMM"), weight, device)


def pack_gemv_layout(weight: QuantizedWeight, device: torch.device) -> PackedLinear:
    """AutoAWQ GEMV: qweight int32 [out, in/8], zero-padded qzeros/scales [out, zw], [out, zw*8]."""
    return packed("gemv", pack(weight, "GEMV"), weight, device)


def pack_gemv_fast_layout(weight: QuantizedWeight, device: torch.device) -> PackedLinear:
    """AutoAWQ GEMV_FAST, exactly as WQLinear_GEMVFast.from_linear builds it.

    qweight int16 [out/4, in/4] from AutoAWQ's own pack_intweight; scales fp16 [zw*8, out];
    qzeros fp16 [zw*8, out] holding -scale*zero, so the kernel computes q*s + (-s*z).
    """
    out_features, in_features = weight.out_features, weight.in_features
    if out_features % (GEMV_FAST_INTERLEAVE * 2) or in_features % GEMV_FAST_KSTRIDE:
        raise InvalidArgument(
            "shape",
            f"GEMV_FAST needs out_features % 8 == 0 and in_features % {GEMV_FAST_KSTRIDE} == 0, "
            f"got [{out_features}, {in_features}]",
        )
    from awq.modules.linear.gemv_fast import pack_intweight  # imports all of awq: ~4 s, so only when used

    groups = in_features // weight.group_size
    padded_columns = zeros_width(in_features, weight.group_size) * PACK_NUM
    scales = torch.zeros((out_features, padded_columns), dtype=torch.float16, device=weight.scales.device)
    scales[:, :groups] = weight.scales.to(torch.float16)
    scaled_zeros = torch.zeros_like(scales)
    scaled_zeros[:, :groups] = -(scales[:, :groups] * weight.zeros.to(torch.float32)).to(torch.float16)
    tensors = {
        "qweight": pack_intweight(
            weight.q.to(torch.int32).contiguous(), interleave=GEMV_FAST_INTERLEAVE, kstride=GEMV_FAST_KSTRIDE
        ),
        "qzeros": scaled_zeros.t(),
        "scales": scales.t(),
    }
    return packed("gemv_fast", tensors, weight, device)
