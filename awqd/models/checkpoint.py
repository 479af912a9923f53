"""Open and validate an AutoAWQ or compressed-tensors checkpoint directory, without reading any tensor data.

What is checked up front, each failure a CheckpointError naming the file or field: config.json (architecture and
quantization_config), the safetensors file or the index and every shard it names (headers readable and the files
complete), and the tokenizer files. Tensor-level checks (missing tensors, shapes) need the model skeleton and live
in the loader.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from awqd.errors import CheckpointError, InvalidArgument
from awqd.models import compressed_tensors
from awqd.quant.packing import gemv_size_multiplier, normalize_version
from awqd.quant.tensors import QuantConfig

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


@dataclass(frozen=True)
class TensorInfo:
    shard: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name, e.g. "F16", "I32"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: dict[str, Any]  # config.json as written
    architecture: str
    quant_config: QuantConfig
    tensors: dict[str, TensorInfo]  # every tensor of every shard, by name

    @property
    def shards(self) -> list[Path]:
        return list(dict.fromkeys(info.shard for info in self.tensors.values()))


def open_checkpoint(path: str | Path) -> Checkpoint:
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    config = read_json(directory / CONFIG_FILE)
    architecture = read_architecture(config)
    quant_config = read_quant_config(config)
    check_tokenizer_files(directory)
    return Checkpoint(
        path=directory,
        config=config,
        architecture=architecture,
        quant_config=quant_config,
        tensors=read_tensor_headers(directory),
    )


def read_json(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise CheckpointError(f"{file.name}: not found in {file.parent}") from None
    except OSError as error:
        raise CheckpointError(f"{file.name}: cannot be read: {error}") from error
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{file.name}: not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{file.name}: expected a JSON object, got {type(value).__name__}")
    return value


def read_architecture(config: dict[str, Any]) -> str:
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures:
        raise CheckpointError(f"{CONFIG_FILE}: architectures: missing or empty")
    architecture = architectures[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"{CONFIG_FILE}: architectures: {architecture!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return architecture


def read_quant_config(config: dict[str, Any]) -> QuantConfig:
    """AutoAWQ writes bits/group_size into config.json and w_bit/q_group_size into its own quant_config; accept both."""
    field = f"{CONFIG_FILE}: quantization_config"
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        raise CheckpointError(f"{field}: missing; this is not an AWQ checkpoint")
    method = quant.get("quant_method", "awq")
    if method == compressed_tensors.METHOD:
        return compressed_tensors.read_quant_config(quant)
    if method != "awq":
        raise CheckpointError(
            f"{field}.quant_method: {method!r} is not supported; only 'awq' and {compressed_tensors.METHOD!r}"
        )

    w_bit = quant.get("bits", quant.get("w_bit"))
    if w_bit != 4:
        raise CheckpointError(f"{field}.bits: {w_bit!r} is not supported; only 4-bit AWQ")

    group_size = quant.get("group_size", quant.get("q_group_size"))
    if not isinstance(group_size, int) or isinstance(group_size, bool) or (group_size <= 0 and group_size != -1):
        raise CheckpointError(f"{field}.group_size: {group_size!r} is not a positive integer or -1")

    # AutoAWQ 0.2.9 cannot write zero_point=False GEMM/GEMV checkpoints: WQLinear.from_linear asserts zeros is not None.
    zero_point = quant.get("zero_point", True)
    if zero_point is not True:
        raise CheckpointError(
            f"{field}.zero_point: {zero_point!r} is not supported; AutoAWQ's GEMM and GEMV packings need a zero point"
        )

    raw_version = quant.get("version", "gemm")
    try:
        version = normalize_version(str(raw_version))
    except InvalidArgument as error:
        raise CheckpointError(f"{field}.version: {error.reason}") from None
    if version == "GEMV" and group_size != -1:
        try:
            gemv_size_multiplier(group_size)
        except InvalidArgument as error:
            raise CheckpointError(f"{field}.group_size: {error.reason}") from None
    return QuantConfig(w_bit=4, group_size=group_size, zero_point=True, version=version)


def check_tokenizer_files(directory: Path) -> None:
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{' or '.join(TOKENIZER_FILES)}: no tokenizer file in {directory}")


def read_tensor_headers(directory: Path) -> dict[str, TensorInfo]:
    """Every tensor's shard, shape and dtype, from the safetensors headers of a single file or of every shard."""
    index_file = directory / INDEX_FILE
    if index_file.is_file():
        weight_map = read_json(index_file).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{INDEX_FILE}: weight_map: missing or empty")
        shard_names = list(dict.fromkeys(weight_map.values()))
    elif (directory / SINGLE_FILE).is_file():
        weight_map, shard_names = None, [SINGLE_FILE]
    else:
        raise CheckpointError(
            f"{SINGLE_FILE}: neither it nor {INDEX_FILE} is in {directory} (only safetensors checkpoints are supported)"
        )

    tensors: dict[str, TensorInfo] = {}
    for shard_name in shard_names:
        if not isinstance(shard_name, str) or Path(shard_name).name != shard_name:
            raise CheckpointError(f"{INDEX_FILE}: weight_map names shard {shard_name!r} outside the directory")
        shard = directory / shard_name
        if not shard.is_file():
            raise CheckpointError(f"{shard_name}: listed in {INDEX_FILE} but not found in {directory}")
        for name, info in read_shard_header(shard).items():
            if name in tensors:
                raise CheckpointError(f"{shard_name}: tensor {name} also appears in {tensors[name].shard.name}")
            tensors[name] = info

    for name, shard_name in (weight_map or {}).items():
        if name not in tensors or tensors[name].shard.name != shard_name:
            raise CheckpointError(f"{shard_name}: {INDEX_FILE} maps tensor {name} to it, but the shard lacks it")
    return tensors


def read_shard_header(shard: Path) -> dict[str, TensorInfo]:
    """safetensors rejects a header that does not cover the file exactly, so this also catches truncation."""
    try:
        with safe_open(shard, framework="pt") as handle:
            return {
                name: TensorInfo(
                    shard=shard,
                    shape=tuple(handle.get_slice(name).get_shape()),
                    dtype=handle.get_slice(name).get_dtype(),
                )
                for name in handle.keys()  # noqa: SIM118 (safe_open is not a mapping)
            }
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{shard.name}: corrupt or truncated safetensors file: {error}") from error
