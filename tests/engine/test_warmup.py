"""Warm-up of a loaded model on the CPU with the demo model: what it runs, and that a model failing it is listed as
failed, with the reason, while another model keeps serving. The daemon-level checks (warm before SERVING, a burst
right after it) are in test_generate.py and test_load_faults.py."""

import gc
import threading

import pytest
import torch

from awqd import metrics
from awqd.config import EngineSettings
from awqd.engine import model as engine_model
from awqd.engine.build import build_engine
from awqd.engine.kv_cache import BLOCK_TOKENS, blocks_for
from awqd.engine.layers.attention import attention_after_cached
from awqd.engine.request import GenerateParams
from awqd.engine.scheduler import Scheduler
from awqd.engine.sequence import Finished, Job
from awqd.engine.warmup import CACHED_HIT_TOKENS, burst_lengths, prefill_sizes, warm_up
from awqd.errors import FailedPrecondition, ResourceExhausted, Unavailable, WarmupFailed
from awqd.hosting.manager import ModelManager
from awqd.kernels.base import Candidate, Dispatch
from awqd.kernels.candidates.dequant_matmul_cpu import DequantMatmulCpu
from awqd.kernels.candidates.reference_torch import ReferenceTorch
from awqd.kernels.linear import KernelRouter
from awqd.kernels.triton import compilations
from awqd.models.loader import load_model


class CpuPlanner:
    """The KernelPlanner the daemon would be on a CPU node whose selection switches kernel with the batch size."""

    def plan(self, torch_device: str, kernel: str) -> tuple[Dispatch, list[Candidate]]:
        return Dispatch(buckets=(1, 8, 64), candidates=(ReferenceTorch(), DequantMatmulCpu(), DequantMatmulCpu())), []

    def resolve(self, torch_device: str, kernel: str) -> Candidate:
        raise FailedPrecondition(f"no kernel overrides in this test: {kernel}")


@pytest.fixture
def manager(tmp_path):
    models = ModelManager(tmp_path, "cpu", CpuPlanner(), EngineSettings(kv_cache_tokens=4096, max_batch_size=8))
    try:
        yield models
    finally:
        models.close()


def generate(manager: ModelManager, name: str, new_tokens: int = 4) -> Finished:
    params = GenerateParams(name, "", (5, 6, 7), new_tokens, 0.0, None, 0, None, (), "")
    job = Job(params, [5, 6, 7], pinned=None)
    manager.ready(name).scheduler.submit(job)
    return list(job.results())[-1]


def test_prefill_sizes_cover_each_bucket_at_both_specialisations_within_capacity():
    assert prefill_sizes((1, 8, 64), 4096) == (1, 7, 8, 63, 64)
    assert prefill_sizes((1, 2, 512), 100) == (1, 2, 99, 100)  # the KV cache holds 100 tokens: no longer step
    # No admission takes more than --prefill-tokens-per-step tokens: the largest bucket is warmed at that size.
    assert prefill_sizes((1, 16384), 8192) == (1, 8191, 8192)


def test_the_burst_is_the_largest_admission_step_as_prompts_of_mixed_lengths():
    lengths = burst_lengths(8192, rows=256, max_len=4095, free_blocks=10_000)
    assert sum(lengths) == 8192 and len(lengths) == 64  # a wave of 64 clients' ~128-token prompts
    assert min(lengths) == 64 and max(lengths) == 192 and len(set(lengths)) > 32
    # Capped by the batch rows, by the longest sequence, and by the KV cache's free blocks.
    assert len(burst_lengths(8192, rows=8, max_len=4095, free_blocks=10_000)) == 8
    assert max(burst_lengths(8192, rows=2, max_len=1000, free_blocks=10_000)) <= 1000
    fitted = burst_lengths(8192, rows=256, max_len=4095, free_blocks=300)
    assert sum(blocks_for(n) for n in fitted) <= 300 and len(fitted) > 1
    assert burst_lengths(100, rows=256, max_len=4095, free_blocks=10_000) == [100]  # too small for a burst


def test_a_model_still_loading_answers_unavailable_with_a_retry_hint(manager, demo_model_dir):
    manager.announce("demo", demo_model_dir, "", "auto")  # as boot lists it before its load and warm-up
    with pytest.raises(Unavailable, match="still loading") as refused:
        manager.ready("demo")
    assert refused.value.retry_after_ms and "retry after about" in str(refused.value)


