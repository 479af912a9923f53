"""Synthetic AWQ checkpoints with the real shapes of well-known models, for tests and benchmarks without a
model hub.

The weights are random but plausible: uniform 4-bit values and zeros of 7 or 8, with per-group scales chosen so the
dequantized weights have the standard deviation of a trained model's (~0.02). The layout is exactly what
AutoAWQ 0.2.9's save_quantized writes: config.json with its quantization_config, sharded safetensors with
model.safetensors.index.json, plus the local tokenizer padded to the model's vocabulary.
"""

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import structlog
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, MistralConfig, PretrainedConfig

from awqd.errors import InvalidArgument
from awqd.models.tokenizer import train_tokenizer
from awqd.quant.packing import expected_shapes, normalize_version, pack
from awqd.quant.tensors import QuantizedWeight

GROUP_SIZE = 128
SHARD_BYTES = 2 * 1024**3
TOKENIZER_TRAINING_VOCAB = 4096  # what BPE learns from the shipped text; the rest of the vocabulary is padding
WEIGHT_STD = 0.02  # typical of trained 7B-class linear weights
Q_STD = math.sqrt((16**2 - 1) / 12)  # std of a uniform 4-bit value
SCALE_SPREAD = 0.25  # log-normal spread of the per-group scales

log = structlog.get_logger()


class LinearShape(NamedTuple):
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Architecture:
    model_type: str  # "llama" or "mistral"
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rope_theta: float
    max_position_embeddings: int
    rms_norm_eps: float
    sliding_window: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def linear_shapes(self) -> dict[str, LinearShape]:
        """The quantized linear layers of one decoder layer, by their name inside it."""
        hidden, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        return {
            "self_attn.q_proj": LinearShape(hidden, self.num_attention_heads * self.head_dim),
            "self_attn.k_proj": LinearShape(hidden, kv),
            "self_attn.v_proj": LinearShape(hidden, kv),
            "self_attn.o_proj": LinearShape(self.num_attention_heads * self.head_dim, hidden),
            "mlp.gate_proj": LinearShape(hidden, self.intermediate_size),
            "mlp.up_proj": LinearShape(hidden, self.intermediate_size),
            "mlp.down_proj": LinearShape(self.intermediate_size, hidden),
        }

    def hf_config(self, bos_token_id: int, eos_token_id: int) -> PretrainedConfig:
        config_class = MistralConfig if self.model_type == "mistral" else LlamaConfig
        extra = {"sliding_window": self.sliding_window} if self.model_type == "mistral" else {}
        return config_class(
            architectures=[config_class.__name__.replace("Config", "ForCausalLM")],
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            vocab_size=self.vocab_size,
            rope_theta=self.rope_theta,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=False,
            torch_dtype="float16",
            **extra,
        )


# The public configs of the real models (config.json on their model cards); "tiny" matches the demo model.
ARCHITECTURES: dict[str, Architecture] = {
    "tiny": Architecture("llama", 256, 512, 2, 4, 2, 2048, 10000.0, 512, 1e-6),
    "llama-2-7b": Architecture("llama", 4096, 11008, 32, 32, 32, 32000, 10000.0, 4096, 1e-5),
    "llama-3-8b": Architecture("llama", 4096, 14336, 32, 32, 8, 128256, 500000.0, 8192, 1e-5),
    "mistral-7b": Architecture("mistral", 4096, 14336, 32, 32, 8, 32000, 10000.0, 32768, 1e-5, sliding_window=4096),
}


class _Unit(NamedTuple):
    """One generated piece: a whole linear layer's tensors, or one fp16 tensor."""

    name: str
    kind: str  # "linear", "embedding" or "norm"
    shape: tuple[int, ...]  # (in_features, out_features) for a linear


