"""The awqd_w4 layout that awqd's Triton kernels read, packed from the canonical QuantizedWeight.

qweight      int32 [out, in/8]: row-major along K, so a program reads each output row's K range as contiguous
             16-byte vectors. Within each run of 32 input columns, word q (0..3) holds the columns 2q + 8i + p
             (i = 0..3, p = 0, 1): the eight values one lane holds of the tensor cores' 16-bit A fragment over two
             k16 steps (FRAGMENT_COLUMNS). Its nibble j holds the word's column NIBBLE_ORDER[j] of those eight:
             the kernels unpack nibbles j and j + 4 together (unpack.py) and interleave them for free.
scale_zero   int32 [out, in/g]: the fp16 scale in the low half and the fp16 zero in the high half, one 4-byte
             load per (row, group). The zero is an integer 0..15, exact in fp16.
scale_zero_by_group  int32 [in/g, out]: the same words group-major, so that a K step's words for a block of rows
             are one contiguous segment: the skinny kernel reads them through TMA, staged with its tiles (1.3-7.4%
             faster per layer than pointer loads on one H100, bench/results/h100-2026-12-06-scale-zero-tma; within
             1% of them on a second, h100-2026-12-06-own-kernels). It costs 1/16 of qweight's bytes.

The GEMV never dequantizes a tile: per word it forms sum_j (q_j - z) x_j against the activations in nibble-pair
order and multiplies by the scale once (worddot.py); the GEMM dequantizes the tile to fp16 for the tensor cores.
"""

import os
from dataclasses import dataclass

import torch

from awqd.errors import FailedPrecondition, InvalidArgument
from awqd.quant.packing import pack_int4
from awqd.quant.tensors import QuantizedWeight

LAYOUT = "awqd_w4"
NIBBLE_ORDER = (0, 4, 2, 6, 1, 5, 3, 7)  # 3-bit reversal: see unpack.py, worddot.py and the GEMM's interleave
# The input column at each packed position 8q + s of a run of 32: pairs 2q + 8i of the fragment's K columns, so that
# the skinny kernel's weights unpack straight into MMA operand registers while the activations stay in K order.
FRAGMENT_COLUMNS = tuple(2 * q + 8 * (s // 2) + s % 2 for q in range(4) for s in range(8))
# pack_int4's order over a run: nibble j of word q holds the word's fragment column NIBBLE_ORDER[j].
PACK_ORDER = tuple(FRAGMENT_COLUMNS[8 * word + NIBBLE_ORDER[nibble]] for word in range(4) for nibble in range(8))
GROUP_SIZES = (32, 64, 128)  # the sizes the kernels are verified with (CPU interpreter and GPU); others are refused
ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)
# Relative error (||y - ref|| / ||ref||) the kernels are tested to. Accumulation is fp32 throughout, so the error is
# the final rounding to the output dtype: ~2e-4 in fp16 and ~3.5e-3 in bf16 (measured under the interpreter).
# About 10x and 3x that: a packing, nibble-order or group-mapping bug gives 0.1 and more.
TOLERANCES = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


@dataclass(frozen=True)
class AwqdW4:
    qweight: torch.Tensor
    scale_zero: torch.Tensor
    bias: torch.Tensor | None  # fp32: added once, in the kernel's fp32 epilogue
    in_features: int
    out_features: int
    group_size: int
    scale_zero_by_group: torch.Tensor | None = None  # None where no kernel needs it (tuning's shape stand-ins)


def interpreting() -> bool:
    """True under the Triton interpreter (TRITON_INTERPRET=1), where kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_device(device: torch.device) -> None:
    if device.type != "cuda" and not interpreting():
        raise FailedPrecondition(
            f"device {device}: awqd's Triton kernels run on CUDA devices only "
            "(on CPU tensors only under the Triton interpreter, TRITON_INTERPRET=1)"
        )


def check_supported(weight: QuantizedWeight) -> None:
    """Refuse at load what the kernels cannot compute exactly, naming the field and why."""
    out_features, in_features, group_size = weight.out_features, weight.in_features, weight.group_size
    where = f"awqd_w4 layout of a [{out_features}, {in_features}] layer"
    if group_size not in GROUP_SIZES:
        raise FailedPrecondition(
            f"group_size: {where}: group size {group_size} is not supported; supported: "
            f"{', '.join(map(str, GROUP_SIZES))} (the group sizes awqd's kernels are verified with)"
        )
    if in_features % group_size:
        raise FailedPrecondition(
            f"in_features: {where}: in_features {in_features} is not a multiple of group size {group_size}"
        )
    groups = in_features // group_size
    if weight.zeros.shape != (out_features, groups) or weight.scales.shape != (out_features, groups):
        raise FailedPrecondition(
            f"zeros/scales: {where}: expected [{out_features}, {groups}], "
            f"got {list(weight.zeros.shape)} and {list(weight.scales.shape)}"
        )
    if out_features * in_features >= 2**31:
        raise FailedPrecondition(f"shape: {where}: more than 2^31 weights overflows the kernels' int32 offsets")


def pack_awqd_w4(weight: QuantizedWeight, device: torch.device) -> AwqdW4:
    check_device(device)
    check_supported(weight)
    scale_zero = torch.stack((weight.scales.to(torch.float16), weight.zeros.to(torch.float16)), dim=-1)
    scale_zero = scale_zero.view(torch.int32).squeeze(-1).to(device)  # little-endian: the scale is the low half
    bias = weight.bias.to(device=device, dtype=torch.float32) if weight.bias is not None else None
    return AwqdW4(
        qweight=pack_int4(weight.q, PACK_ORDER).to(device).contiguous(),
        scale_zero=scale_zero.contiguous(),
        bias=bias,
        in_features=weight.in_features,
        out_features=weight.out_features,
        group_size=weight.group_size,
        scale_zero_by_group=by_group(scale_zero),
    )


def by_group(scale_zero: torch.Tensor) -> torch.Tensor:
    """scale_zero [out, groups] copied group-major, with row stride out even for one group (a tensor descriptor
    needs 16-byte row strides; .t().contiguous() of a one-group layout would keep the transposed strides)."""
    return torch.empty(scale_zero.shape[::-1], dtype=scale_zero.dtype, device=scale_zero.device).copy_(scale_zero.t())


def check_activations(x: torch.Tensor, packed: AwqdW4) -> None:
    if x.dtype not in ACTIVATION_DTYPES:
        raise InvalidArgument("x", f"awqd's Triton kernels take fp16 or bf16 activations, got {x.dtype}")
    if x.shape[-1] != packed.in_features:
        raise InvalidArgument("x", f"last dimension {x.shape[-1]} != in_features {packed.in_features}")
