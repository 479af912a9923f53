"""Selection runs every candidate in an isolated worker: crashing, hanging, stale and impossibly fast plugin
candidates are rejected with their reasons, a correct plugin competes and is ranked by its timings, and the worker
that a bad candidate killed is replaced for the rest."""

import json
from pathlib import Path

import pytest

from awqd.errors import FailedPrecondition
from awqd.kernels import cache, isolation, plugins, registry
from awqd.kernels.isolation import IsolatedDevice, StepFailed
from awqd.kernels.measure import ROOFLINE_MARGIN, CorrectnessCheck, GraphReplayCheck
from awqd.kernels.selection import (
    CandidateReport,
    DecisionSource,
    DeviceDecisions,
    candidate_reports,
    graph_buckets_for,
    resolve_forced,
    rule_decisions,
    select_kernels,
)
from awqd.node.devices import DeviceInfo

PLUGIN_DIR = Path(__file__).parent / "plugins"
CPU = DeviceInfo(0, "cpu", "cpu", "test CPU", None, 1 << 34, "cpu", None)
H200 = DeviceInfo(1, "cuda", "GPU-x", "NVIDIA H200", (9, 0), 1 << 37, "cuda:0", 0)
SHAPES = [(256, 128), (128, 128), (128, 256)]
WIDE_SHAPES = [(2048, 1024), (1024, 2048)]
GROUP_SIZE = 64
STEP_LIMIT_S = "4"


@pytest.fixture
def plugin_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.setenv(isolation.STEP_LIMIT_ENV, STEP_LIMIT_S)
    yield
    plugins.activate([], registry.CANDIDATES)


def activate(*classes: str) -> None:
    plugins.activate([f"trust_plugins:{name}" for name in classes], registry.CANDIDATES)


def test_a_crash_and_a_hang_are_reported_and_a_fresh_worker_goes_on(plugin_path):
    activate("Aborts", "Hangs", "DenseFloat")
    with IsolatedDevice("cpu", plugins.active_specs()) as worker:
        with pytest.raises(StepFailed) as crashed:
            worker.call("check", name="plugin_aborts", shapes=SHAPES, group_size=GROUP_SIZE)
        assert str(crashed.value).startswith("killed by signal 6 (SIGABRT) during correctness at [256x128] group 64")
        assert "input [1, 128] #1 of 2" in str(crashed.value)
        with pytest.raises(StepFailed, match=r"^no answer in 4 s during correctness at \[256x128\]"):
            worker.call("check", name="plugin_hangs", shapes=SHAPES, group_size=GROUP_SIZE)
        reply = worker.call("check", name="plugin_dense_fp32", shapes=SHAPES, group_size=GROUP_SIZE)
        assert reply["ok"] and reply["passed"], reply
        assert worker.restarts == 2 and all(0 < s < 60 for s in worker.startups_s)


def test_selection_rejects_bad_plugins_and_ranks_a_correct_one(plugin_path):
    activate("Aborts", "Hangs", "Stale", "DenseFloat", "NotACandidate", "Missing")
    # Large enough that dequantizing on every call (two built-ins: ~20x slower at 1 token) clearly loses to
    # dequantizing once. Whether the plugin also beats torch's int4 CPU kernel depends on the host: not asserted.
    result = select_kernels(CPU, WIDE_SHAPES, GROUP_SIZE, cache_dir=None, budget_s=60.0, buckets=(1, 256))
    reports = {r.name: r for r in result.candidates}
    assert "killed by signal 6 (SIGABRT)" in reports["plugin_aborts"].correctness.error
    assert "no answer in 4 s" in reports["plugin_hangs"].correctness.error
    assert "#2 of 2: relative error" in reports["plugin_stale"].correctness.error  # right once, then stale
    assert reports["plugin_dense_fp32"].usable and reports["plugin_dense_fp32"].plugin == "trust_plugins:DenseFloat"
    assert not reports["trust_plugins:NotACandidate"].supported
    assert "lacks prepare, forward, eligible" in reports["trust_plugins:NotACandidate"].reason
    assert "does not import: AttributeError" in reports["trust_plugins:Missing"].reason
    assert result.worker_restarts == 2 and result.worker_startup_s > 0 and result.copy_bandwidth_gbps > 0
    for decision in result.decisions:
        timed = {t.kernel for t in decision.timings}
        assert timed == {"plugin_dense_fp32", "reference_torch", "dequant_matmul_cpu", "torch_int4_cpu"}
    ranked = [t.kernel for t in result.decisions[0].timings]  # at 1 token, fastest first: the first is chosen
    assert ranked.index("plugin_dense_fp32") < min(ranked.index("dequant_matmul_cpu"), ranked.index("reference_torch"))
    assert resolve_forced(result, "plugin_dense_fp32").name == "plugin_dense_fp32"
    with pytest.raises(FailedPrecondition, match="plugin_stale failed its checks"):
        resolve_forced(result, "plugin_stale")