def synthesize(arch: str, out_dir: Path, version: str = "GEMM", seed: int = 0, device: str | None = None) -> Path:
    """Write a random AWQ checkpoint of architecture `arch` (a key of ARCHITECTURES) to `out_dir`, which must
    not exist or be empty. Generates on CUDA when available."""
    if arch not in ARCHITECTURES:
        raise InvalidArgument("arch", f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    architecture = ARCHITECTURES[arch]
    version = normalize_version(version)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InvalidArgument("out_dir", f"{out_dir}: exists and is not empty")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.perf_counter()
    log.info("synth.start", arch=arch, version=version, out_dir=str(out_dir), device=str(device))

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(
        out_dir, min(TOKENIZER_TRAINING_VOCAB, architecture.vocab_size), extra_tokens_to=architecture.vocab_size
    )
    config = architecture.hf_config(tokenizer.bos_token_id, tokenizer.eos_token_id)
    # What AutoAWQ 0.2.9's save_quantized writes (AwqConfig.to_transformers_dict).
    config.quantization_config = {
        "quant_method": "awq",
        "bits": 4,
        "group_size": GROUP_SIZE,
        "zero_point": True,
        "version": version.lower(),
        "modules_to_not_convert": None,
    }
    config.save_pretrained(out_dir)

    shards = _shard(_units(architecture), version)
    generator = torch.Generator(device).manual_seed(seed)
    weight_map, total_size = {}, 0
    for index, shard in enumerate(shards, start=1):
        file_name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for unit in shard:
            for name, tensor in _generate(unit, version, generator, device).items():
                tensors[name] = tensor.cpu()
                weight_map[name] = file_name
                total_size += tensor.numel() * tensor.element_size()
        save_file(tensors, out_dir / file_name, metadata={"format": "pt"})
        log.info("synth.shard", file=file_name, tensors=len(tensors))
    index_file = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=2) + "\n")
    log.info("synth.done", arch=arch, seconds=round(time.perf_counter() - started, 1), bytes=total_size)
    return out_dir


def _units(architecture: Architecture) -> list[_Unit]:
    hidden = architecture.hidden_size
    units = [_Unit("model.embed_tokens.weight", "embedding", (architecture.vocab_size, hidden))]
    for layer in range(architecture.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        units.append(_Unit(f"{prefix}input_layernorm.weight", "norm", (hidden,)))
        units.append(_Unit(f"{prefix}post_attention_layernorm.weight", "norm", (hidden,)))
        units += [_Unit(prefix + name, "linear", shape) for name, shape in architecture.linear_shapes().items()]
    units.append(_Unit("model.norm.weight", "norm", (hidden,)))
    units.append(_Unit("lm_head.weight", "embedding", (architecture.vocab_size, hidden)))
    return units


def _unit_bytes(unit: _Unit, version: str) -> int:
    if unit.kind != "linear":
        return math.prod(unit.shape) * 2
    shapes = expected_shapes(version, GROUP_SIZE, *unit.shape)
    return sum(math.prod(shape) * (2 if name == "scales" else 4) for name, shape in shapes.items())


def _shard(units: list[_Unit], version: str) -> list[list[_Unit]]:
    shards: list[list[_Unit]] = [[]]
    size = 0
    for unit in units:
        unit_bytes = _unit_bytes(unit, version)
        if shards[-1] and size + unit_bytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(unit)
        size += unit_bytes
    return shards


def _generate(unit: _Unit, version: str, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    if unit.kind == "norm":
        return {unit.name: torch.ones(unit.shape, dtype=torch.float16, device=device)}
    if unit.kind == "embedding":
        weight = torch.randn(unit.shape, generator=generator, device=device) * WEIGHT_STD
        return {unit.name: weight.half()}
    in_features, out_features = unit.shape
    groups = in_features // GROUP_SIZE
    # q is uniform on 0..15 (mean 7.5), so zeros of 7 or 8 keep each group's mean weight near 0, as in a trained
    # model. An off-centre zero gives every weight the same sign of bias, which piles up over 32 layers into a
    # hidden state whose logits no longer depend on the input.
    zeros = torch.randint(7, 9, (out_features, groups), generator=generator, device=device, dtype=torch.uint8)
    spread = torch.randn((out_features, groups), generator=generator, device=device) * SCALE_SPREAD
    scales = (WEIGHT_STD / Q_STD * spread.exp()).half()
    # Only qzeros and scales depend on the packing; handing pack() a meta-device q skips the costly qweight
    # packing, and random int32 words are valid packed 4-bit values in every packing.
    q = torch.empty((out_features, in_features), dtype=torch.uint8, device="meta")
    tensors = pack(QuantizedWeight(q=q, zeros=zeros, scales=scales, group_size=GROUP_SIZE), version)
    word_bytes = torch.randint(
        0, 256, (in_features * out_features // 2,), generator=generator, device=device, dtype=torch.uint8
    )
    tensors["qweight"] = word_bytes.view(torch.int32).view(tensors["qweight"].shape)
    return {f"{unit.name}.{name}": tensor for name, tensor in tensors.items()}
