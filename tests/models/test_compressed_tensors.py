"""compressed-tensors `pack-quantized` W4A16 checkpoints, written here by the compressed-tensors library itself (the
format llm-compressor saves): awqd's unpacking equals the library's decompression bit for bit, the loaded model
gives the logits of the decompressed weights, and unsupported variants fail naming the field."""

import importlib
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_loader import SENTENCES, TINY, logits, reference_router, write_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from awqd.errors import CheckpointError
from awqd.kernels.linear import AwqLinear
from awqd.models.loader import load_model
from awqd.quant.reference import dequantize
from awqd_client import AwqdClient
from awqd_client.v1 import awqd_pb2 as pb

from daemon_process import serving

CPU = torch.device("cpu")


def import_compressed_tensors() -> types.ModuleType:
    """compressed-tensors 0.20 imports transformers.masking_utils (transformers >= 4.53) for its attention hooks,
    which this test never uses; with transformers 4.51 an empty registry stands in for it. It needs Python >= 3.11."""
    if importlib.util.find_spec("compressed_tensors") is None:
        pytest.skip(
            "compressed-tensors is not installed (pip install -e '.[dev]' on Python >= 3.11)", allow_module_level=True
        )
    try:
        importlib.import_module("transformers.masking_utils")
    except ModuleNotFoundError:
        shim = types.ModuleType("transformers.masking_utils")
        shim.ALL_MASK_ATTENTION_FUNCTIONS = {}
        sys.modules["transformers.masking_utils"] = shim
    return importlib.import_module("compressed_tensors")


import_compressed_tensors()
from compressed_tensors.compressors import ModelCompressor  # noqa: E402
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor  # noqa: E402
from compressed_tensors.quantization import (  # noqa: E402
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
    apply_quantization_config,
)
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402

SCHEMES = {  # name -> (strategy, group size, symmetric)
    "group_symmetric": ("group", 32, True),
    "group_asymmetric": ("group", 64, False),
    "channel_symmetric": ("channel", None, True),
    "channel_asymmetric": ("channel", None, False),
}


def scheme(strategy: str, group_size: int | None, symmetric: bool) -> QuantizationScheme:
    weights = QuantizationArgs(num_bits=4, type="int", strategy=strategy, group_size=group_size, symmetric=symmetric)
    return QuantizationScheme(targets=["Linear"], weights=weights)