def test_a_timing_below_the_roofline_is_rejected(plugin_path):
    activate("NoWorkWhenWarm")
    shapes = [(4096, 4096)]  # 8 MiB of int4: its 8 rotation copies stream from memory, so the floor holds
    result = select_kernels(CPU, shapes, GROUP_SIZE, cache_dir=None, budget_s=60.0, buckets=(1,))
    cheat = result.candidate("plugin_no_work_when_warm")
    assert cheat.correctness.passed  # right on every fresh input: only its timing gives it away
    assert f"below {ROOFLINE_MARGIN:g}x the" in cheat.rejected and "GB/s copy bandwidth" in cheat.rejected
    decision = result.decisions[0]
    assert decision.kernel != cheat.name and cheat.name not in {t.kernel for t in decision.timings}
    assert [r.kernel for r in decision.rejected] == [cheat.name]
    floor_ms = 4096 * 4096 / 2 / result.copy_bandwidth_gbps / 1e6
    assert all(t.median_ms >= ROOFLINE_MARGIN * floor_ms for t in decision.timings)


def test_a_tuned_tile_is_checked_at_the_buckets_it_serves(plugin_path):
    """The first check runs before tuning, on 1, 7 and 64 rows. A tile tuned for larger steps is checked at the
    buckets outside the CUDA-graph ones, and where it is wrong the candidate is left out of that bucket alone."""
    activate("WrongWhenTunedWide")
    result = select_kernels(CPU, SHAPES, GROUP_SIZE, cache_dir=None, budget_s=60.0, buckets=(1, 64, 128, 256))
    tuned = result.candidate("plugin_wrong_when_tuned_wide")
    assert tuned.usable and tuned.correctness.passed
    assert sorted(tuned.wrong_at) == [128, 256]
    for decision in result.decisions:
        left_out = {r.kernel: r.reason for r in decision.rejected}
        if decision.batch_tokens <= 64:
            assert tuned.name in {t.kernel for t in decision.timings} and tuned.name not in left_out
        else:
            assert tuned.name not in {t.kernel for t in decision.timings} and decision.kernel != tuned.name
            assert left_out[tuned.name].startswith(f"wrong at {decision.batch_tokens} tokens with its tuned tiles")
    reloaded = DeviceDecisions.from_dict(result.to_dict()).candidate(tuned.name)
    assert reloaded.wrong_at == tuned.wrong_at


def test_a_cached_choice_whose_tuned_tile_is_now_wrong_is_re_measured(plugin_path, tmp_path, monkeypatch):
    """Re-validating cached decisions checks a chosen kernel's tuned tiles at its eager buckets too."""
    activate("WrongWhenTunedWide")
    monkeypatch.setenv("TRUST_PLUGINS_WIDE_TILE_RIGHT", "1")
    first = select_kernels(CPU, SHAPES, GROUP_SIZE, cache_dir=tmp_path, budget_s=60.0, buckets=(1, 128))
    assert first.source == DecisionSource.MEASURED and not first.candidate("plugin_wrong_when_tuned_wide").wrong_at
    path = cache.cache_path(tmp_path, CPU.uuid)
    stored = json.loads(path.read_text())
    for decision in stored["decisions"]["decisions"]:  # as if it had won both buckets
        decision["kernel"] = "plugin_wrong_when_tuned_wide"
    path.write_text(json.dumps(stored))
    monkeypatch.delenv("TRUST_PLUGINS_WIDE_TILE_RIGHT")
    second = select_kernels(CPU, SHAPES, GROUP_SIZE, cache_dir=tmp_path, budget_s=60.0, buckets=(1, 128))
    failed = [note for note in second.notes if note.startswith("cached kernels failed their correctness re-check")]
    assert failed and "wrong at 128 tokens with its tuned tiles" in failed[0], second.notes
    assert second.source == DecisionSource.MEASURED
    assert next(d for d in second.decisions if d.batch_tokens == 128).kernel != "plugin_wrong_when_tuned_wide"


