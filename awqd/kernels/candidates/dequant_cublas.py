"""Dequantize the GEMM-layout weight to fp16 with torch ops, then F.linear, which runs on cuBLAS.

Torch ops rather than AutoAWQ's Triton dequantize: they need nothing but a torch build for the GPU, so this
candidate also serves GPUs where awq_ext has no code and Triton cannot compile (Blackwell with an old Triton).
The weight stays int4 in memory; the fp16 copy lives only for the call. This is AutoAWQ's own path for
>= 1024 tokens, where the matmul is compute-bound and the dequantize cost is amortised.
"""

import functools

import torch
import torch.nn.functional as F

from awqd.kernels.base import Candidate
from awqd.kernels.candidates.layouts import PackedLinear, pack_gemm_layout
from awqd.quant.packing import GEMM_ORDER, PACK_NUM
from awqd.quant.tensors import QuantizedWeight


@functools.cache
def gemm_nibble_shifts(device: torch.device) -> torch.Tensor:
    """Bit offset of column j inside each int32 (nibble i holds column GEMM_ORDER[i]). Cached: forward never copies."""
    nibbles = [GEMM_ORDER.index(column) for column in range(PACK_NUM)]
    return torch.tensor([4 * nibble for nibble in nibbles], dtype=torch.int32, device=device)


def unpack_gemm_columns(packed_values: torch.Tensor) -> torch.Tensor:
    """int32 [rows, cols/8] in GEMM nibble order -> int32 [rows, cols] values 0..15 in column order."""
    shifts = gemm_nibble_shifts(packed_values.device)
    return ((packed_values.unsqueeze(-1) >> shifts) & 0xF).flatten(1)


def dequantize_gemm_layout(packed: PackedLinear, dtype: torch.dtype) -> torch.Tensor:
    """W.T as [in, out] in `dtype`: (q - z) * s, each group of `group_size` input rows sharing z and s."""
    groups = packed.in_features // packed.group_size
    q = unpack_gemm_columns(packed.qweight).view(groups, packed.group_size, packed.out_features)
    z = unpack_gemm_columns(packed.qzeros).unsqueeze(1)
    s = packed.scales.to(dtype).unsqueeze(1)
    return ((q - z).to(dtype) * s).view(packed.in_features, packed.out_features)


class DequantCublas(Candidate):
    name = "dequant_cublas"
    family = "dequant_matmul"
    layout = "gemm"

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> PackedLinear:
        packed = pack_gemm_layout(weight, device)
        gemm_nibble_shifts(packed.qweight.device)  # create it outside any CUDA-graph capture
        return packed

    def forward(self, x: torch.Tensor, packed: PackedLinear) -> torch.Tensor:
        weight_t = dequantize_gemm_layout(packed, x.dtype)
        bias = packed.bias.to(x.dtype) if packed.bias is not None else None
        return F.linear(x, weight_t.t(), bias)