def write_checkpoint(directory: Path, quantization: QuantizationScheme, seed: int) -> None:
    """Round-to-nearest with the library's own qparams, compressed and saved as llm-compressor does."""
    torch.manual_seed(seed)
    vocab_size = write_tokenizer(directory)
    config = LlamaConfig(**TINY, vocab_size=vocab_size, bos_token_id=1, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": quantization}, ignore=["lm_head"]))
    for module in model.modules():
        if hasattr(module, "weight_scale"):
            args = module.quantization_scheme.weights
            weight = module.weight.data
            group_size = args.group_size if args.strategy == "group" else weight.shape[1]
            grouped = weight.reshape(weight.shape[0], -1, group_size)
            scale, zero_point = calculate_qparams(grouped.amin(-1), grouped.amax(-1), args)
            module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
            module.weight_zero_point.data.copy_(zero_point.reshape(module.weight_zero_point.shape))
    compressor = ModelCompressor.from_pretrained_model(model, "pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(directory)
    compressor.update_config(directory)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    written = {}
    for seed, (name, args) in enumerate(SCHEMES.items()):
        directory = tmp_path_factory.mktemp(name)
        write_checkpoint(directory, scheme(*args), seed)
        written[name] = directory
    return written


def layer_tensors(directory: Path) -> dict[str, dict[str, torch.Tensor]]:
    layers: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(directory / "model.safetensors", framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
            prefix, _, part = name.rpartition(".")
            if part.startswith("weight_"):
                layers.setdefault(prefix, {})[part] = handle.get_tensor(name)
    return layers


def decompress(tensors: dict[str, torch.Tensor], quantization: QuantizationScheme, dtype: torch.dtype) -> torch.Tensor:
    """The library's dequantized weight in `dtype`: it computes (q - z) * s in the scale's dtype, so float32 scales
    give the exact products, and the checkpoint's bfloat16 ones the products rounded to bfloat16."""
    tensors = {**tensors, "weight_scale": tensors["weight_scale"].to(dtype)}
    return PackedQuantizationCompressor.decompress(tensors, quantization)["weight"]


def decompressed_model(directory: Path, quantization: QuantizationScheme) -> torch.nn.Module:
    """A plain float32 transformers model holding the checkpoint's float tensors and the library's decompressed
    weights (built from the config alone, so transformers' own compressed-tensors support plays no part)."""
    config = LlamaConfig.from_pretrained(directory)
    del config.quantization_config
    reference = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    state = load_file(directory / "model.safetensors")
    for prefix, tensors in layer_tensors(directory).items():
        state[f"{prefix}.weight"] = decompress(tensors, quantization, torch.float32)
    floats = {
        name: tensor.float() for name, tensor in state.items() if not name.rpartition(".")[2].startswith("weight_")
    }
    reference.load_state_dict(floats, strict=True)
    return reference.eval()


@pytest.mark.parametrize("name", list(SCHEMES))
def test_unpacking_equals_the_library_decompression_bit_for_bit(checkpoints: dict, name: str) -> None:
    strategy, group_size, symmetric = SCHEMES[name]
    quantization = scheme(strategy, group_size, symmetric)
    loaded = load_model(checkpoints[name], CPU, reference_router())
    assert loaded.quant_config.version == "PACK_QUANTIZED"
    assert loaded.quant_config.zero_point == (not symmetric)
    layers = layer_tensors(checkpoints[name])
    assert len(layers) == 14 and "lm_head" not in layers
    for prefix, tensors in layers.items():
        weight = loaded.model.get_submodule(prefix).layouts["canonical"]
        assert weight.group_size == (group_size or weight.in_features)
        if symmetric:
            assert torch.all(weight.zeros == 8)
        for dtype in (torch.bfloat16, torch.float32):
            expected = decompress(tensors, quantization, dtype)
            assert expected.dtype == dtype
            assert torch.equal(dequantize(weight, dtype), expected), (prefix, dtype)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_loaded_model_gives_the_decompressed_model_logits(checkpoints: dict, name: str) -> None:
    loaded = load_model(checkpoints[name], CPU, reference_router())
    assert len([m for m in loaded.model.modules() if isinstance(m, AwqLinear)]) == 14
    assert isinstance(loaded.model.lm_head, torch.nn.Linear)  # ignored: left in float
    input_ids = loaded.tokenizer(SENTENCES[0], return_tensors="pt").input_ids
    expected = logits(decompressed_model(checkpoints[name], scheme(*SCHEMES[name])), input_ids)
    ours = logits(loaded, input_ids)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(ours[0].argmax(-1), expected[0].argmax(-1))


def edit_config(source: Path, target: Path, edit) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    edit(config["quantization_config"])
    (target / "config.json").write_text(json.dumps(config))
    return target


def weights(quant: dict) -> dict:
    return quant["config_groups"]["group_0"]["weights"]


REJECTED = {  # case -> (edit of quantization_config, field the error names)
    "activations": (
        lambda q: q["config_groups"]["group_0"].update(input_activations={"num_bits": 8, "type": "int"}),
        r"config_groups\.group_0\.input_activations",
    ),
    "bits": (lambda q: weights(q).update(num_bits=8), r"config_groups\.group_0\.weights\.num_bits"),
    "float": (lambda q: weights(q).update(type="float"), r"config_groups\.group_0\.weights\.type"),
    "actorder": (lambda q: weights(q).update(actorder="group"), r"config_groups\.group_0\.weights\.actorder"),
    "strategy": (lambda q: weights(q).update(strategy="tensor"), r"config_groups\.group_0\.weights\.strategy"),
    "format": (lambda q: q.update(format="int-quantized"), r"quantization_config\.format: 'int-quantized'"),
    "group_format": (
        lambda q: q["config_groups"]["group_0"].update(format="marlin-24"),
        r"config_groups\.group_0\.format: 'marlin-24'",
    ),
    "kv_cache": (lambda q: q.update(kv_cache_scheme={"num_bits": 8}), r"quantization_config\.kv_cache_scheme"),
    "mixed_groups": (
        lambda q: q["config_groups"].update(
            group_1={"targets": ["Linear"], "weights": {**weights(q), "group_size": 128}}
        ),
        r"quantization_config\.config_groups: groups differ",
    ),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_unsupported_variant_names_the_field(checkpoints: dict, tmp_path: Path, case: str) -> None:
    edit, field = REJECTED[case]
    directory = edit_config(checkpoints["group_symmetric"], tmp_path / case, edit)
    with pytest.raises(CheckpointError, match=field) as raised:
        load_model(directory, CPU, reference_router())
    assert raised.value.code.name == "FAILED_PRECONDITION"


@pytest.mark.parametrize("actorder", ["weight", "static"])
def test_actorder_that_keeps_the_format_loads(checkpoints: dict, tmp_path: Path, actorder: str) -> None:
    """GPTQ's weight activation ordering changes calibration only: the tensors are those of no ordering."""
    directory = edit_config(
        checkpoints["group_symmetric"], tmp_path / actorder, lambda q: weights(q).update(actorder=actorder)
    )
    original = load_model(checkpoints["group_symmetric"], CPU, reference_router())
    input_ids = original.tokenizer(SENTENCES[2], return_tensors="pt").input_ids
    assert torch.equal(logits(load_model(directory, CPU, reference_router()), input_ids), logits(original, input_ids))


def test_scales_float16_cannot_hold_are_rejected(checkpoints: dict, tmp_path: Path) -> None:
    directory = tmp_path / "big_scale"
    shutil.copytree(checkpoints["group_symmetric"], directory)
    with safe_open(directory / "model.safetensors", framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    name = "model.layers.0.mlp.up_proj.weight_scale"
    tensors[name][0, 0] = 1e6  # beyond float16's range
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"{name}: torch\.bfloat16 values that float16 cannot hold"):
        load_model(directory, CPU, reference_router())


def test_daemon_serves_a_compressed_tensors_checkpoint(checkpoints: dict, awqd_cache_dir: Path, tmp_path: Path) -> None:
    """Served through the engine: greedy tokens are the decompressed model's greedy continuation."""
    directory = tmp_path / "models" / "ct"
    shutil.copytree(checkpoints["group_asymmetric"], directory)
    reference = decompressed_model(directory, scheme(*SCHEMES["group_asymmetric"]))
    prompt = AutoTokenizer.from_pretrained(directory).encode(SENTENCES[1])
    with torch.inference_mode():
        expected = reference.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, min_new_tokens=6)
    args = ("--model-root", str(tmp_path / "models"), "--model", f"ct={directory}", "--selection-budget", "20")
    with serving(awqd_cache_dir, *args) as daemon, AwqdClient(daemon.target, timeout=60) as client:
        (model,) = client.describe().models
        assert model.quant_config.packing == pb.QUANT_PACKING_PACK_QUANTIZED and model.quant_config.group_size == 64
        ids = []
        for message in client.generate("ct", prompt_token_ids=prompt, max_new_tokens=6, stop=()):
            ids.extend(message.token_ids)
    assert ids == expected[0, len(prompt) :].tolist()
