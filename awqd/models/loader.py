"""Load an AutoAWQ or compressed-tensors checkpoint into a transformers model whose quantized linears are AwqLinear.

The skeleton is built on the meta device, so no memory is spent before the real tensors arrive. Tensors then
stream shard by shard: plain tensors (embeddings, norms, lm_head) go straight to the device, and each quantized
layer is unpacked to the canonical QuantizedWeight and packed into the layouts of the kernels it may run as soon
as its last tensor is read. Peak memory is the model plus one layer, whatever the checkpoint's packing.

With `fuse=True` (what the serving engine loads) each decoder layer's q/k/v projections become one `qkv_proj`
and gate/up one `gate_up_proj` AwqLinear, concatenated in canonical form along out_features (exact: groups run
along in_features). The separate projections are removed, so the transformers skeleton then only holds the
weights for awqd.engine.model; its own forward no longer runs.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from awqd.errors import CheckpointError
from awqd.kernels.base import Candidate
from awqd.kernels.linear import AwqLinear, KernelRouter
from awqd.models import compressed_tensors
from awqd.models.checkpoint import CONFIG_FILE, Checkpoint, open_checkpoint
from awqd.models.token_span import prompt_bytes_cap
from awqd.quant.packing import expected_shapes, unpack
from awqd.quant.tensors import QuantConfig, QuantizedWeight, concat_out_features

QUANTIZED_PARTS = ("qweight", "qzeros", "scales")
# Fused projection -> the projections it stacks, in output order (Llama, Mistral and Qwen2 share these names).
FUSED_PROJECTIONS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
FUSED_INTO = {part: fused for fused, parts in FUSED_PROJECTIONS.items() for part in parts}


@dataclass
class LoadedModel:
    model: PreTrainedModel  # eval mode, AwqLinear in place of every quantized nn.Linear (fused: see the docstring)
    tokenizer: PreTrainedTokenizerBase
    config: PretrainedConfig
    architecture: str
    quant_config: QuantConfig
    weight_memory_bytes: int  # plain tensors plus every quantized layer's primary (first) layout
    extra_layout_memory_bytes: int  # the quantized layers' other layouts, held for kernel switching
    context_length: int
    device: torch.device
    layouts: tuple[str, ...]  # packed layouts every quantized layer holds; the first is the primary
    prompt_bytes_cap: int | None  # longer prompt text cannot fit the context: refused before it is tokenized
    fused: bool = False  # qkv_proj and gate_up_proj replace the separate projections


@dataclass(frozen=True)
class QuantizedLayer:
    name: str  # module path, e.g. "model.layers.0.self_attn.q_proj"
    in_features: int
    out_features: int
    group_size: int
    parts: tuple[str, ...]  # tensor names suffixes to read: qweight, qzeros, scales and bias if the layer has one


def default_dtype(device: torch.device) -> torch.dtype:
    """float16 on GPUs; float32 on CPU, where float16 matmul is slow."""
    return torch.float32 if device.type == "cpu" else torch.float16


def load_model(
    path: str | Path,
    device: torch.device,
    router: KernelRouter,
    extra_candidates: Sequence[Candidate] = (),
    dtype: torch.dtype | None = None,
    fuse: bool = False,
) -> LoadedModel:
    checkpoint = open_checkpoint(path)
    dtype = dtype or default_dtype(device)
    config = load_config(checkpoint)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    if type(model).__name__ != checkpoint.architecture:
        raise CheckpointError(
            f"{CONFIG_FILE}: architectures: {checkpoint.architecture} disagrees with model_type "
            f"{config.model_type!r}, which builds {type(model).__name__}"
        )

    quantized, plain = plan_tensors(model, checkpoint)
    stream_tensors(model, checkpoint, quantized, plain, device, dtype, router, extra_candidates, fuse)
    rebuild_rotary_embeddings(model, config, device)
    model.tie_weights()
    check_fully_loaded(model)
    model.eval()
    model.requires_grad_(False)

    plain_bytes, primary_bytes, extra_bytes, layouts = memory_use(model)
    tokenizer = load_tokenizer(checkpoint.path)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        architecture=checkpoint.architecture,
        quant_config=checkpoint.quant_config,
        weight_memory_bytes=plain_bytes + primary_bytes,
        extra_layout_memory_bytes=extra_bytes,
        context_length=config.max_position_embeddings,
        device=device,
        layouts=layouts,
        prompt_bytes_cap=prompt_bytes_cap(tokenizer, config.max_position_embeddings),
        fused=fuse,
    )


def load_config(checkpoint: Checkpoint) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(checkpoint.path, local_files_only=True)
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise CheckpointError(f"{CONFIG_FILE}: transformers cannot read it: {error}") from error


def plan_tensors(model: PreTrainedModel, checkpoint: Checkpoint) -> tuple[dict[str, QuantizedLayer], dict[str, str]]:
    """Which checkpoint tensor fills which part of the skeleton, checking every one exists with the right shape.

    Returns the quantized layers by their tensor-name prefix ("...q_proj.") and the plain tensors by name.
    """
    quant = checkpoint.quant_config
    quantized: dict[str, QuantizedLayer] = {}
    plain: dict[str, str] = {}
    seen_parameters: set[int] = set()  # tied parameters (lm_head = embed_tokens) are loaded once
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, torch.nn.Linear) and f"{prefix}{quantized_parts(quant)[0]}" in checkpoint.tensors:
            group_size = module.in_features if quant.group_size == -1 else quant.group_size
            if module.in_features % group_size != 0:
                raise CheckpointError(
                    f"{CONFIG_FILE}: quantization_config.group_size: {group_size} does not divide in_features "
                    f"{module.in_features} of {module_name}"
                )
            layer = QuantizedLayer(
                name=module_name,
                in_features=module.in_features,
                out_features=module.out_features,
                group_size=group_size,
                parts=quantized_parts(quant) + (("bias",) if module.bias is not None else ()),
            )
            shapes = layer_shapes(quant, group_size, module.in_features, module.out_features)
            shapes["bias"] = (module.out_features,)
            for part in layer.parts:
                check_tensor(checkpoint, f"{prefix}{part}", shapes[part])
            quantized[prefix] = layer
            continue
        tensors = [(name, p) for name, p in module.named_parameters(recurse=False) if id(p) not in seen_parameters]
        persistent = [name for name in module._buffers if name not in module._non_persistent_buffers_set]
        tensors += [(name, b) for name, b in module.named_buffers(recurse=False) if name in persistent]
        for name, tensor in tensors:
            seen_parameters.add(id(tensor))
            check_tensor(checkpoint, f"{prefix}{name}", tuple(tensor.shape))
            plain[f"{prefix}{name}"] = module_name
    return quantized, plain


def quantized_parts(quant: QuantConfig) -> tuple[str, ...]:
    if quant.version == compressed_tensors.VERSION:
        return compressed_tensors.layer_parts(quant)
    return QUANTIZED_PARTS


def layer_shapes(quant: QuantConfig, group_size: int, in_features: int, out_features: int) -> dict[str, tuple]:
    if quant.version == compressed_tensors.VERSION:
        return compressed_tensors.expected_shapes(group_size, in_features, out_features)
    return expected_shapes(quant.version, group_size, in_features, out_features)


def check_tensor(checkpoint: Checkpoint, name: str, shape: tuple[int, ...]) -> None:
    info = checkpoint.tensors.get(name)
    if info is None:
        files = ", ".join(shard.name for shard in checkpoint.shards)
        raise CheckpointError(f"{files}: tensor {name} is missing")
    if info.shape != shape:
        raise CheckpointError(
            f"{info.shard.name}: tensor {name} has shape {list(info.shape)}, the model needs {list(shape)}"
        )


def stream_tensors(
    model: PreTrainedModel,
    checkpoint: Checkpoint,
    quantized: dict[str, QuantizedLayer],
    plain: dict[str, str],
    device: torch.device,
    dtype: torch.dtype,
    router: KernelRouter,
    extra_candidates: Sequence[Candidate],
    fuse: bool = False,
) -> None:
    # A layer's tensors may straddle two shards, so its parts wait here until the last one is read.
    pending: dict[str, dict[str, torch.Tensor]] = {}
    # With fuse, a projection's unpacked weight waits here until the others of its fused group are read.
    unfused: dict[str, dict[str, QuantizedWeight]] = {}
    for shard in checkpoint.shards:
        with safe_open(shard, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name in plain:
                    tensor = handle.get_tensor(name)
                    if tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    set_tensor(model, plain[name], name.rsplit(".", 1)[1], tensor.to(device))
                    continue
                prefix, _, part = name.rpartition(".")
                layer = quantized.get(f"{prefix}.")
                if layer is None or part not in layer.parts:
                    continue  # not part of this model (e.g. an unused buffer some exporters save)
                parts = pending.setdefault(layer.name, {})
                parts[part] = handle.get_tensor(name).to(device)
                if len(parts) != len(layer.parts):
                    continue
                weight = unpack_layer(layer, pending.pop(layer.name), checkpoint)
                parent_name, _, child_name = layer.name.rpartition(".")
                if not fuse or child_name not in FUSED_INTO:
                    install(model, layer.name, AwqLinear(weight, router, device, extra_candidates))
                    continue
                fused_name = f"{parent_name}.{FUSED_INTO[child_name]}"
                group = unfused.setdefault(fused_name, {})
                group[child_name] = weight
                parts_in_order = FUSED_PROJECTIONS[FUSED_INTO[child_name]]
                if len(group) == len(parts_in_order):
                    del unfused[fused_name]
                    fused_weight = concat_out_features([group[part] for part in parts_in_order])
                    install(model, fused_name, AwqLinear(fused_weight, router, device, extra_candidates))
                    for part in parts_in_order:
                        delattr(model.get_submodule(parent_name), part)
    if unfused:
        raise CheckpointError(f"projections to fuse are incomplete: {', '.join(sorted(unfused))}")


def unpack_layer(layer: QuantizedLayer, tensors: dict[str, torch.Tensor], checkpoint: Checkpoint) -> QuantizedWeight:
    if checkpoint.quant_config.version == compressed_tensors.VERSION:
        return compressed_tensors.unpack(
            tensors, layer.group_size, layer.in_features, layer.out_features, prefix=f"{layer.name}."
        )
    return unpack(
        tensors,
        checkpoint.quant_config.version,
        layer.group_size,
        layer.in_features,
        layer.out_features,
        prefix=f"{layer.name}.",
    )


def install(model: PreTrainedModel, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, module)


def set_tensor(model: PreTrainedModel, module_name: str, name: str, tensor: torch.Tensor) -> None:
    module = model.get_submodule(module_name)
    if name in module._parameters:
        module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[name] = tensor


def rebuild_rotary_embeddings(model: PreTrainedModel, config: PretrainedConfig, device: torch.device) -> None:
    """transformers computes inv_freq at construction and never stores it, so the meta skeleton has none."""
    for name, module in list(model.named_modules()):
        if hasattr(module, "rope_init_fn"):
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child_name, type(module)(config=config, device=device))


def check_fully_loaded(model: PreTrainedModel) -> None:
    unloaded = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if unloaded:
        raise CheckpointError(f"tensors the checkpoint did not fill: {', '.join(unloaded)}")


def memory_use(model: PreTrainedModel) -> tuple[int, int, int, tuple[str, ...]]:
    """(plain tensor bytes, primary layout bytes, other layout bytes, layouts held by every quantized layer)."""
    plain = {id(t): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}
    primary_bytes = extra_bytes = 0
    layouts: tuple[str, ...] | None = None
    for module in model.modules():
        if isinstance(module, AwqLinear):
            sizes = list(module.layout_bytes().values())
            primary_bytes += sizes[0]
            extra_bytes += sum(sizes[1:])
            layouts = tuple(module.layouts) if layouts is None else layouts
    return sum(plain.values()), primary_bytes, extra_bytes, layouts or ()


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise CheckpointError(f"tokenizer: cannot be loaded from {path}: {error}") from error
