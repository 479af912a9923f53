"""torch's own int4 matmul on CUDA (tinygemm, as gpt-fast and torchao use it): `aten._weight_int4pack_mm`.

Contract (aten/src/ATen/native/cuda/int4mm.cu): `_convert_weight_to_int4pack(uint8 [N, K/2], inner_k_tiles)`, where
byte i of a row holds input column 2i in its high nibble and 2i + 1 in its low nibble, gives the int32 tensor-core
tiles; `_weight_int4pack_mm(x bf16 [M, K], tiles, group, scales_and_zeros bf16 [K/G, N, 2])` computes
w = (q - 8) * scale + zero. AWQ's (q - z) * s is that with zero = (8 - z) * s. The kernel takes bf16 activations
only: an fp16 model's activations are cast to bf16 and the output back inside forward, so timings include the casts.
Scale and zero are rounded to bf16 (AWQ's scales are fp16), which costs ~3e-3 relative error on the H200.
"""

from dataclasses import dataclass

import torch

from awqd.errors import InvalidArgument
from awqd.kernels.base import Candidate
from awqd.quant.tensors import QuantizedWeight

GROUP_SIZES = (32, 64, 128, 256)  # the group sizes the kernels are instantiated for (CUDA and CPU)
INNER_K_TILES = (8, 4, 2)  # 16 input columns per k-tile; more tiles per int32 group means wider loads
N_TILE = 8  # output rows per tensor-core tile
K_TILE = 16
AWQ_MIDPOINT = 8  # tinygemm subtracts 8 from every 4-bit value


@dataclass(frozen=True)
class Int4PackLinear:
    weight: torch.Tensor  # the op's packed weight: int32 tiles on CUDA, uint8 [N, K/2] on the CPU
    scales_and_zeros: torch.Tensor  # [K/G, N, 2]: scale, then zero = (8 - z) * scale
    bias: torch.Tensor | None
    in_features: int
    out_features: int
    group_size: int


def check_group_size(name: str, weight: QuantizedWeight) -> None:
    if weight.group_size not in GROUP_SIZES or weight.in_features % weight.group_size:
        raise InvalidArgument(
            "group_size",
            f"{name}: torch's int4 matmul supports group sizes {', '.join(map(str, GROUP_SIZES))}, "
            f"dividing in_features, got {weight.group_size} for in_features {weight.in_features}",
        )


def scales_and_zeros(weight: QuantizedWeight, dtype: torch.dtype) -> torch.Tensor:
    """[K/G, N, 2] in `dtype`: AWQ's scale and the float zero (8 - z) * s, exact in float32 before the cast."""
    scales = weight.scales.to(torch.float32)
    zeros = (AWQ_MIDPOINT - weight.zeros.to(torch.float32)) * scales
    return torch.stack([scales.t(), zeros.t()], dim=-1).to(dtype).contiguous()


def pack_nibble_pairs(q: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K] values 0..15 -> uint8 [N, K/2]: column 2i in the high nibble, 2i + 1 in the low one."""
    return ((q[:, 0::2] << 4) | q[:, 1::2]).to(torch.uint8).contiguous()


def inner_k_tiles(in_features: int) -> int:
    """The widest k-tile grouping that divides in_features. A group size of 32 or more that divides in_features
    (check_group_size, and groups never straddle rows) makes it a multiple of 32, so 2 always fits."""
    return next(t for t in INNER_K_TILES if in_features % (t * K_TILE) == 0)


def int4pack_linear(
    weight: QuantizedWeight, packed_weight: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> Int4PackLinear:
    bias = None if weight.bias is None else weight.bias.to(device)
    return Int4PackLinear(
        weight=packed_weight,
        scales_and_zeros=scales_and_zeros(weight, dtype).to(device),
        bias=bias,
        in_features=weight.in_features,
        out_features=weight.out_features,
        group_size=weight.group_size,
    )


class TorchInt4Tinygemm(Candidate):
    name = "torch_int4_tinygemm"
    family = "gemm"
    layout = "tinygemm_int4"
    precision = torch.bfloat16

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> Int4PackLinear:
        check_group_size(self.name, weight)
        if weight.out_features % N_TILE:
            raise InvalidArgument(
                "shape", f"{self.name}: out_features must be a multiple of {N_TILE}, got {weight.out_features}"
            )
        tiles = inner_k_tiles(weight.in_features)
        nibbles = pack_nibble_pairs(weight.q.to(device))
        packed = torch.ops.aten._convert_weight_to_int4pack(nibbles, tiles)
        return int4pack_linear(weight, packed, torch.bfloat16, device)

    def forward(self, x: torch.Tensor, packed: Int4PackLinear) -> torch.Tensor:
        rows = x.reshape(-1, packed.in_features).to(torch.bfloat16).contiguous()
        out = torch.ops.aten._weight_int4pack_mm(rows, packed.weight, packed.group_size, packed.scales_and_zeros)
        out = out.to(x.dtype)
        if packed.bias is not None:
            out = out + packed.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], packed.out_features)
