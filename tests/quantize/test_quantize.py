"""Calibration input, salience statistics and real AutoAWQ quantization of a small random Llama (on CPU)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from awqd.errors import InvalidArgument
from awqd.kernels.base import Dispatch
from awqd.kernels.candidates.reference_torch import ReferenceTorch
from awqd.kernels.linear import KernelRouter
from awqd.models.loader import load_model
from awqd.models.tokenizer import shipped_texts, train_tokenizer
from awqd.quant.packing import unpack
from awqd.quant.reference import dequantize
from awqd.quant.tensors import QuantizedWeight
from awqd.quantize.autoawq import REPORT_FILE, quantize
from awqd.quantize.calibration import calibration_blocks, read_calibration
from awqd.quantize.salience import SalienceRecorder

GROUP_SIZE = 64
SEQ_LEN = 32
BLOCKS = 16


# ---- calibration files -------------------------------------------------------------------------------------


def test_text_file_one_sample_per_line(tmp_path: Path) -> None:
    path = tmp_path / "calib.txt"
    path.write_text("first sample here\n\n   \nsecond sample\n")
    assert read_calibration(path, min_tokens=10) == ["first sample here", "second sample"]


def test_jsonl_file_reads_text_fields(tmp_path: Path) -> None:
    path = tmp_path / "calib.jsonl"
    path.write_text('{"text": "alpha beta"}\n\n{"text": "gamma", "id": 7}\n')
    assert read_calibration(path, min_tokens=10) == ["alpha beta", "gamma"]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("missing.txt", None, "no such file"),
        ("empty.txt", "\n  \n\n", "contains no calibration text"),
        ("small.txt", "just a few words\n", "too small: 1 samples can give at most 17 tokens, need 2048"),
        ("bad.jsonl", '{"text": "fine"}\n{"text": broken}\n', "bad.jsonl:2: invalid JSON"),
        ("no_text.jsonl", '{"text": "fine"}\n\n{"body": "x"}\n', "no_text.jsonl:3: expected an object with a string"),
    ],
)
def test_bad_calibration_files(tmp_path: Path, name: str, content: str | None, reason: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidArgument) as raised:
        read_calibration(path)  # default minimum: 4 blocks of 512 tokens
    assert raised.value.field == "calib"
    assert str(path) in str(raised.value) and reason in str(raised.value)


def test_blocks_are_exact_and_too_little_text_names_the_minimum(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(tmp_path, 1024)
    blocks = calibration_blocks(shipped_texts(), tokenizer, seq_len=SEQ_LEN, max_blocks=5)
    assert len(blocks) == 5 and all(len(block) == SEQ_LEN for block in blocks)
    with pytest.raises(InvalidArgument, match=r"at least 4 blocks of max_calib_seq_len=512 tokens \(2048 tokens\)"):
        calibration_blocks(["a short sentence", "another one"], tokenizer, seq_len=512, max_blocks=128)


# ---- salience ------------------------------------------------------------------------------------------------


def test_salience_finds_the_loud_channels_and_unhooks() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(400, 16)
    x = torch.randn(3, 50, 400)
    x[..., 17] *= 40
    x[..., 301] *= 25
    recorder = SalienceRecorder()
    with recorder.watch({"layer": linear}):
        linear(x)
        linear(x[:1])
    linear(x)  # outside the block: not recorded
    stats = recorder.results()["layer"]
    assert stats.tokens == 200 and stats.in_features == 400
    assert stats.top_channels[:2] == [17, 301]
    # Top 1% = 4 channels; two carry 40x and 25x the typical magnitude.
    assert 0.12 < stats.top_channels_share < 0.20
    assert 35 < stats.max_median_ratio < 45


def test_flat_activations_have_no_salient_channels() -> None:
    linear = nn.Linear(200, 8)
    recorder = SalienceRecorder()
    with recorder.watch({"flat": linear}):
        linear(torch.ones(10, 200))
    stats = recorder.results()["flat"]
    assert stats.top_channels_share == pytest.approx(0.01)
    assert stats.max_median_ratio == pytest.approx(1.0)


# ---- quantizing with AutoAWQ -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fp16_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fp16")
    tokenizer = train_tokenizer(directory, 1024, extra_tokens_to=1024)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).half().save_pretrained(directory)
    return directory


def run_quantize(model_dir: Path, out_dir: Path, version: str):
    return quantize(
        model_dir,
        shipped_texts(),
        out_dir,
        group_size=GROUP_SIZE,
        version=version,
        max_calib_seq_len=SEQ_LEN,
        max_calib_blocks=BLOCKS,
        progress=False,
    )


@pytest.fixture(scope="module")
def gemm_checkpoint(fp16_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("awq") / "gemm"
    run_quantize(fp16_model, out_dir, "GEMM")
    return out_dir


SHAPES = {  # layer -> (in_features, out_features) for hidden 128, 2 of 4 heads for k/v, intermediate 256
    "self_attn.q_proj": (128, 128),
    "self_attn.k_proj": (128, 64),
    "self_attn.v_proj": (128, 64),
    "self_attn.o_proj": (128, 128),
    "mlp.gate_proj": (128, 256),
    "mlp.up_proj": (128, 256),
    "mlp.down_proj": (256, 128),
}


def layer_weights(checkpoint: Path, version: str) -> dict[str, tuple[dict[str, torch.Tensor], QuantizedWeight]]:
    """Layer 0's raw checkpoint tensors and their canonical unpacked weight, per linear layer."""
    tensors = load_file(checkpoint / "model.safetensors")
    weights = {}
    for name, (in_features, out_features) in SHAPES.items():
        prefix = f"model.layers.0.{name}."
        parts = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
        weights[name] = (parts, unpack(parts, version, GROUP_SIZE, in_features, out_features))
    return weights


