"""`awqd serve` and `awqd check-kernels` with plugin candidates that abort, hang, return stale output and time
below the memory roofline, next to a correct one: the daemon boots to SERVING, Describe rejects each bad one
with its reason, the correct one is timed beside the built-ins (whether it wins depends on the host), and Generate
runs on it when a request pins it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from awqd.kernels.isolation import STEP_LIMIT_ENV
from awqd.models import synth
from awqd_client import AwqdClient
from awqd_client.v1 import awqd_pb2 as pb

from daemon_process import serving

PLUGIN_DIR = Path(__file__).parent / "plugins"
PLUGINS = ("Aborts", "Hangs", "Stale", "NoWorkWhenWarm", "DenseFloat")
# One decoder layer of 16 Mi int4 weights (8 MiB): its rotation copies exceed twice the assumed CPU cache, so
# timings stream the weights from memory and the roofline floor holds.
WIDE = synth.Architecture("llama", 1024, 4096, 1, 8, 8, 2048, 10000.0, 256, 1e-6)
# Correctness of every candidate always runs first, and the budget must reach the 1-token bucket, which it does
# after about 18 s on a 2-core CI machine; the buckets past the budget follow the rules (all ten took 82 s).
BUDGET_S = "40"


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> tuple[Path, Path]:
    cache_dir = tmp_path_factory.mktemp("cache")
    path = cache_dir / "models" / "wide"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(synth.ARCHITECTURES, "wide", WIDE)
        synth.synthesize("wide", path, device="cpu")
    return cache_dir, path


def plugin_env() -> dict[str, str]:
    path = os.pathsep.join([str(PLUGIN_DIR), *sys.path])
    return {"PYTHONPATH": path, STEP_LIMIT_ENV: "4", "AWQD_CANDIDATE_PLUGINS": ""}


def plugin_flags() -> list[str]:
    return [flag for name in PLUGINS for flag in ("--candidate-plugin", f"trust_plugins:{name}")]


def assert_rejections(candidates: dict, timed: set[str], rejected: dict) -> None:
    """candidates: name -> (correctness error, rejected reason); timed: the kernels timed at 1 token; rejected: the
    kernels left out at 1 token -> reason."""
    assert "killed by signal 6 (SIGABRT) during correctness at [3072x1024]" in candidates["plugin_aborts"][0]
    assert "no answer in 4 s during correctness at [3072x1024]" in candidates["plugin_hangs"][0]
    assert "#2 of 2: relative error" in candidates["plugin_stale"][0]
    assert candidates["plugin_no_work_when_warm"][0] == ""  # correct on every fresh input ...
    assert "is below 0.9x the" in candidates["plugin_no_work_when_warm"][1]  # ... but impossibly fast
    assert "GB/s copy bandwidth" in rejected["plugin_no_work_when_warm"]
    assert candidates["plugin_dense_fp32"] == ("", "")
    assert "plugin_dense_fp32" in timed and "plugin_no_work_when_warm" not in timed


def test_serve_and_check_kernels_with_plugin_candidates(wide_model):
    cache_dir, path = wide_model
    args = ["--model", f"wide={path}", "--selection-budget", BUDGET_S, *plugin_flags()]
    with serving(cache_dir, *args, env=plugin_env()) as daemon:
        assert daemon.health() == health_pb2.HealthCheckResponse.SERVING
        assert daemon.health("awq.v1.AwqdService/cpu") == health_pb2.HealthCheckResponse.SERVING
        with AwqdClient(daemon.target) as client:
            cpu = client.describe().devices[0]
            candidates = {k.name: (k.correctness.error, k.rejected) for k in cpu.kernels}
            bucket_one = cpu.decisions[0]
            assert_rejections(
                candidates, {t.kernel for t in bucket_one.timings}, {r.kernel: r.reason for r in bucket_one.rejected}
            )
            assert {k.name: k.plugin for k in cpu.kernels}["plugin_dense_fp32"] == "trust_plugins:DenseFloat"
            assert cpu.health == pb.DEVICE_HEALTH_OK and cpu.selection.worker_restarts >= 2
            assert cpu.selection.copy_bandwidth_gbps > 0 and cpu.selection.worker_startup.ToNanoseconds() > 0
            chosen = list(client.generate("wide", "the river", max_new_tokens=4))[-1].completion
            pinned = list(client.generate("wide", "the river", max_new_tokens=4, kernel="plugin_dense_fp32"))
        assert chosen.usage.completion_tokens == 4
        assert {k.kernel for k in chosen.kernels if k.phase == "decode"} == {cpu.decisions[0].kernel}
        assert {k.kernel for k in pinned[-1].completion.kernels} == {"plugin_dense_fp32"}

    command = [sys.executable, "-m", "awqd", "check-kernels", "--device", "cpu", "--model-path", str(path), "--json"]
    result = subprocess.run(
        [*command, "--budget", BUDGET_S, *plugin_flags()],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **plugin_env()},
    )
    assert result.returncode == 0, result.stderr
    checked = json.loads(result.stdout)
    candidates = {c["name"]: ((c["correctness"] or {}).get("error", ""), c["rejected"]) for c in checked["candidates"]}
    first = checked["buckets"][0]["candidates"]
    rows = {row["kernel"]: row for row in first}
    assert rows["plugin_aborts"]["status"] == "failed correctness"
    assert_rejections(
        candidates,
        {kernel for kernel, row in rows.items() if row["status"] in ("chosen", "timed")},
        {r["kernel"]: r["reason"] for r in checked["decisions"][0]["rejected"]},
    )
