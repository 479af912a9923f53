"""fbgemm-gpu-genai's CUTLASS mixed-input GEMM for Hopper: `torch.ops.fbgemm.bf16i4bf16_rowwise`.

Contract (fbgemm_gpu/experimental/gen_ai, src/quantize/cutlass_extensions/bf16i4bf16.cu and gen_ai/quantize.py):
x bf16 [M, K]; W int8 [N, K/2] holding signed 4-bit values, column 2i in the low nibble and 2i + 1 in the high one;
scale and zero [K/G, N]; the kernel computes w = q_signed * scale + zero. AWQ's (q - z) * s is that with
q_signed = q - 8 and zero = (8 - z) * s. Scales and zeros are stored in bf16, as fbgemm's own helper stores them
(it also takes fp32, at twice the metadata bytes). Activations are cast fp16 -> bf16 and the output back inside
forward, so timings include the casts. CUTLASS tiles K by 64 bf16 values, so a group must span whole tiles.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from awqd.errors import FailedPrecondition, InvalidArgument
from awqd.kernels.base import Candidate
from awqd.kernels.requirements import FBGEMM_ROWWISE, probe_requirements
from awqd.quant.tensors import QuantizedWeight

K_TILE = 64  # TileShapeK = 128 bytes of bf16
N_ALIGNMENT = 8  # 16-byte bf16 output rows
SCALE_DTYPE = torch.bfloat16
AWQ_MIDPOINT = 8


@dataclass(frozen=True)
class FbgemmInt4Linear:
    weight: torch.Tensor  # int8 [N, K/2], preshuffled for the shuffled kernel
    scales: torch.Tensor  # [K/G, N]
    zeros: torch.Tensor  # [K/G, N]: (8 - z) * s
    bias: torch.Tensor | None
    in_features: int
    out_features: int


def pack_signed_nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K] values 0..15 -> int8 [N, K/2] of q - 8: column 2i in the low nibble, 2i + 1 in the high one.

    q - 8 in 4-bit two's complement is q XOR 8, so no signed arithmetic is needed."""
    signed = q.to(torch.uint8) ^ AWQ_MIDPOINT
    return ((signed[:, 1::2] << 4) | signed[:, 0::2]).view(torch.int8).contiguous()


def unpack_signed_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_signed_nibbles, to int16 values -8..7 (for tests and checks)."""
    nibbles = torch.stack([packed.view(torch.uint8) & 0xF, packed.view(torch.uint8) >> 4], dim=-1).flatten(1)
    return nibbles.to(torch.int16) - ((nibbles.to(torch.int16) & 8) << 1)


def group_scales_and_zeros(weight: QuantizedWeight, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero [K/G, N] in `dtype`, computed exactly in float32 before the cast."""
    scales = weight.scales.to(torch.float32)
    zeros = (AWQ_MIDPOINT - weight.zeros.to(torch.float32)) * scales
    return scales.t().to(dtype).contiguous(), zeros.t().to(dtype).contiguous()


def check_shape(name: str, weight: QuantizedWeight) -> None:
    if weight.group_size % K_TILE or weight.out_features % N_ALIGNMENT:
        raise InvalidArgument(
            "shape",
            f"{name}: needs a group size that is a multiple of {K_TILE} and out_features % {N_ALIGNMENT} == 0, got "
            f"group size {weight.group_size} for [{weight.out_features}, {weight.in_features}]",
        )


def require(name: str, requirement: str) -> None:
    error = probe_requirements().get(requirement)
    if error is not None:
        raise FailedPrecondition(f"{name}: {requirement} is not usable: {error}")


def fbgemm_linear(weight: QuantizedWeight, packed_weight: torch.Tensor, device: torch.device) -> FbgemmInt4Linear:
    scales, zeros = group_scales_and_zeros(weight, SCALE_DTYPE)
    return FbgemmInt4Linear(
        weight=packed_weight,
        scales=scales.to(device),
        zeros=zeros.to(device),
        bias=None if weight.bias is None else weight.bias.to(device),
        in_features=weight.in_features,
        out_features=weight.out_features,
    )


def run_bf16(kernel: Callable[..., torch.Tensor], x: torch.Tensor, packed: FbgemmInt4Linear) -> torch.Tensor:
    """The casts around a bf16 kernel in an fp16 model, and the bias in x's dtype."""
    rows = x.reshape(-1, packed.in_features).to(torch.bfloat16).contiguous()
    out = kernel(rows, packed.weight, packed.scales, packed.zeros).to(x.dtype)
    if packed.bias is not None:
        out = out + packed.bias.to(x.dtype)
    return out.reshape(*x.shape[:-1], packed.out_features)


class FbgemmBf16i4Rowwise(Candidate):
    name = "fbgemm_bf16i4_rowwise"
    family = "gemm"
    layout = "fbgemm_int4"
    precision = torch.bfloat16

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> FbgemmInt4Linear:
        require(self.name, FBGEMM_ROWWISE)
        check_shape(self.name, weight)
        return fbgemm_linear(weight, pack_signed_nibbles(weight.q.to(device)), device)

    def forward(self, x: torch.Tensor, packed: FbgemmInt4Linear) -> torch.Tensor:
        return run_bf16(torch.ops.fbgemm.bf16i4bf16_rowwise, x, packed)
