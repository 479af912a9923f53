"""The embedded demo model: built once with real AutoAWQ, reused after, safe under concurrent first starts."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
import torch

from awqd.kernels.base import Dispatch
from awqd.kernels.candidates.reference_torch import ReferenceTorch
from awqd.kernels.linear import KernelRouter
from awqd.models.demo import MARKER_FILE, RECIPE, ensure_demo_model, is_complete
from awqd.models.loader import load_model
from awqd.quantize.autoawq import REPORT_FILE

pytestmark = pytest.mark.slow


def test_first_call_builds_an_autoawq_checkpoint(demo_model_dir: Path, awqd_cache_dir: Path) -> None:
    assert demo_model_dir == awqd_cache_dir / "models" / "awqd-demo"
    assert is_complete(demo_model_dir)
    assert json.loads((demo_model_dir / MARKER_FILE).read_text()) == RECIPE
    config = json.loads((demo_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["quantization_config"]["version"] == "gemm" and config["quantization_config"]["bits"] == 4
    assert config["vocab_size"] == RECIPE["vocab_size"] and config["num_key_value_heads"] == 2
    report = json.loads((demo_model_dir / REPORT_FILE).read_text())
    assert len(report["layers"]) == 7 * RECIPE["num_hidden_layers"] == len(report["salience"])
    assert report["calibration"]["blocks"] == RECIPE["calib_blocks"]
    # Nothing of the build is left beside the model.
    assert not [p.name for p in demo_model_dir.parent.iterdir() if p.name.startswith(".awqd-demo-build-")]


def test_second_call_reuses_without_rebuilding(demo_model_dir: Path, awqd_cache_dir: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in demo_model_dir.iterdir()}
    with structlog.testing.capture_logs() as logs:
        assert ensure_demo_model(awqd_cache_dir) == demo_model_dir
    assert [entry["event"] for entry in logs] == ["demo_model.reuse"]
    assert {p.name: p.stat().st_mtime_ns for p in demo_model_dir.iterdir()} == before


def test_incomplete_or_outdated_directories_are_not_complete(demo_model_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(demo_model_dir, tmp_path / "copy"))
    assert is_complete(copy)
    (copy / MARKER_FILE).write_text(json.dumps(RECIPE | {"recipe": RECIPE["recipe"] - 1}))
    assert not is_complete(copy)
    (copy / MARKER_FILE).unlink()
    assert not is_complete(copy)
    shutil.copy(demo_model_dir / MARKER_FILE, copy / MARKER_FILE)
    (copy / "model.safetensors").unlink()
    assert not is_complete(copy)


def test_loads_and_generates(demo_model_dir: Path) -> None:
    loaded = load_model(demo_model_dir, torch.device("cpu"), KernelRouter(Dispatch.single(ReferenceTorch())))
    assert loaded.quant_config.version == "GEMM" and loaded.architecture == "LlamaForCausalLM"
    input_ids = loaded.tokenizer("The weather over the garden", return_tensors="pt").input_ids
    with torch.inference_mode():
        for _ in range(4):
            next_id = loaded.model(input_ids).logits[0, -1].argmax()
            input_ids = torch.cat([input_ids, next_id.view(1, 1)], dim=1)
    assert input_ids.shape[1] > 4 and isinstance(loaded.tokenizer.decode(input_ids[0]), str)


def test_concurrent_first_starts_build_once(demo_model_dir: Path, tmp_path: Path) -> None:
    # A leftover from a crashed build, without its marker, must be replaced, not served.
    leftover = tmp_path / "models" / "awqd-demo"
    shutil.copytree(demo_model_dir, leftover)
    (leftover / MARKER_FILE).unlink()
    script = "import sys; from pathlib import Path; from awqd.models.demo import ensure_demo_model; "
    script += "print('RESULT', ensure_demo_model(Path(sys.argv[1])))"
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err.decode()[-2000:] for _, err in outputs]
    stdout = "".join(out.decode() for out, _ in outputs)
    assert stdout.count(f"RESULT {leftover}") == 2
    assert stdout.count("demo_model.build ") == 1 and stdout.count("demo_model.discard_incomplete") == 1
    assert is_complete(leftover)
    assert sorted(p.name for p in leftover.parent.iterdir()) == ["awqd-demo", "awqd-demo.lock"]
