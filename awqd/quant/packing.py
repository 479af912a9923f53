"""AutoAWQ 0.2.9's checkpoint packings (GEMM, GEMV) to and from the canonical QuantizedWeight.

GEMM: qweight int32 [in, out/8] and qzeros int32 [in/g, out/8], eight 4-bit values per int32 with
      output columns in nibble order [0, 2, 4, 6, 1, 3, 5, 7]; scales fp16 [in/g, out].
GEMV: qweight int32 [out, in/8] with input columns in sequential nibble order; qzeros int32 [out, zw]
      and scales fp16 [out, zw * 8], zero-padded to zeros_width(in, g) (see awq/modules/linear/gemv.py).

Pure torch and vectorised, so it runs on CPU and CUDA tensors alike.
"""

from collections.abc import Mapping

import torch

from awqd.errors import CheckpointError, InvalidArgument
from awqd.quant.tensors import QuantizedWeight

VERSIONS = ("GEMM", "GEMV")
PACK_NUM = 8  # 4-bit values per int32
GEMM_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i holds column GEMM_ORDER[i]
SEQUENTIAL_ORDER = tuple(range(PACK_NUM))


def normalize_version(version: str) -> str:
    """AutoAWQ writes "gemm"/"gemv" in config.json and "GEMM"/"GEMV" in its quant_config."""
    normalized = version.upper()
    if normalized not in VERSIONS:
        raise InvalidArgument("version", f"unsupported AWQ packing {version!r}; supported: {', '.join(VERSIONS)}")
    return normalized


def gemv_size_multiplier(group_size: int) -> int:
    """How many int32 zero columns AutoAWQ's GEMV kernel reads at once for a group size."""
    if group_size >= 128:
        return 1
    if group_size == 64:
        return 2
    if group_size == 32:
        return 4
    raise InvalidArgument("group_size", f"GEMV packing supports group sizes 32, 64 and >= 128, got {group_size}")


