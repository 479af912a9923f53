"""QUALITY: perplexity per pinned kernel against the reference, through a real daemon on the demo model and offline
(`awqd eval`) on a small Llama trained here by bench/train_tiny.py's own functions, so quality is checked on
weights that are not random."""

import importlib.util
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import torch

from awqd.benchmark.evaluate import evaluate
from awqd.benchmark.quality import MAX_TEXT_BYTES, Pinned, decode_text, spans, window_size
from awqd.engine.model import DecoderModel
from awqd.errors import InvalidArgument
from awqd.kernels.base import Dispatch
from awqd.kernels.candidates.reference_torch import ReferenceTorch
from awqd.kernels.linear import KernelRouter
from awqd.models.loader import load_model
from awqd_client import AwqdClient, AwqdError
from awqd_client.v1 import awqd_pb2 as pb

from daemon_process import serving

REPO = Path(__file__).resolve().parents[2]
TEXT = (REPO / "awqd" / "data" / "trains.txt").read_bytes()
DEMO = "awqd-demo"
QUALITY = pb.BENCHMARK_MODE_QUALITY
CPU = torch.device("cpu")


def load_train_tiny():
    spec = importlib.util.spec_from_file_location("train_tiny", REPO / "bench" / "train_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_windows_cover_every_token_once_and_inputs_are_checked():
    assert spans(10, 4) == [(0, 4), (4, 8), (8, 10)]  # 3 + 3 + 1 tokens predicted: all but the first
    assert spans(9, 4) == [(0, 4), (4, 8)]  # a last window of one token predicts nothing
    assert window_size(0, 512) == 512 and window_size(0, 4096) == 1024 and window_size(64, 512) == 64
    for bad, field in ((b"", "text"), (b" \n", "text"), (b"\xff\xfe", "text"), (b"x" * (MAX_TEXT_BYTES + 1), "text")):
        with pytest.raises(InvalidArgument, match=f"^{field}"):
            decode_text(bad)
    with pytest.raises(InvalidArgument, match=r"^window_tokens"):
        window_size(513, 512)


def test_score_gives_the_logits_of_the_model_at_every_position(demo_model_dir):
    """The cache-free teacher-forced pass equals transformers' forward over the same AwqLinear weights."""
    reference = ReferenceTorch()
    fused = load_model(demo_model_dir, CPU, KernelRouter(Dispatch.single(reference)), fuse=True)
    unfused = load_model(demo_model_dir, CPU, KernelRouter(Dispatch.single(reference)))
    ids = fused.tokenizer(TEXT.decode()[:400], return_tensors="pt").input_ids[0]
    with torch.inference_mode():
        ours = DecoderModel(fused).score(ids, Pinned(reference))
        expected = unfused.model(ids[None]).logits[0]
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def daemon(demo_model_dir, awqd_cache_dir):
    with serving(awqd_cache_dir, "--selection-budget", "20") as process:
        yield process


@pytest.fixture
def client(daemon):
    with AwqdClient(daemon.target, timeout=120) as client:
        yield client


def run(client: AwqdClient, **fields) -> tuple[list[pb.BenchmarkProgress], pb.BenchmarkReport]:
    messages = list(client.benchmark(pb.BenchmarkRequest(mode=QUALITY, **fields)))
    assert messages and messages[-1].HasField("report")
    return [m.progress for m in messages[:-1]], messages[-1].report


def test_quality_scores_every_held_kernel_against_the_reference(client):
    described = client.describe()
    model = next(m for m in described.models if m.name == DEMO)
    device = next(d for d in described.devices if d.torch_device == model.device)
    usable = {k.name for k in device.kernels if k.supported and k.correctness.passed}
    progress, report = run(client, model=DEMO, text=TEXT, window_tokens=128)
    rows = list(report.quality)
    assert report.mode == QUALITY and rows[0].kernel == "reference_torch"
    assert {row.kernel for row in rows} == usable | {"reference_torch"}
    assert progress and progress[-1].completed == progress[-1].total
    scored = rows[0].tokens_scored
    for row in rows:
        assert not row.error, row.error
        assert row.tokens_scored == scored and math.isfinite(row.perplexity) and row.perplexity > 1
        assert row.within_bound and abs(row.delta_vs_reference_percent) <= row.bound_percent == 0.5
    assert "reference perplexity" in report.verdict.summary and "within 0.5%" in report.verdict.summary
    pinned = run(client, model=DEMO, text=TEXT, kernels=["dequant_matmul_cpu"])[1]
    assert [row.kernel for row in pinned.quality] == ["reference_torch", "dequant_matmul_cpu"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model": DEMO, "text": b""}, "text"),
        ({"model": DEMO, "text": b"\xc3\x28 not utf-8"}, "text"),
        ({"model": DEMO, "text": b"a" * (MAX_TEXT_BYTES + 1)}, "text"),
        ({"model": DEMO, "text": "trains run " * 20000}, "text"),  # under 1 MiB, over the token cap
        ({"model": DEMO, "text": TEXT, "window_tokens": 100_000}, "window_tokens"),
        ({"model": DEMO, "text": TEXT, "new_tokens": 4}, "new_tokens"),
        ({"model": DEMO, "text": TEXT, "kernels": ["auto"]}, "kernels"),
        ({"text": TEXT}, "model"),
    ],
)
def test_bad_quality_requests_are_invalid_arguments_naming_the_field(client, fields, field):
    if isinstance(fields.get("text"), str):
        fields = {**fields, "text": fields["text"].encode()}
    with pytest.raises(AwqdError) as raised:
        run(client, **fields)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message.startswith(field), raised.value.message


