"""llm-compressor's compressed-tensors `pack-quantized` W4A16 checkpoints, read into the canonical QuantizedWeight.

Format (compressed-tensors 0.20), per quantized linear:
  weight_packed      int32 [out, ceil(in/8)]: eight 4-bit values per int32 along in_features, value i of a word in
                     bits 4i..4i+3 (GEMV's sequential order), each stored as its signed int4 value + 8;
  weight_scale       the model's float dtype, [out, groups] (groups = 1 for the channel strategy);
  weight_shape       int64 [2] = [out, in];
  weight_zero_point  int32 [ceil(out/8), groups], asymmetric only: signed zeros + 8, packed the same way along
                     out_features.
(q - 8) - (z - 8) = q - z, so the stored nibbles are the canonical q and zeros; symmetric layers have zero 8.
Layers named in `ignore` (e.g. lm_head) keep a plain `weight`.
"""

from collections.abc import Mapping
from typing import Any

import torch

from awqd.errors import CheckpointError
from awqd.quant.packing import PACK_NUM, SEQUENTIAL_ORDER, unpack_int4
from awqd.quant.tensors import QuantConfig, QuantizedWeight

METHOD = "compressed-tensors"
FORMAT = "pack-quantized"
VERSION = "PACK_QUANTIZED"  # QuantConfig.version of these checkpoints
STRATEGIES = ("group", "channel")
# GPTQ's "weight" activation ordering (alias "static") only changes calibration; "group" (alias "dynamic") saves a
# weight_g_idx permutation of the groups, which no awqd kernel reads.
FORMAT_KEEPING_ACTORDERS = (None, "weight", "static")
FIELD = "config.json: quantization_config"


def read_quant_config(quant: dict[str, Any]) -> QuantConfig:
    """Every config group must quantize weights only, to 4-bit ints, with one group size and symmetry for all."""
    checkpoint_format = quant.get("format")
    if checkpoint_format != FORMAT:
        raise CheckpointError(f"{FIELD}.format: {checkpoint_format!r} is not supported; only {FORMAT!r}")
    for key in ("kv_cache_scheme", "sparsity_config", "transform_config"):
        if quant.get(key):
            raise CheckpointError(f"{FIELD}.{key}: is set; awqd serves weight-only quantization")
    if not isinstance(quant.get("ignore", []), list):
        raise CheckpointError(f"{FIELD}.ignore: expected a list of module names")
    groups = quant.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise CheckpointError(f"{FIELD}.config_groups: missing or empty")
    schemes = {read_weight_scheme(f"{FIELD}.config_groups.{name}", group) for name, group in groups.items()}
    if len(schemes) != 1:
        raise CheckpointError(f"{FIELD}.config_groups: groups differ in group size or symmetry; awqd needs one")
    group_size, symmetric = schemes.pop()
    return QuantConfig(w_bit=4, group_size=group_size, zero_point=not symmetric, version=VERSION)


def read_weight_scheme(field: str, group: Any) -> tuple[int, bool]:
    """(group size, -1 for channel; symmetric) of one config group."""
    if not isinstance(group, dict):
        raise CheckpointError(f"{field}: expected an object")
    group_format = group.get("format")
    if group_format not in (None, FORMAT):
        raise CheckpointError(f"{field}.format: {group_format!r} is not supported; only {FORMAT!r}")
    for key in ("input_activations", "output_activations"):
        if group.get(key) is not None:
            raise CheckpointError(f"{field}.{key}: activation quantization is not supported; awqd serves W4A16")
    weights = group.get("weights")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{field}.weights: missing")
    field = f"{field}.weights"
    expected = {"num_bits": 4, "type": "int", "dynamic": False}
    for key, value in expected.items():
        if weights.get(key, value) != value:
            raise CheckpointError(f"{field}.{key}: {weights.get(key)!r} is not supported; only {value!r}")
    actorder = weights.get("actorder")
    if actorder not in FORMAT_KEEPING_ACTORDERS:
        raise CheckpointError(
            f"{field}.actorder: {actorder!r} is not supported: it stores a g_idx permutation; "
            f"supported: null, {', '.join(a for a in FORMAT_KEEPING_ACTORDERS if a)}"
        )
    strategy = weights.get("strategy")
    if strategy not in STRATEGIES:
        raise CheckpointError(f"{field}.strategy: {strategy!r} is not supported; supported: {', '.join(STRATEGIES)}")
    symmetric = weights.get("symmetric", True)
    if not isinstance(symmetric, bool):
        raise CheckpointError(f"{field}.symmetric: {symmetric!r} is not a boolean")
    if strategy == "channel":
        return -1, symmetric
    group_size = weights.get("group_size")
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0:
        raise CheckpointError(f"{field}.group_size: {group_size!r} is not a positive integer")
    return group_size, symmetric


def layer_parts(quant: QuantConfig) -> tuple[str, ...]:
    """Tensor-name suffixes of one quantized layer; the first marks a linear as quantized."""
    return ("weight_packed", "weight_scale", "weight_shape") + (("weight_zero_point",) if quant.zero_point else ())


def expected_shapes(group_size: int, in_features: int, out_features: int) -> dict[str, tuple[int, ...]]:
    groups = in_features // group_size
    return {
        "weight_packed": (out_features, -(-in_features // PACK_NUM)),
        "weight_scale": (out_features, groups),
        "weight_shape": (2,),
        "weight_zero_point": (-(-out_features // PACK_NUM), groups),
    }


def unpack(
    tensors: Mapping[str, torch.Tensor], group_size: int, in_features: int, out_features: int, *, prefix: str = ""
) -> QuantizedWeight:
    """The canonical weight from one layer's tensors (shapes already checked); `prefix` names the layer in errors."""
    for name in ("weight_packed", "weight_zero_point"):
        if name in tensors and tensors[name].dtype != torch.int32:
            raise CheckpointError(f"{prefix}{name}: expected int32, got {tensors[name].dtype}")
    shape = tensors["weight_shape"].tolist()
    if shape != [out_features, in_features]:
        raise CheckpointError(f"{prefix}weight_shape: {shape}, the model needs {[out_features, in_features]}")
    scale = tensors["weight_scale"]
    if not scale.is_floating_point():
        raise CheckpointError(f"{prefix}weight_scale: expected a floating-point tensor, got {scale.dtype}")
    scales = scale.to(torch.float16)
    if not torch.equal(scales.to(scale.dtype), scale):
        raise CheckpointError(f"{prefix}weight_scale: {scale.dtype} values that float16 cannot hold exactly")

    q = unpack_int4(tensors["weight_packed"], SEQUENTIAL_ORDER)[:, :in_features].contiguous()
    groups = in_features // group_size
    if "weight_zero_point" in tensors:
        zeros = unpack_int4(tensors["weight_zero_point"].t(), SEQUENTIAL_ORDER).t()[:out_features].contiguous()
    else:
        zeros = torch.full((out_features, groups), 8, dtype=torch.uint8, device=q.device)
    bias = tensors.get("bias")
    return QuantizedWeight(
        q=q,
        zeros=zeros,
        scales=scales.contiguous(),
        group_size=group_size,
        bias=None if bias is None else bias.to(torch.float16),
    )