def report(name: str, family: str, passed: bool) -> CandidateReport:
    check = CorrectnessCheck(passed, 0.0, 2e-2, "" if passed else "CUDA error: an illegal memory access")
    return CandidateReport(name, family, True, "ok", (), "x", correctness=check)


def test_the_rule_fallback_never_picks_the_reference_on_a_gpu():
    reports = [
        report("reference_torch", "reference", True),
        report("autoawq_gemv_fast_cuda", "gemv_fast", False),
        report("awqd_triton_gemv", "gemv", True),
    ]
    decisions = rule_decisions(H200, reports, [1, 4, 512], "not measured: the time budget ran out")
    assert [d.kernel for d in decisions] == ["awqd_triton_gemv"] * 3
    alone = rule_decisions(H200, reports[:2], [1], "selection failed")
    assert [d.kernel for d in alone] == ["reference_torch"]  # the only one that passed


def test_nothing_passed_means_degraded(plugin_path):
    activate("Aborts")
    cuda_reports = [report("reference_torch", "reference", False), report("awqd_triton_gemv", "gemv", False)]
    degraded = DeviceDecisions("GPU-x", "NVIDIA H200 (cuda:0)", cuda_reports, [], "capability_rule", None, 0.0, "")
    assert rule_decisions(H200, cuda_reports, [1], "x") == []
    from awqd.kernels.selection import degraded_reason

    degraded.degraded = degraded_reason(degraded)
    assert degraded.degraded.startswith("no kernel candidate passed its checks (reference_torch: CUDA error")
    with pytest.raises(FailedPrecondition, match="is degraded: no kernel candidate passed"):
        degraded.dispatch()


def test_graph_buckets_and_graph_unsafe_candidates():
    assert graph_buckets_for(H200, [1, 2, 4, 8, 16, 32, 64, 128], 64) == [1, 2, 4, 8, 16, 32, 64]
    assert graph_buckets_for(H200, [1, 16, 128], 48) == [1, 16, 128]
    assert graph_buckets_for(H200, [1, 16], 0) == [] and graph_buckets_for(CPU, [1, 16], 64) == []
    unsafe = report("autoawq_gemv_cuda", "gemv", True)
    unsafe.graph_replay = GraphReplayCheck(False, "CUDA-graph replay at [4096x4096], 16 tokens, fresh input #1")
    decisions = DeviceDecisions("GPU-x", "H200", [unsafe], [], "measured", None, 0.0, "", graph_buckets=[1, 16])
    with pytest.raises(FailedPrecondition, match="wrong on CUDA-graph replay"):
        resolve_forced(decisions, "autoawq_gemv_cuda")


def test_plugins_come_from_flags_env_and_entry_points(plugin_path, monkeypatch):
    monkeypatch.setenv(plugins.ENV_VAR, "trust_plugins:Stale, trust_plugins:DenseFloat")
    specs = plugins.specs_from(["trust_plugins:Aborts", "trust_plugins:Stale"])
    assert specs[:3] == ["trust_plugins:Aborts", "trust_plugins:Stale", "trust_plugins:DenseFloat"]
    loaded = plugins.activate(["nocolon", "trust_plugins:DenseFloat", "trust_plugins:DenseFloat"], registry.CANDIDATES)
    assert [(p.spec, p.error) for p in loaded] == [
        ("nocolon", "expected MODULE:CLASS, got 'nocolon'"),
        ("trust_plugins:DenseFloat", ""),
    ]
    assert registry.build("plugin_dense_fp32").name == "plugin_dense_fp32"
    reports = {r.name: r for r in candidate_reports(H200)}
    assert not reports["plugin_dense_fp32"].supported and "CPU-only test kernel" in reports["plugin_dense_fp32"].reason


def test_a_plugin_named_like_a_builtin_is_refused(plugin_path, tmp_path, monkeypatch):
    (tmp_path / "clash.py").write_text(
        "from trust_plugins import DenseFloat\nclass Clash(DenseFloat):\n    name = 'reference_torch'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (loaded,) = plugins.activate(["clash:Clash"], registry.CANDIDATES)
    assert loaded.error == "name 'reference_torch' is taken by a built-in candidate"
    assert registry.build("reference_torch").__class__.__name__ == "ReferenceTorch"


def test_a_cuda_device_gets_the_replay_check_in_its_fingerprint():
    from awqd.kernels import cache

    parts = cache.fingerprint_parts(H200, SHAPES, GROUP_SIZE, [1, 16], ["m:C"], [1, 16])
    assert parts["graph_buckets"] == "1,16" and parts["candidate_plugins"] == "m:C"