def test_text_belongs_to_quality_only(client):
    with pytest.raises(AwqdError) as raised:
        list(client.benchmark(pb.BenchmarkRequest(mode=pb.BENCHMARK_MODE_KERNEL, architecture="tiny", text=b"x")))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and raised.value.message.startswith("text")


def test_awqctl_bench_quality_prints_the_table(daemon, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_bytes(TEXT)
    awqctl = [sys.executable, "-m", "awqd_client.cli", "--target", daemon.target, "bench"]
    result = subprocess.run(
        [*awqctl, "--mode", "quality", "--text-file", str(text_file), "--kernels", "dequant_matmul_cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr
    assert "quality" in result.stdout and "reference_torch" in result.stdout and "dequant_matmul_cpu" in result.stdout


def test_a_trained_model_scores_well_below_uniform_and_every_kernel_matches_the_reference(tmp_path):
    """A few dozen steps on stdlib sources, RTN W4 g128 through awqd's packing, then `awqd eval`'s code."""
    train_tiny = load_train_tiny()
    settings = replace(
        train_tiny.TINY, train_seconds=60.0, max_steps=40, lr=1e-2, train_bytes=192 << 10, tokenizer_bytes=192 << 10
    )
    fp16_dir, training, splits = train_tiny.make_trained(settings, tmp_path, CPU)
    tokenizer = train_tiny.PreTrainedTokenizerFast.from_pretrained(fp16_dir)
    text, _ = train_tiny.heldout_text(tokenizer, splits["heldout"], 1500)
    train_tiny.write_rtn(fp16_dir, tmp_path / "rtn")
    evaluation = evaluate(tmp_path / "rtn", text.encode(), "cpu", window=settings.window)
    rows = {row.kernel: row for row in evaluation.rows}
    assert set(rows) >= {"reference_torch", "dequant_matmul_cpu"}, rows
    reference = rows["reference_torch"].perplexity
    assert math.isfinite(reference) and reference < settings.vocab / 2, (reference, training)
    for row in evaluation.rows:
        assert not row.error and row.within_bound, row
    fp16 = train_tiny.fp16_perplexity(fp16_dir, tokenizer(text)["input_ids"], settings.window, CPU)
    assert abs(reference / fp16 - 1) < 0.05, (reference, fp16)  # 4-bit RTN moves a trained model only a little