def test_a_loaded_model_is_ready_only_once_warm(manager, demo_model_dir):
    hosted = manager.load("demo", demo_model_dir)
    assert hosted.state == "ready"
    report = hosted.warmup
    assert report is not None and report.finished_at >= report.started_at and report.duration_s > 0
    # The dispatch buckets at both specialisations, then the burst: the largest admission step as many prompts.
    assert report.prefill_tokens[:5] == (1, 7, 8, 63, 64) and len(report.prefill_tokens) == 6
    burst = report.prefill_tokens[-1]
    assert 3000 < burst <= 4096 and any(f"prefill of {burst} tokens as " in what for what, _ in report.slowest)
    assert report.decode_batches == (1, 2, 4, 8) == hosted.scheduler.runner.batch_buckets
    assert report.graphs == 0 and report.graph_memory_bytes == 0  # no CUDA graphs on the CPU
    assert any("on the CPU" in note for note in report.notes)
    assert hosted.load_seconds >= report.duration_s
    assert generate(manager, "demo").completion_tokens == 4


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_warm_up_runs_a_pass_after_a_prefix_cache_hit_when_the_cache_is_on(
    tmp_path, demo_model_dir, monkeypatch, prefix_caching
):
    """A first hit's pass would otherwise pay for what it alone runs (the cached starts' gather, attention over more
    keys than queries); the warm-up's own blocks all go back."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[1])  # the prompts' rest lengths
        return attention_after_cached(*args, **kwargs)

    monkeypatch.setattr(engine_model, "attention_after_cached", counted)
    settings = EngineSettings(kv_cache_tokens=4096, max_batch_size=8, prefix_caching=prefix_caching)
    manager = ModelManager(tmp_path, "cpu", CpuPlanner(), settings)
    try:
        hosted = manager.load("demo", demo_model_dir)
        layers = hosted.scheduler.runner.model.shape.num_layers
        rest = 2 * CACHED_HIT_TOKENS - CACHED_HIT_TOKENS  # each of the two prompts, less its cached start
        assert calls == ([[rest, rest]] * layers if prefix_caching else [])
        blocks = hosted.scheduler.blocks
        assert blocks.free_blocks == blocks.blocks
    finally:
        manager.close()


def test_warm_up_runs_a_lone_prompts_pass_after_a_hit_at_every_bucket_pair(demo_model_dir):
    """What a GPU engine captures before it turns ready for a lone prompt after a hit (its rest padded, over its
    gathered keys), run eagerly on the CPU: every (rows, keys) pair some hit reaches, only with the cache on."""
    router = KernelRouter(CpuPlanner().plan("cpu", "auto")[0])
    for prefix_caching in (True, False):
        loaded = load_model(demo_model_dir, torch.device("cpu"), router, fuse=True)
        settings = EngineSettings(kv_cache_tokens=4096, max_batch_size=2, prefix_caching=prefix_caching)
        scheduler = build_engine("demo", loaded, router, settings)
        try:
            runner = scheduler.runner
            runner.prefill_buckets = (8, 16)
            passes = []
            served = runner.prefill_after_hit

            def counted(prompt, table, cached, rows, keys, served=served, passes=passes):
                passes.append((rows, keys))
                return served(prompt, table, cached, rows, keys)

            runner.prefill_after_hit = counted
            warm_up("demo", scheduler)
            if prefix_caching:
                assert passes == runner.hit_shapes() and (8, 32) in passes and (16, 32) in passes
            else:
                assert passes == []
        finally:
            scheduler.close()


def test_a_kv_cache_too_small_for_the_hit_pass_still_loads_and_says_so(tmp_path, demo_model_dir):
    settings = EngineSettings(kv_cache_tokens=6 * BLOCK_TOKENS, max_batch_size=2)
    manager = ModelManager(tmp_path, "cpu", CpuPlanner(), settings)
    try:
        hosted = manager.load("demo", demo_model_dir)
        assert hosted.state == "ready"
        assert any("no pass after a prefix-cache hit" in note for note in hosted.warmup.notes)
    finally:
        manager.close()


def test_a_model_failing_warm_up_is_failed_with_the_reason_and_the_other_serves(manager, demo_model_dir, nan_model_dir):
    manager.load("good", demo_model_dir)
    with pytest.raises(WarmupFailed) as failed:
        manager.load("broken", nan_model_dir)
    assert "warm-up failed: prefill of 1 tokens gave non-finite logits" in str(failed.value)
    listed = {hosted.name: hosted for hosted in manager.list()}
    assert listed["broken"].state == "failed" and "non-finite logits" in listed["broken"].error
    assert listed["broken"].scheduler is None and listed["broken"].warmup is None
    assert "model-broken" not in [thread.name for thread in threading.enumerate()], "its engine thread was stopped"
    gc.collect()  # nothing keeps its engine (and so its KV cache) alive, not even the error the caller holds
    assert not [o for o in gc.get_objects() if isinstance(o, Scheduler) and o.name == "broken"]
    with pytest.raises(FailedPrecondition, match="warm-up failed"):
        manager.ready("broken")
    assert generate(manager, "good").completion_tokens == 4


def test_a_kv_cache_below_one_block_fails_the_load_with_the_reason(tmp_path, demo_model_dir):
    manager = ModelManager(tmp_path, "cpu", CpuPlanner(), EngineSettings(kv_cache_tokens=1, max_batch_size=1))
    try:
        with pytest.raises(ResourceExhausted, match="below one 16-token block"):
            manager.load("demo", demo_model_dir)
        assert manager.list()[0].state == "failed"
    finally:
        manager.close()


def test_triton_compilations_are_counted_by_phase_so_one_after_warm_up_stands_out():
    from triton import knobs

    before = knobs.runtime.jit_post_compile_hook
    try:
        assert compilations.watch() and knobs.runtime.jit_post_compile_hook is compilations.compiled
    finally:
        knobs.runtime.jit_post_compile_hook = before

    def count(phase: str) -> float:
        return metrics.TRITON_COMPILATIONS.labels(phase)._value.get()

    load, serving = count("load"), count("serving")
    with compilations.loading():
        compilations.compiled(fn="gemm_kernel", key="sig-a", is_manual_warmup=False, already_compiled=False)
    compilations.compiled(fn="gemm_kernel", key="sig-b", is_manual_warmup=False, already_compiled=False)
    assert (count("load") - load, count("serving") - serving) == (1, 1)