def zeros_width(in_features: int, group_size: int) -> int:
    """int32 columns of GEMV qzeros: ceil(groups / 8) rounded up to a multiple of gemv_size_multiplier."""
    multiplier = gemv_size_multiplier(group_size)
    base_width = -(-(in_features // group_size) // PACK_NUM)
    return -(-base_width // multiplier) * multiplier


def pack_int4(values: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """[rows, cols] values 0..15 -> int32 [rows, cols/8]; nibble i of int32 c holds column 8c + order[i].
    An order of a multiple of 8 columns permutes runs of that many: nibble i of the run's word w holds run column
    order[8w + i]."""
    rows, cols = values.shape
    run = len(order)
    grouped = values.to(torch.int32).view(rows, cols // run, run)[:, :, list(order)].view(rows, cols // PACK_NUM, -1)
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=values.device)
    # The top nibble wraps into the sign bit, exactly as AutoAWQ's int32 |= does.
    packed = torch.zeros((rows, cols // PACK_NUM), dtype=torch.int32, device=values.device)
    for nibble in range(PACK_NUM):
        packed |= grouped[:, :, nibble] << shifts[nibble]
    return packed


def unpack_int4(packed: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """Inverse of pack_int4: int32 [rows, n] -> uint8 [rows, 8n]."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    nibbles = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & 0xF
    inverse = [order.index(column) for column in range(PACK_NUM)]
    return nibbles[:, :, inverse].reshape(packed.shape[0], -1).to(torch.uint8)


def check_packable(weight: QuantizedWeight) -> None:
    out_features, in_features, group_size = weight.out_features, weight.in_features, weight.group_size
    if in_features % group_size != 0:
        raise InvalidArgument("group_size", f"in_features {in_features} is not divisible by group_size {group_size}")
    if out_features % PACK_NUM != 0 or in_features % PACK_NUM != 0:
        raise InvalidArgument("shape", f"[{out_features}, {in_features}] must have both sides divisible by 8")
    groups = in_features // group_size
    if weight.zeros.shape != (out_features, groups) or weight.scales.shape != (out_features, groups):
        raise InvalidArgument(
            "zeros/scales",
            f"expected [{out_features}, {groups}], got {list(weight.zeros.shape)} and {list(weight.scales.shape)}",
        )


def pack(weight: QuantizedWeight, version: str) -> dict[str, torch.Tensor]:
    """The tensors AutoAWQ 0.2.9 stores for one linear layer in a `version` checkpoint."""
    version = normalize_version(version)
    check_packable(weight)
    scales = weight.scales.to(torch.float16)
    if version == "GEMM":
        tensors = {
            "qweight": pack_int4(weight.q.t(), GEMM_ORDER),
            "qzeros": pack_int4(weight.zeros.t(), GEMM_ORDER),
            "scales": scales.t().contiguous(),
        }
    else:
        width = zeros_width(weight.in_features, weight.group_size)
        padded_zeros = torch.zeros((weight.out_features, width * PACK_NUM), dtype=torch.uint8, device=scales.device)
        padded_zeros[:, : weight.zeros.shape[1]] = weight.zeros
        padded_scales = torch.zeros((weight.out_features, width * PACK_NUM), dtype=torch.float16, device=scales.device)
        padded_scales[:, : scales.shape[1]] = scales
        tensors = {
            "qweight": pack_int4(weight.q, SEQUENTIAL_ORDER),
            "qzeros": pack_int4(padded_zeros, SEQUENTIAL_ORDER),
            "scales": padded_scales,
        }
    if weight.bias is not None:
        tensors["bias"] = weight.bias.to(torch.float16)
    return tensors


def expected_shapes(version: str, group_size: int, in_features: int, out_features: int) -> dict[str, tuple[int, ...]]:
    groups = in_features // group_size
    if version == "GEMM":
        return {
            "qweight": (in_features, out_features // PACK_NUM),
            "qzeros": (groups, out_features // PACK_NUM),
            "scales": (groups, out_features),
        }
    width = zeros_width(in_features, group_size)
    return {
        "qweight": (out_features, in_features // PACK_NUM),
        "qzeros": (out_features, width),
        "scales": (out_features, width * PACK_NUM),
    }


def check_tensors(
    tensors: Mapping[str, torch.Tensor], version: str, group_size: int, in_features: int, out_features: int, prefix: str
) -> None:
    if in_features % group_size != 0:
        raise CheckpointError(f"{prefix}qweight: in_features {in_features} is not divisible by group_size {group_size}")
    for name, shape in expected_shapes(version, group_size, in_features, out_features).items():
        if name not in tensors:
            raise CheckpointError(f"{prefix}{name}: missing from the checkpoint")
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(
                f"{prefix}{name}: {version} packing of a [{out_features}, {in_features}] layer with group size "
                f"{group_size} needs shape {list(shape)}, got {list(tensors[name].shape)}"
            )
    for name in ("qweight", "qzeros"):
        if tensors[name].dtype != torch.int32:
            raise CheckpointError(f"{prefix}{name}: expected int32, got {tensors[name].dtype}")
    if not tensors["scales"].is_floating_point():
        raise CheckpointError(f"{prefix}scales: expected a floating-point tensor, got {tensors['scales'].dtype}")
    if "bias" in tensors and tuple(tensors["bias"].shape) != (out_features,):
        raise CheckpointError(f"{prefix}bias: expected shape [{out_features}], got {list(tensors['bias'].shape)}")


def unpack(
    tensors: Mapping[str, torch.Tensor],
    version: str,
    group_size: int,
    in_features: int,
    out_features: int,
    *,
    prefix: str = "",
) -> QuantizedWeight:
    """The canonical weight from one layer's checkpoint tensors; `prefix` (e.g. "model.layers.0.mlp.up_proj.")
    names the layer in CheckpointError messages."""
    version = normalize_version(version)
    check_tensors(tensors, version, group_size, in_features, out_features, prefix)
    groups = in_features // group_size
    if version == "GEMM":
        q = unpack_int4(tensors["qweight"], GEMM_ORDER).t().contiguous()
        zeros = unpack_int4(tensors["qzeros"], GEMM_ORDER).t().contiguous()
        scales = tensors["scales"].t()
    else:
        q = unpack_int4(tensors["qweight"], SEQUENTIAL_ORDER)
        zeros = unpack_int4(tensors["qzeros"], SEQUENTIAL_ORDER)[:, :groups].contiguous()
        scales = tensors["scales"][:, :groups]
    bias = tensors.get("bias")
    return QuantizedWeight(
        q=q,
        zeros=zeros,
        scales=scales.to(torch.float16).contiguous(),
        group_size=group_size,
        bias=None if bias is None else bias.to(torch.float16),
    )
