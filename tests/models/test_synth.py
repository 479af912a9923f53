"""Synthetic AWQ checkpoints: real architecture shapes, AutoAWQ's file layout, plausible weights, loadable."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from awqd.errors import InvalidArgument
from awqd.kernels.base import Dispatch
from awqd.kernels.candidates.reference_torch import ReferenceTorch
from awqd.kernels.linear import KernelRouter
from awqd.models import synth
from awqd.models.loader import load_model
from awqd.models.synth import ARCHITECTURES, GROUP_SIZE, synthesize
from awqd.quant.packing import expected_shapes, unpack
from awqd.quant.reference import dequantize

TINY = ARCHITECTURES["tiny"]


@pytest.fixture(scope="module", params=["GEMM", "GEMV"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    version = request.param
    return synthesize("tiny", tmp_path_factory.mktemp("synth") / version, version, seed=1), version


def read_all(directory: Path) -> dict[str, torch.Tensor]:
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    tensors = {}
    for file_name in sorted(set(index["weight_map"].values())):
        with safe_open(directory / file_name, "pt") as shard:
            assert shard.metadata() == {"format": "pt"}
            for name in shard.keys():  # noqa: SIM118  (safe_open is not a mapping)
                assert index["weight_map"][name] == file_name, name
                tensors[name] = shard.get_tensor(name)
    assert set(tensors) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    return tensors


def test_config_matches_the_architecture(tiny: tuple[Path, str]) -> None:
    directory, version = tiny
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        assert config[field] == getattr(TINY, field), field
    assert config["num_key_value_heads"] == TINY.num_key_value_heads
    assert config["rope_theta"] == TINY.rope_theta
    assert config["max_position_embeddings"] == TINY.max_position_embeddings
    assert config["torch_dtype"] == "float16" and config["tie_word_embeddings"] is False
    assert config["quantization_config"] == {
        "quant_method": "awq",
        "bits": 4,
        "group_size": 128,
        "zero_point": True,
        "version": version.lower(),
        "modules_to_not_convert": None,
    }
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert len(tokenizer) == TINY.vocab_size
    assert (config["bos_token_id"], config["eos_token_id"]) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert tokenizer.decode(list(range(TINY.vocab_size)))  # every id a model can emit decodes


def test_tensors_have_autoawq_shapes_and_plausible_values(tiny: tuple[Path, str]) -> None:
    directory, version = tiny
    tensors = read_all(directory)
    hidden = TINY.hidden_size
    assert tensors["model.embed_tokens.weight"].shape == (TINY.vocab_size, hidden)
    assert tensors["lm_head.weight"].shape == (TINY.vocab_size, hidden)
    assert tensors["model.norm.weight"].shape == (hidden,)
    expected_names = {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"}
    for layer in range(TINY.num_hidden_layers):
        expected_names |= {f"model.layers.{layer}.{n}.weight" for n in ("input_layernorm", "post_attention_layernorm")}
        for name, (in_features, out_features) in TINY.linear_shapes().items():
            prefix = f"model.layers.{layer}.{name}."
            parts = {part: tensors[prefix + part] for part in ("qweight", "qzeros", "scales")}
            expected_names |= {prefix + part for part in parts}
            for part, shape in expected_shapes(version, GROUP_SIZE, in_features, out_features).items():
                assert parts[part].shape == shape, prefix + part
            assert parts["qweight"].dtype == parts["qzeros"].dtype == torch.int32
            assert parts["scales"].dtype == torch.float16
            weight = unpack(parts, version, GROUP_SIZE, in_features, out_features)
            assert weight.zeros.min() >= 6 and weight.zeros.max() <= 10, prefix
            assert weight.q.unique().numel() == 16, prefix
            std = dequantize(weight, torch.float32).std().item()
            assert 0.015 < std < 0.03, (prefix, std)
    assert set(tensors) == expected_names
    assert all(t.dtype == torch.float16 for name, t in tensors.items() if name.endswith(".weight"))


def test_loads_with_the_loader(tiny: tuple[Path, str]) -> None:
    directory, version = tiny
    loaded = load_model(directory, torch.device("cpu"), KernelRouter(Dispatch.single(ReferenceTorch())))
    assert loaded.quant_config.version == version and loaded.quant_config.group_size == GROUP_SIZE
    input_ids = loaded.tokenizer("Rain falls on the garden.", return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = loaded.model(input_ids).logits
    assert logits.shape == (1, input_ids.shape[1], TINY.vocab_size)
    assert torch.isfinite(logits).all()


def test_large_models_are_sharded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synth, "SHARD_BYTES", 600_000)
    directory = synthesize("tiny", tmp_path / "sharded", "GEMV", seed=1)
    shards = sorted(directory.glob("model-*.safetensors"))
    count = len(shards)
    assert count > 2
    assert [shard.name for shard in shards] == [
        f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)
    ]
    # The embedding (1 MiB) exceeds the limit alone; other shards stay within it.
    assert all(shard.stat().st_size < 700_000 for shard in shards[1:-1])
    tensors = read_all(directory)
    # The same seed gives the same weights however they are sharded.
    unsharded = read_all(synthesize("tiny", tmp_path / "unsharded", "GEMV", seed=1))
    assert all(torch.equal(tensors[name], unsharded[name]) for name in unsharded)
    loaded = load_model(directory, torch.device("cpu"), KernelRouter(Dispatch.single(ReferenceTorch())))
    assert loaded.quant_config.version == "GEMV"


def test_seed_changes_the_weights(tiny: tuple[Path, str], tmp_path: Path) -> None:
    directory, version = tiny
    other = read_all(synthesize("tiny", tmp_path / "other", version, seed=2))
    name = "model.layers.0.mlp.up_proj.qweight"
    assert not torch.equal(read_all(directory)[name], other[name])


@pytest.mark.parametrize(
    ("arch", "parameters"),
    # Parameter counts of the released fp16 models; any wrong shape in the table changes them.
    [("llama-2-7b", 6_738_415_616), ("llama-3-8b", 8_030_261_248), ("mistral-7b", 7_241_732_096)],
)
def test_architecture_table_matches_the_real_models(arch: str, parameters: int) -> None:
    architecture = ARCHITECTURES[arch]
    linears = sum(shape.in_features * shape.out_features for shape in architecture.linear_shapes().values())
    per_layer = linears + 2 * architecture.hidden_size
    embeddings = 2 * architecture.vocab_size * architecture.hidden_size
    assert architecture.num_hidden_layers * per_layer + embeddings + architecture.hidden_size == parameters
    assert architecture.head_dim == 128
    assert all(math.gcd(shape.in_features, GROUP_SIZE) == GROUP_SIZE for shape in architecture.linear_shapes().values())


def test_bad_requests_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="unknown architecture 'gpt-5'") as raised:
        synthesize("gpt-5", tmp_path / "a")
    assert raised.value.field == "arch"
    with pytest.raises(InvalidArgument) as raised:
        synthesize("tiny", tmp_path / "b", version="exllama")
    assert raised.value.field == "version"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "config.json").write_text("{}")
    with pytest.raises(InvalidArgument, match="exists and is not empty"):
        synthesize("tiny", tmp_path / "busy")