@pytest.mark.slow
def test_gemm_checkpoint_report_and_config(gemm_checkpoint: Path, fp16_model: Path) -> None:
    config = json.loads((gemm_checkpoint / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "awq",
        "bits": 4,
        "group_size": GROUP_SIZE,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": None,
    }
    assert config["torch_dtype"] == "float16"
    for file_name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (gemm_checkpoint / file_name).read_bytes() == (fp16_model / file_name).read_bytes()

    report = json.loads((gemm_checkpoint / REPORT_FILE).read_text())
    expected_layers = [f"model.layers.0.{name}" for name in SHAPES]
    assert report["layers"] == expected_layers
    assert report["version"] == "GEMM" and report["w_bit"] == 4 and report["group_size"] == GROUP_SIZE
    assert report["calibration"]["blocks"] == BLOCKS and report["calibration"]["tokens"] == BLOCKS * SEQ_LEN
    assert report["versions"]["autoawq"] == "0.2.9" and report["seconds"] > 0
    assert set(report["salience"]) == set(expected_layers)
    for name, stats in report["salience"].items():
        assert stats["tokens"] == BLOCKS * SEQ_LEN, name
        assert stats["in_features"] == (256 if name.endswith("down_proj") else 128), name
        assert 0.01 <= stats["top_channels_share"] < 1 and stats["max_median_ratio"] >= 1, name
        assert len(stats["top_channels"]) == 8, name
    # q, k and v read the same normed input, so their statistics agree.
    salience = report["salience"]
    assert salience["model.layers.0.self_attn.q_proj"] == salience["model.layers.0.self_attn.v_proj"]


@pytest.mark.slow
def test_gemm_tensors_dequantize_like_autoawq(gemm_checkpoint: Path) -> None:
    from awq.utils.packing_utils import dequantize_gemm  # AutoAWQ's own dequantization, an independent oracle

    for name, (parts, weight) in layer_weights(gemm_checkpoint, "GEMM").items():
        theirs = dequantize_gemm(parts["qweight"], parts["qzeros"], parts["scales"], 4, GROUP_SIZE)  # [in, out]
        torch.testing.assert_close(dequantize(weight, torch.float16), theirs.t(), rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_quantized_model_tracks_the_fp16_model(gemm_checkpoint: Path, fp16_model: Path) -> None:
    loaded = load_model(gemm_checkpoint, torch.device("cpu"), KernelRouter(Dispatch.single(ReferenceTorch())))
    original = LlamaForCausalLM.from_pretrained(fp16_model, torch_dtype=torch.float32)
    input_ids = loaded.tokenizer("The train leaves the station after the rain.", return_tensors="pt").input_ids
    with torch.inference_mode():
        ours = loaded.model(input_ids).logits.float()
        reference = original(input_ids).logits
    # 4-bit weights cost accuracy (~0.1 relative error here), but the logits must stay close to the fp16
    # model's; a wrong packing or a misplaced AWQ scale gives an error near 1.
    relative_error = ((ours - reference).norm() / reference.norm()).item()
    assert relative_error < 0.2, relative_error
    cosine = nn.functional.cosine_similarity(ours.flatten(), reference.flatten(), dim=0).item()
    assert cosine > 0.98, cosine


@pytest.mark.slow
def test_gemv_quantizes_to_the_same_weights(gemm_checkpoint: Path, fp16_model: Path, tmp_path: Path) -> None:
    report = run_quantize(fp16_model, tmp_path / "gemv", "GEMV")
    assert report.version == "GEMV"
    config = json.loads((tmp_path / "gemv" / "config.json").read_text())
    assert config["quantization_config"]["version"] == "gemv"
    gemv, gemm = layer_weights(tmp_path / "gemv", "GEMV"), layer_weights(gemm_checkpoint, "GEMM")
    for name, (parts, weight) in gemv.items():
        assert parts["qweight"].shape == (weight.out_features, weight.in_features // 8), name
        # AWQ's search is deterministic, so both packings hold the same canonical weight.
        assert torch.equal(weight.q, gemm[name][1].q), name
        assert torch.equal(weight.zeros, gemm[name][1].zeros), name
        assert torch.equal(weight.scales, gemm[name][1].scales), name


@pytest.mark.parametrize(
    ("options", "field", "reason"),
    [
        ({"w_bit": 8}, "w_bit", "4-bit AWQ only"),
        ({"group_size": 96}, "group_size", "96 does not divide model.layers.0.self_attn.q_proj's in_features 128"),
        ({"group_size": 12}, "group_size", "multiple of 8"),
        ({"version": "MARLIN"}, "version", "unsupported AWQ packing"),
        ({"zero_point": False}, "zero_point", "need a zero point"),
        ({"max_calib_seq_len": 512}, "max_calib_seq_len", "exceeds the model's max_position_embeddings 256"),
    ],
)
def test_bad_options_are_rejected(fp16_model: Path, tmp_path: Path, options: dict, field: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        quantize(fp16_model, shipped_texts(), tmp_path / "out", progress=False, **options)
    assert raised.value.field == field and reason in raised.value.reason
    assert not (tmp_path / "out").exists()


def test_bad_model_and_out_dirs_are_rejected(fp16_model: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"no config\.json"):
        quantize(tmp_path, shipped_texts(), tmp_path / "out", progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(InvalidArgument, match="exists and is not empty") as raised:
        quantize(fp16_model, shipped_texts(), tmp_path / "busy", progress=False)
    assert raised.value.field == "out_dir"


def test_too_little_calibration_text_is_rejected_before_loading(fp16_model: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"too small: 2 samples give \d+ tokens") as raised:
        quantize(fp16_model, ["one line", "two lines"], tmp_path / "out", max_calib_seq_len=SEQ_LEN, progress=False)
    assert raised.value.field == "calib"
