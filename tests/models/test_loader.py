"""Loading tiny AutoAWQ-format checkpoints written here: GEMM and GEMV give the same model, equal to a plain
transformers model holding the dequantized weights; every broken checkpoint fails with a CheckpointError."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PreTrainedTokenizerFast, Qwen2Config

from awqd.engine.kv_cache import allocate, plan_kv_cache
from awqd.engine.model import DecoderModel
from awqd.errors import CheckpointError, FailedPrecondition
from awqd.kernels.base import Candidate, Dispatch
from awqd.kernels.candidates.reference_torch import ReferenceTorch
from awqd.kernels.linear import AwqLinear, KernelRouter
from awqd.models.loader import LoadedModel, load_model
from awqd.quant.packing import pack, unpack
from awqd.quant.reference import reference_linear
from awqd.quant.tensors import QuantizedWeight

CPU = torch.device("cpu")
SENTENCES = ["the quick brown fox jumps over the lazy dog", "a small model reads a few words", "awq packs four bits"]
TINY = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
ARCHITECTURES = {  # architecture -> (config, group size)
    "LlamaForCausalLM": (LlamaConfig(**TINY), 32),
    "MistralForCausalLM": (MistralConfig(**TINY), 64),
    "Qwen2ForCausalLM": (Qwen2Config(**TINY, tie_word_embeddings=True), 128),
}


class GemmLayoutReference(Candidate):
    """A real second layout: keeps AutoAWQ's GEMM tensors and unpacks them at every call (slow, exact)."""

    name = "gemm_layout_reference"
    family = "reference"
    layout = "autoawq_gemm"

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> tuple[dict[str, torch.Tensor], int, int, int]:
        tensors = {name: tensor.to(device) for name, tensor in pack(weight, "GEMM").items()}
        return tensors, weight.group_size, weight.in_features, weight.out_features

    def forward(self, x: torch.Tensor, packed: tuple[dict[str, torch.Tensor], int, int, int]) -> torch.Tensor:
        tensors, group_size, in_features, out_features = packed
        return reference_linear(x, unpack(tensors, "GEMM", group_size, in_features, out_features))


def write_tokenizer(directory: Path) -> int:
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    wrapped.save_pretrained(directory)
    return tokenizer.get_vocab_size()


def random_quantized(linear: torch.nn.Linear, group_size: int, generator: torch.Generator) -> QuantizedWeight:
    out_features, in_features = linear.out_features, linear.in_features
    groups = in_features // group_size
    return QuantizedWeight(
        q=torch.randint(0, 16, (out_features, in_features), dtype=torch.uint8, generator=generator),
        zeros=torch.randint(0, 16, (out_features, groups), dtype=torch.uint8, generator=generator),
        scales=(torch.rand((out_features, groups), generator=generator) * 0.02 + 0.005).to(torch.float16),
        group_size=group_size,
        bias=None if linear.bias is None else (torch.randn(out_features, generator=generator) * 0.1).half(),
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Per architecture: the GEMM and GEMV checkpoint directories and the float32 model they both encode."""
    written = {}
    for architecture, (config, group_size) in ARCHITECTURES.items():
        root = tmp_path_factory.mktemp(architecture)
        config.vocab_size = write_tokenizer(root / "tokenizer")
        config.architectures = [architecture]
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
        generator = torch.Generator().manual_seed(1)
        weights = {
            name: random_quantized(module, group_size, generator)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name != "lm_head"
        }
        # AutoAWQ stores everything unquantized in fp16; the expected model holds exactly those values.
        with torch.no_grad():
            for tensor in model.parameters():
                tensor.copy_(tensor.half().float())
            for name, weight in weights.items():
                linear = model.get_submodule(name)
                linear.weight.copy_(reference_dequantized(weight))
                if weight.bias is not None:
                    linear.bias.copy_(weight.bias.float())
        plain = {
            name: tensor.half()
            for name, tensor in model.state_dict().items()
            if name.rpartition(".")[0] not in weights and not (config.tie_word_embeddings and name == "lm_head.weight")
        }
        directories = {}
        for version in ("GEMM", "GEMV"):
            directory = root / version
            shutil.copytree(root / "tokenizer", directory)
            tensors = dict(plain)
            for name, weight in weights.items():
                tensors.update({f"{name}.{part}": t for part, t in pack(weight, version).items()})
            write_checkpoint(directory, config, group_size, version, tensors, sharded=version == "GEMV")
            directories[version] = directory
        written[architecture] = {"directories": directories, "expected": model, "weights": weights}
    return written


def reference_dequantized(weight: QuantizedWeight) -> torch.Tensor:
    zeros = weight.zeros.float().repeat_interleave(weight.group_size, dim=1)
    return (weight.q.float() - zeros) * weight.scales.float().repeat_interleave(weight.group_size, dim=1)


def write_checkpoint(
    directory: Path, config, group_size: int, version: str, tensors: dict[str, torch.Tensor], sharded: bool
) -> None:
    """The files AutoAWQ's save_quantized writes: config.json with quantization_config, then safetensors."""
    config_dict = config.to_dict()
    config_dict["quantization_config"] = {
        "quant_method": "awq",
        "zero_point": True,
        "group_size": group_size,
        "bits": 4,
        "version": version.lower(),
        "modules_to_not_convert": None,
    }
    (directory / "config.json").write_text(json.dumps(config_dict, indent=2))
    if not sharded:
        save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
        return
    names = sorted(tensors)
    # Split inside a layer, so its qweight and its qzeros/scales land in different shards.
    split = names.index("model.layers.0.self_attn.k_proj.qweight") + 1
    halves = {"model-00001-of-00002.safetensors": names[:split], "model-00002-of-00002.safetensors": names[split:]}
    for shard, shard_names in halves.items():
        save_file({name: tensors[name] for name in shard_names}, directory / shard, metadata={"format": "pt"})
    weight_map = {name: shard for shard, shard_names in halves.items() for name in shard_names}
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


def reference_router() -> KernelRouter:
    return KernelRouter(Dispatch.single(ReferenceTorch()))


def logits(loaded: LoadedModel | torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    model = loaded.model if isinstance(loaded, LoadedModel) else loaded
    with torch.inference_mode():
        return model(input_ids).logits


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_gemm_and_gemv_load_the_same_model(checkpoints: dict, architecture: str) -> None:
    written = checkpoints[architecture]
    gemm = load_model(written["directories"]["GEMM"], CPU, reference_router())
    gemv = load_model(written["directories"]["GEMV"], CPU, reference_router())
    input_ids = gemm.tokenizer(SENTENCES[0], return_tensors="pt").input_ids

    assert gemm.architecture == architecture and type(gemm.model).__name__ == architecture
    assert (gemm.quant_config.version, gemv.quant_config.version) == ("GEMM", "GEMV")
    assert gemm.context_length == 256 and gemm.model.dtype == torch.float32 and not gemm.model.training
    quantized = [m for m in gemm.model.modules() if isinstance(m, AwqLinear)]
    assert len(quantized) == len(written["weights"]) == 14
    assert not any(isinstance(m, torch.nn.Linear) for m in gemm.model.model.layers.modules())
    assert gemm.weight_memory_bytes == gemv.weight_memory_bytes > 0
    assert gemm.extra_layout_memory_bytes == 0 and gemm.layouts == ("canonical",)

    gemm_logits, gemv_logits = logits(gemm, input_ids), logits(gemv, input_ids)
    assert torch.equal(gemm_logits, gemv_logits)
    expected = logits(written["expected"], input_ids)
    torch.testing.assert_close(gemm_logits, expected, rtol=1e-4, atol=1e-4)


def test_qwen2_biases_and_tied_head_are_loaded(checkpoints: dict) -> None:
    written = checkpoints["Qwen2ForCausalLM"]
    loaded = load_model(written["directories"]["GEMM"], CPU, reference_router())
    q_proj = loaded.model.model.layers[1].self_attn.q_proj
    expected_bias = written["weights"]["model.layers.1.self_attn.q_proj"].bias
    assert torch.equal(q_proj.layouts["canonical"].bias, expected_bias)
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight


def test_extra_layouts_are_held_and_switchable(checkpoints: dict) -> None:
    directory = checkpoints["LlamaForCausalLM"]["directories"]["GEMV"]
    router = reference_router()
    gemm_layout = GemmLayoutReference()
    loaded = load_model(directory, CPU, router, extra_candidates=[gemm_layout])
    input_ids = loaded.tokenizer(SENTENCES[1], return_tensors="pt").input_ids

    assert loaded.layouts == ("canonical", "autoawq_gemm")
    assert loaded.extra_layout_memory_bytes > 0
    by_reference = logits(loaded, input_ids)
    router.pin(gemm_layout)
    by_gemm_layout = logits(loaded, input_ids)
    router.unpin()
    assert torch.equal(by_reference, by_gemm_layout)


def test_kernel_without_its_layout_is_refused(checkpoints: dict) -> None:
    directory = checkpoints["LlamaForCausalLM"]["directories"]["GEMM"]
    router = reference_router()
    loaded = load_model(directory, CPU, router)
    router.pin(GemmLayoutReference())
    with pytest.raises(FailedPrecondition, match=r"autoawq_gemm.*\['canonical'\]"):
        logits(loaded, torch.tensor([[1, 2, 3]]))


def test_primary_layout_only_drops_canonical(checkpoints: dict) -> None:
    directory = checkpoints["LlamaForCausalLM"]["directories"]["GEMM"]
    loaded = load_model(directory, CPU, KernelRouter(Dispatch.single(GemmLayoutReference())))
    assert loaded.layouts == ("autoawq_gemm",) and loaded.extra_layout_memory_bytes == 0
    layer = loaded.model.model.layers[0].mlp.down_proj
    # qweight 256x128 4-bit + qzeros and fp16 scales for 256/32 = 8 groups.
    assert layer.layout_bytes() == {"autoawq_gemm": 256 * 128 // 2 + 8 * 128 // 2 + 8 * 128 * 2}


def edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    for key, value in changes.items():
        if key in config.get("quantization_config", {}) or key in ("bits", "version", "zero_point", "group_size"):
            config["quantization_config"][key] = value
        else:
            config[key] = value
    (directory / "config.json").write_text(json.dumps(config))


def drop_tensor(directory: Path, name: str) -> None:
    tensors = load_file(directory / "model.safetensors")
    del tensors[name]
    save_file(tensors, directory / "model.safetensors")


BAD_CHECKPOINTS = {
    "config missing": (lambda d: (d / "config.json").unlink(), r"config\.json: not found"),
    "config corrupt": (lambda d: (d / "config.json").write_text("{not json"), r"config\.json: not valid JSON"),
    "architecture unsupported": (
        lambda d: edit_config(d, architectures=["GPT2LMHeadModel"]),
        r"config\.json: architectures: 'GPT2LMHeadModel' is not supported",
    ),
    "not quantized": (
        lambda d: edit_config(d, quantization_config=None),
        r"config\.json: quantization_config: missing",
    ),
    "8-bit": (lambda d: edit_config(d, bits=8), r"quantization_config\.bits: 8 is not supported"),
    "gemv_fast": (lambda d: edit_config(d, version="gemv_fast"), r"quantization_config\.version: .*'gemv_fast'"),
    "no zero point": (lambda d: edit_config(d, zero_point=False), r"quantization_config\.zero_point: False"),
    "group does not divide": (
        lambda d: edit_config(d, group_size=48),
        r"quantization_config\.group_size: 48 does not divide in_features 128 of model\.layers\.0\.self_attn\.q_proj",
    ),
    "safetensors missing": (
        lambda d: (d / "model.safetensors").unlink(),
        r"model\.safetensors: neither it nor model\.safetensors\.index\.json",
    ),
    "safetensors truncated": (
        lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]),
        r"model\.safetensors: corrupt or truncated",
    ),
    "safetensors garbage": (
        lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64),
        r"model\.safetensors: corrupt or truncated",
    ),
    "tensor missing": (
        lambda d: drop_tensor(d, "model.layers.1.mlp.up_proj.qzeros"),
        r"model\.safetensors: tensor model\.layers\.1\.mlp\.up_proj\.qzeros is missing",
    ),
    "norm missing": (
        lambda d: drop_tensor(d, "model.norm.weight"),
        r"model\.safetensors: tensor model\.norm\.weight is missing",
    ),
    "tokenizer missing": (
        lambda d: (d / "tokenizer.json").unlink(),
        r"tokenizer\.json or tokenizer\.model: no tokenizer file",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_rejected(checkpoints: dict, tmp_path: Path, case: str) -> None:
    directory = shutil.copytree(checkpoints["LlamaForCausalLM"]["directories"]["GEMM"], tmp_path / "checkpoint")
    break_it, message = BAD_CHECKPOINTS[case]
    break_it(directory)
    with pytest.raises(CheckpointError, match=message):
        load_model(directory, CPU, reference_router())


def test_gemv_group_size_must_suit_the_kernel(checkpoints: dict, tmp_path: Path) -> None:
    directory = shutil.copytree(checkpoints["LlamaForCausalLM"]["directories"]["GEMV"], tmp_path / "checkpoint")
    edit_config(directory, group_size=16)
    with pytest.raises(CheckpointError, match=r"quantization_config\.group_size: GEMV packing supports"):
        load_model(directory, CPU, reference_router())


def test_sharded_checkpoint_problems_name_the_shard(checkpoints: dict, tmp_path: Path) -> None:
    source = checkpoints["MistralForCausalLM"]["directories"]["GEMV"]
    missing = shutil.copytree(source, tmp_path / "missing")
    (missing / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors: listed in .* but not found"):
        load_model(missing, CPU, reference_router())

    truncated = shutil.copytree(source, tmp_path / "truncated")
    shard = truncated / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match=r"model-00001-of-00002\.safetensors: corrupt or truncated"):
        load_model(truncated, CPU, reference_router())

    wrong_shape = shutil.copytree(source, tmp_path / "wrong_shape")
    index = json.loads((wrong_shape / "model.safetensors.index.json").read_text())
    shard_name = index["weight_map"]["model.layers.0.mlp.gate_proj.scales"]
    tensors = load_file(wrong_shape / shard_name)
    tensors["model.layers.0.mlp.gate_proj.scales"] = tensors["model.layers.0.mlp.gate_proj.scales"][:, :8].contiguous()
    save_file(tensors, wrong_shape / shard_name)
    with pytest.raises(
        CheckpointError, match=rf"{shard_name}: tensor model\.layers\.0\.mlp\.gate_proj\.scales has shape"
    ):
        load_model(wrong_shape, CPU, reference_router())


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_fused_load_runs_the_engine_decoder_to_the_same_logits(checkpoints: dict, architecture: str) -> None:
    directory = checkpoints[architecture]["directories"]["GEMV"]
    fused = load_model(directory, CPU, reference_router(), fuse=True)
    layer = fused.model.model.layers[0]
    assert fused.fused and not hasattr(layer.self_attn, "q_proj") and not hasattr(layer.mlp, "gate_proj")
    assert len([m for m in fused.model.modules() if isinstance(m, AwqLinear)]) == 8  # 4 per layer instead of 7
    assert layer.self_attn.qkv_proj.has_bias == (architecture == "Qwen2ForCausalLM")
    model = DecoderModel(fused)
    shape = model.shape
    cache = allocate(
        plan_kv_cache(shape.kv_bytes_per_token(model.dtype), 256, CPU, 0.9, 512),
        shape.num_layers, shape.num_kv_heads, shape.head_dim, model.dtype, CPU,
    )  # fmt: skip
    input_ids = fused.tokenizer(SENTENCES[0], return_tensors="pt").input_ids[0]
    expected = logits(load_model(directory, CPU, reference_router()), input_ids[None])[0]
    prompt = len(input_ids) - 3
    with torch.inference_mode():
        tables = torch.arange(1, cache.plan.max_blocks_per_seq + 1, dtype=torch.int32)[None]  # one sequence
        ours = [model.prefill([input_ids[:prompt]], tables, cache)[0]]
        for position in range(prompt, len(input_ids)):
            positions = torch.tensor([position])
            ours.append(model.decode(input_ids[position : position + 1], positions, tables, cache)[0])
    torch.testing.assert_close(torch.stack(ours), expected[prompt - 1 :], rtol=1e-4, atol=1e-4)
