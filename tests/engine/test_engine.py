"""The decode engine on the CPU with the AutoAWQ-quantized demo model: the plain-torch decoder against transformers'
forward, batched prefill against one prompt at a time, fused projections, continuous batching against one-at-a-time
runs, sampling, and admission control.

Everything here runs in-process on the real model and the real scheduler thread; the gRPC side is covered by
test_generate.py and test_load_faults.py.
"""

import copy
import dataclasses
import random
import threading
import time

import pytest
import torch
from prometheus_client import REGISTRY

from awqd.config import EngineSettings, ServeConfig
from awqd.engine import step
from awqd.engine.build import build_engine
from awqd.engine.kv_cache import BLOCK_TOKENS, PADDING_BLOCK, BlockTables, allocate, plan_kv_cache
from awqd.engine.model import DecoderModel, ModelShape
from awqd.engine.request import GenerateParams
from awqd.engine.sequence import Finished, Job
from awqd.errors import InvalidArgument, ResourceExhausted
from awqd.kernels.base import Dispatch
from awqd.kernels.candidates.dequant_matmul_cpu import DequantMatmulCpu
from awqd.kernels.candidates.reference_torch import ReferenceTorch
from awqd.kernels.linear import AwqLinear, KernelRouter
from awqd.models.loader import load_model
from awqd.quant.tensors import QuantizedWeight, concat_out_features

CPU = torch.device("cpu")


def reference_router() -> KernelRouter:
    return KernelRouter(Dispatch.single(ReferenceTorch()))


@pytest.fixture(scope="module")
def hf_model(demo_model_dir):
    return load_model(demo_model_dir, CPU, reference_router())


@pytest.fixture(scope="module")
def fused_model(demo_model_dir):
    router = reference_router()
    return load_model(demo_model_dir, CPU, router, fuse=True), router


def params(max_new_tokens: int, **options) -> GenerateParams:
    fields = {"temperature": 0.0, "top_p": None, "top_k": 0, "seed": None, "stop": (), "kernel": ""}
    fields.update(options)
    return GenerateParams("demo", "", (), max_new_tokens, **fields)


def tokens_of(job: Job) -> tuple[list[int], Finished]:
    events = list(job.results())
    return [t for event in events[:-1] for t in event.token_ids], events[-1]


def run_alone(scheduler, prompt: list[int], request: GenerateParams) -> tuple[list[int], Finished]:
    job = Job(request, prompt, pinned=None)
    scheduler.submit(job)
    return tokens_of(job)


def random_prompts(count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, 2000) for _ in range(rng.randrange(1, 40))] for _ in range(count)]


def submit_together(scheduler, jobs: list[Job]) -> None:
    """Queues the jobs behind an exclusive run, then ends that run: one step boundary admits them all."""
    blocker = Job(params(min(400, scheduler.max_sequence_tokens - 3)), [5, 6, 7], pinned=None, exclusive=True)
    scheduler.submit(blocker)
    next(blocker.results())
    for job in jobs:
        scheduler.submit(job)
    blocker.cancelled.set()
    tokens_of(blocker)


def switching_engine(demo_model_dir, max_batch_size: int, **settings):
    """A scheduler on a dispatch that switches kernel with the batch size, as on a real device: the reference for
    one token, the int4-packed CPU kernel from 2 tokens on."""
    router = KernelRouter(Dispatch(buckets=(1, 512), candidates=(ReferenceTorch(), DequantMatmulCpu())))
    loaded = load_model(demo_model_dir, CPU, router, fuse=True)
    return build_engine(
        "demo", loaded, router, EngineSettings(kv_cache_tokens=4096, max_batch_size=max_batch_size, **settings)
    )


@pytest.fixture
def engine(demo_model_dir):
    scheduler = switching_engine(demo_model_dir, max_batch_size=8)
    try:
        yield scheduler
    finally:
        scheduler.close()


def test_fused_projections_equal_the_separate_ones():
    generator = torch.Generator().manual_seed(0)

    def weight(out_features: int) -> QuantizedWeight:
        return QuantizedWeight(
            q=torch.randint(0, 16, (out_features, 256), dtype=torch.uint8, generator=generator),
            zeros=torch.randint(0, 16, (out_features, 2), dtype=torch.uint8, generator=generator),
            scales=(torch.rand(out_features, 2, generator=generator) * 0.01).half(),
            group_size=128,
            bias=torch.randn(out_features, generator=generator).half(),
        )

    parts = [weight(64), weight(32), weight(32)]
    router = reference_router()
    x = torch.randn(5, 256, generator=generator)
    separate = torch.cat([AwqLinear(w, router, CPU)(x) for w in parts], dim=-1)
    fused = AwqLinear(concat_out_features(parts), router, CPU)(x)
    assert torch.equal(fused, separate)


def test_engine_logits_match_the_transformers_forward(hf_model, fused_model):
    loaded, _ = fused_model
    model = DecoderModel(loaded)
    shape = model.shape
    plan = plan_kv_cache(shape.kv_bytes_per_token(model.dtype), 512, CPU, 0.9, 2048)
    cache = allocate(plan, shape.num_layers, shape.num_kv_heads, shape.head_dim, model.dtype, CPU)
    blocks = BlockTables(plan.blocks)
    blocks.grow("other", 3 * BLOCK_TOKENS)  # so the sequence's blocks do not start at 1
    blocks.grow("sequence", 25)
    ids = list(range(10, 50))
    with torch.inference_mode():
        expected = hf_model.model(torch.tensor([ids])).logits[0]
        prefill = model.prefill([torch.tensor(ids[:25])], torch.tensor([blocks.table("sequence")]).int(), cache)[0]
        torch.testing.assert_close(prefill, expected[24], rtol=1e-5, atol=1e-5)
        for position in range(25, 40):  # decode row 2 of a 4-row batch; rows 0, 1, 3 are padding
            blocks.grow("other", 3 * BLOCK_TOKENS + position)  # the sequences' blocks interleave
            blocks.grow("sequence", position + 1)
            tokens, positions, tables = [0] * 4, [0] * 4, torch.zeros(4, plan.max_blocks_per_seq, dtype=torch.int32)
            tokens[2], positions[2] = ids[position], position
            table = blocks.table("sequence")
            tables[2, : len(table)] = torch.tensor(table)
            logits = model.decode(torch.tensor(tokens), torch.tensor(positions), tables, cache)
            torch.testing.assert_close(logits[2], expected[position], rtol=1e-5, atol=1e-5)
    table = blocks.table("sequence")
    assert table != list(range(table[0], table[0] + len(table))), "the test meant to interleave the blocks"


@pytest.mark.parametrize("sliding_window", [None, 6])
def test_batched_prefill_equals_each_prompt_alone(fused_model, sliding_window):
    loaded, _ = fused_model
    config = copy.copy(loaded.config)
    config.sliding_window = sliding_window  # the demo model has none; 6 cuts into the two longer prompts
    model = DecoderModel(dataclasses.replace(loaded, config=config))
    shape = model.shape
    assert shape.sliding_window == sliding_window
    plan = plan_kv_cache(shape.kv_bytes_per_token(model.dtype), 64, CPU, 0.9, 256)
    batched_cache, alone_cache = (
        allocate(plan, shape.num_layers, shape.num_kv_heads, shape.head_dim, model.dtype, CPU) for _ in range(2)
    )
    prompts = [torch.arange(10, 15), torch.arange(100, 132), torch.arange(500, 521)]
    tables = torch.tensor([[7, 0], [3, 1], [2, 6]], dtype=torch.int32)  # out of order; blocks 4 and 5 stay empty
    with torch.inference_mode():
        batched = model.prefill(prompts, tables, batched_cache)
        alone = torch.cat([model.prefill([p], tables[i : i + 1], alone_cache) for i, p in enumerate(prompts)])
    assert batched.shape == (3, shape.vocab_size)
    torch.testing.assert_close(batched, alone, rtol=1e-6, atol=1e-6)
    for batched_kv, alone_kv in zip(batched_cache.k + batched_cache.v, alone_cache.k + alone_cache.v, strict=True):
        torch.testing.assert_close(batched_kv, alone_kv, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sliding_window", [None, 20])
def test_a_prefill_after_a_cached_prefix_equals_the_whole_prompts(fused_model, sliding_window):
    """Three prompts prefilled whole, against the same three where the cache already holds the start of two (whole
    blocks, shared by both, as a prefix-cache hit leaves them) and the pass runs only the rest: the same logits and
    the same k/v in every block. A window of 20 cuts into the 32 cached positions."""
    loaded, _ = fused_model
    config = copy.copy(loaded.config)
    config.sliding_window = sliding_window
    model = DecoderModel(dataclasses.replace(loaded, config=config))
    shape = model.shape
    plan = plan_kv_cache(shape.kv_bytes_per_token(model.dtype), 64, CPU, 0.9, 256)
    whole_cache, cached_cache = (
        allocate(plan, shape.num_layers, shape.num_kv_heads, shape.head_dim, model.dtype, CPU) for _ in range(2)
    )
    start = torch.arange(100, 132)  # two blocks
    prompts = [
        torch.cat([start, torch.arange(7, 12)]),
        torch.arange(500, 521),
        torch.cat([start, torch.arange(40, 59)]),
    ]
    tables = torch.tensor([[3, 1, 7, 0], [2, 6, 0, 0], [3, 1, 4, 5]], dtype=torch.int32)  # blocks 3 and 1 shared
    with torch.inference_mode():
        whole = model.prefill(prompts, tables, whole_cache)
        model.prefill([start], tables[:1], cached_cache)  # an earlier prompt wrote blocks 3 and 1
        rests = [prompts[0][32:], prompts[1], prompts[2][32:]]
        after_cached = model.prefill(rests, tables, cached_cache, cached=[32, 0, 32])
    torch.testing.assert_close(after_cached, whole, rtol=1e-5, atol=1e-5)
    for whole_kv, cached_kv in zip(whole_cache.k + whole_cache.v, cached_cache.k + cached_cache.v, strict=True):
        torch.testing.assert_close(cached_kv, whole_kv, rtol=1e-5, atol=1e-5)


def test_engine_greedy_tokens_match_transformers_greedy(hf_model, fused_model, demo_model_dir):
    loaded, router = fused_model
    scheduler = build_engine("demo", loaded, router, EngineSettings(kv_cache_tokens=1024))
    try:
        prompt = hf_model.tokenizer("The weather today")["input_ids"]
        ours, finished = run_alone(scheduler, prompt, params(24))
    finally:
        scheduler.close()
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(24):
            ids.append(int(hf_model.model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert finished.finish_reason == "length"
    assert ours == ids[len(prompt) :]


def test_batched_greedy_equals_one_at_a_time_with_joins_and_leaves(demo_model_dir):
    prompts = random_prompts(10)
    lengths = [6 + 3 * (index % 4) for index in range(len(prompts))]  # sequences leave at different steps
    # Decoding at every boundary, so each arrival joins a batch that is already decoding.
    engine = switching_engine(demo_model_dir, max_batch_size=8, max_decode_stall_ms=0)
    try:
        alone = [run_alone(engine, prompt, params(length))[0] for prompt, length in zip(prompts, lengths, strict=True)]
        jobs = []
        for prompt, length in zip(prompts, lengths, strict=True):  # arrivals spread over steps: joins mid-batch
            jobs.append(Job(params(length), prompt, pinned=None))
            engine.submit(jobs[-1])
            time.sleep(0.01)
        results = [tokens_of(job) for job in jobs]
    finally:
        engine.close()
    assert [tokens for tokens, _ in results] == alone
    decode_buckets = {use.batch_tokens for _, done in results for use in done.kernels if use.phase == "decode"}
    assert len(decode_buckets) > 1, f"the batch never changed size: {decode_buckets}"
    kernels = {use.kernel for _, done in results for use in done.kernels if use.phase == "decode"}
    assert kernels == {"reference_torch", "dequant_matmul_cpu"}, "each step's kernel comes from its bucket"


def prefill_uses(finished: Finished) -> set[tuple[int, str, int]]:
    return {(use.batch_tokens, use.kernel, use.steps) for use in finished.kernels if use.phase == "prefill"}


def test_prompts_admitted_together_are_prefilled_in_one_pass(engine):
    prompts = [[21], [22], [23]]  # one token each: alone a 1-token prefill, together one 3-token prefill
    alone = [run_alone(engine, prompt, params(6)) for prompt in prompts]
    jobs = [Job(params(6), prompt, pinned=None) for prompt in prompts]
    submit_together(engine, jobs)
    together = [tokens_of(job) for job in jobs]
    assert [tokens for tokens, _ in together] == [tokens for tokens, _ in alone]
    assert all(prefill_uses(finished) == {(1, "reference_torch", 1)} for _, finished in alone)
    assert all(prefill_uses(finished) == {(512, "dequant_matmul_cpu", 1)} for _, finished in together)


def test_a_boundary_prefills_at_most_prefill_tokens_per_step(demo_model_dir):
    router = KernelRouter(Dispatch(buckets=(1, 512), candidates=(ReferenceTorch(), DequantMatmulCpu())))
    loaded = load_model(demo_model_dir, CPU, router, fuse=True)
    scheduler = build_engine("demo", loaded, router, EngineSettings(kv_cache_tokens=1024, prefill_tokens_per_step=2))
    try:
        jobs = [Job(params(3), [token], pinned=None) for token in (21, 22, 23)]
        submit_together(scheduler, jobs)
        uses = [prefill_uses(tokens_of(job)[1]) for job in jobs]
    finally:
        scheduler.close()
    # The first two fit the boundary's 2 tokens (one 2-token pass); the third is prefilled alone at the next one.
    assert uses == [{(512, "dequant_matmul_cpu", 1)}] * 2 + [{(1, "reference_torch", 1)}]


def decode_uses(finished: Finished) -> set[tuple[int, str]]:
    return {(use.batch_tokens, use.kernel) for use in finished.kernels if use.phase == "decode"}


@pytest.mark.parametrize("stall_ms", [0.0, 60_000.0])
def test_a_burst_is_prefilled_before_the_running_batch_decodes_again_for_up_to_the_stall_limit(
    demo_model_dir, stall_ms
):
    router = KernelRouter(Dispatch(buckets=(1, 512), candidates=(ReferenceTorch(), DequantMatmulCpu())))
    loaded = load_model(demo_model_dir, CPU, router, fuse=True)
    settings = EngineSettings(kv_cache_tokens=1024, prefill_tokens_per_step=1, max_decode_stall_ms=stall_ms)
    scheduler = build_engine("demo", loaded, router, settings)
    try:
        jobs = [Job(params(4), [token], pinned=None) for token in (21, 22, 23)]
        submit_together(scheduler, jobs)
        first = tokens_of(jobs[0])[1]
        for job in jobs[1:]:
            tokens_of(job)
    finally:
        scheduler.close()
    # One prompt per boundary. Decoding at every boundary, the first decodes alone (the 1-token bucket's kernel)
    # before the second is admitted; with the burst first, it decodes only with all three (the 512 bucket's).
    if stall_ms:
        assert decode_uses(first) == {(512, "dequant_matmul_cpu")}
    else:
        assert (1, "reference_torch") in decode_uses(first)


def test_pinned_group_keeps_its_kernel_when_one_of_it_ends_at_its_first_token(engine):
    pinned = ReferenceTorch()
    short = Job(params(1, kernel=pinned.name), [31, 32, 33], pinned)
    # long holds slot 1, so its decode steps run 2 rows, which unpinned would go to the CPU kernel: a lost pin shows.
    long = Job(params(8, kernel=pinned.name), [34, 35, 36], pinned)
    submit_together(engine, [short, long])
    assert tokens_of(short)[1].finish_reason in ("length", "eos")
    assert {use.kernel for use in tokens_of(long)[1].kernels} == {pinned.name}


def test_failing_prefill_fails_only_its_group(demo_model_dir, monkeypatch):
    scheduler = switching_engine(demo_model_dir, max_batch_size=3)
    try:
        prompt = random_prompts(1, seed=11)[0]
        expected, alone = run_alone(scheduler, prompt, params(200))
        assert alone.finish_reason == "length"
        running = Job(params(200), prompt, pinned=None)
        scheduler.submit(running)
        first = next(running.results())

        def failing_prefill(prompts, tables, cache, cached):
            raise RuntimeError(f"injected fault in a prefill of {len(prompts)} prompts")

        monkeypatch.setattr(scheduler.runner.model, "prefill", failing_prefill)
        failed = [Job(params(4), p, pinned=None) for p in random_prompts(2, seed=12)]
        for job in failed:
            scheduler.submit(job)
        for job in failed:
            with pytest.raises(RuntimeError, match="injected fault in a prefill"):
                tokens_of(job)
        monkeypatch.undo()
        # The rows the failed jobs held must be free again: these two run while `running` still holds its own.
        later = [Job(params(4), p, pinned=None) for p in random_prompts(2, seed=13)]
        for job in later:
            scheduler.submit(job)
        assert all(tokens_of(job)[1].finish_reason in ("length", "eos") for job in later)
        later_done = time.perf_counter()
        rest, finished = tokens_of(running)
        assert finished.finish_reason == "length" and [*first.token_ids, *rest] == expected
        assert later_done < running.received_at + finished.total_ms / 1000, "a failed job's row was not freed"
        assert scheduler.blocks.used_blocks == 0
    finally:
        scheduler.close()


def test_seeded_sampling_is_the_same_alone_and_in_a_batch(engine):
    prompt = random_prompts(1, seed=3)[0]
    sampled = params(16, temperature=0.9, top_p=0.9, top_k=50, seed=1234)
    alone = run_alone(engine, prompt, sampled)[0]
    others = [Job(params(16, temperature=1.0, seed=index), p, None) for index, p in enumerate(random_prompts(5))]
    for job in others:
        engine.submit(job)
    assert run_alone(engine, prompt, sampled)[0] == alone
    for job in others:
        tokens_of(job)
    assert run_alone(engine, prompt, params(16, temperature=0.9, seed=99))[0] != alone  # the seed matters
    greedy = run_alone(engine, prompt, params(16))[0]
    assert run_alone(engine, prompt, params(16, temperature=0.7, top_k=1, seed=5))[0] == greedy
    assert run_alone(engine, prompt, params(16, temperature=1e-40, seed=5))[0] == greedy


def test_cancelled_sequence_leaves_at_once(engine):
    long_job = Job(params(400), random_prompts(1)[0], pinned=None)
    engine.submit(long_job)
    next(long_job.results())
    long_job.cancelled.set()
    _, finished = tokens_of(long_job)
    assert finished.finish_reason == "cancelled" and finished.completion_tokens < 400
    assert run_alone(engine, [5, 6, 7], params(3))[1].completion_tokens == 3


def test_request_that_cannot_fit_the_kv_cache_is_refused(demo_model_dir):
    router = reference_router()
    loaded = load_model(demo_model_dir, CPU, router, fuse=True)
    scheduler = build_engine("demo", loaded, router, EngineSettings(kv_cache_tokens=64))
    try:
        assert scheduler.runner.cache.plan.blocks == 4 and scheduler.max_sequence_tokens == 64
        with pytest.raises(InvalidArgument) as refused:
            scheduler.submit(Job(params(40), list(range(10, 40)), pinned=None))
        assert refused.value.field == "max_new_tokens" and "KV-cache" in refused.value.reason
        assert "64" in refused.value.reason
        assert run_alone(scheduler, list(range(10, 40)), params(30))[1].completion_tokens == 30  # 60 fits
    finally:
        scheduler.close()


def preemption_engine(demo_model_dir, preemption: str, swap_blocks: int | None = None):
    """Eight blocks of KV cache; with `swap_blocks`, a swap space of exactly that many blocks (else the default,
    capped at the cache's eight)."""
    router = reference_router()
    loaded = load_model(demo_model_dir, CPU, router, fuse=True)
    settings = EngineSettings(kv_cache_tokens=8 * BLOCK_TOKENS, max_batch_size=8, preemption=preemption)
    if swap_blocks is not None:
        block_bytes = BLOCK_TOKENS * ModelShape.from_config(loaded.config).kv_bytes_per_token(loaded.model.dtype)
        settings = dataclasses.replace(settings, swap_space_gib=swap_blocks * block_bytes / 2**30)
    scheduler = build_engine("demo", loaded, router, settings)
    assert scheduler.runner.cache.plan.blocks == 8
    expected_swap_blocks = 0 if preemption == "recompute" else 8 if swap_blocks is None else swap_blocks
    assert scheduler.swap.tables.blocks == expected_swap_blocks
    return scheduler


@pytest.mark.parametrize(
    ("preemption", "swap_blocks"),
    [("swap", None), ("recompute", None), ("swap", 2)],
    ids=["swap", "recompute", "swap-space-full-falls-back-to-recompute"],
)
def test_preempted_sequences_give_the_tokens_they_would_have_given_unpreempted(demo_model_dir, preemption, swap_blocks):
    """Eight blocks of KV cache for four sequences that need four each: decode runs out of blocks, the newest are
    preempted, and every stream still gets its own tokens (greedy, and seeded sampling). Swapped-out ones resume
    decoding with no prefill; recomputed ones are prefilled again. With two host blocks, the first preempted (two
    blocks written) fills the swap space, and the second falls back to recompute."""
    scheduler = preemption_engine(demo_model_dir, preemption, swap_blocks)
    try:
        # One shared first block (the prefix cache keeps it: each run alone takes and releases it last), then their own.
        prompts = [[*range(20, 36), *(token + index for token in range(36, 40))] for index in range(4)]
        requests = [params(40), params(40), params(40, temperature=0.9, top_k=40, seed=77), params(40)]
        alone = [run_alone(scheduler, p, r)[0] for p, r in zip(prompts, requests, strict=True)]
        assert scheduler.preemptions == 0
        jobs = [Job(request, prompt, pinned=None) for prompt, request in zip(prompts, requests, strict=True)]
        submit_together(scheduler, jobs)
        together = [tokens_of(job) for job in jobs]
        swapped, recomputed = scheduler.preempted_by["swap"], scheduler.preempted_by["recompute"]
        assert scheduler.preemptions == swapped + recomputed > 0, "the cache was meant to run out of blocks"
        if preemption == "recompute":
            assert swapped == 0
        elif swap_blocks is None:
            assert recomputed == 0
        else:
            assert swapped > 0 and recomputed > 0
        assert [tokens for tokens, _ in together] == alone
        assert all(finished.completion_tokens == len(tokens) for tokens, finished in together)
        # A preempted one still reports the shared block it was admitted with when it ends.
        assert all(finished.cached_prompt_tokens == BLOCK_TOKENS for _, finished in together)
        prefills = sum(use.steps for _, finished in together for use in finished.kernels if use.phase == "prefill")
        assert prefills == len(jobs) + recomputed, "a recompute is one more prefill; a swap-in is none"
        assert scheduler.blocks.used_blocks == 0 and scheduler.swap.tables.used_blocks == 0
        assert scheduler.queue_depth == 0
    finally:
        scheduler.close()


@pytest.mark.parametrize("preemption", ["swap", "recompute"])
def test_a_preempted_sequence_can_be_cancelled_and_its_blocks_come_back(demo_model_dir, preemption):
    """Four sequences of 120 tokens on a cache that holds one: the newest is preempted first, and waits (swapped out,
    in swap mode) until the oldest is done. Cancelled meanwhile, it ends at once, and its device and host blocks are
    free."""
    scheduler = preemption_engine(demo_model_dir, preemption)
    try:
        jobs = [Job(params(100), [token + index for token in range(20, 40)], pinned=None) for index in range(4)]
        submit_together(scheduler, jobs)
        deadline = time.monotonic() + 60
        while scheduler.preemptions == 0:
            assert time.monotonic() < deadline, "the cache was meant to run out of blocks"
            time.sleep(0.005)
        assert (scheduler.swap.tables.used_blocks > 0) == (preemption == "swap")
        newest = jobs[-1]  # the first one preempted
        newest.cancelled.set()
        tokens, finished = tokens_of(newest)
        assert finished.finish_reason == "cancelled" and finished.completion_tokens == len(tokens) < 100
        assert all(tokens_of(job)[1].finish_reason == "length" for job in jobs[:-1])
        assert scheduler.blocks.used_blocks == 0 and scheduler.swap.tables.used_blocks == 0
        assert scheduler.queue_depth == 0
    finally:
        scheduler.close()


def test_preemption_settings_are_checked():
    with pytest.raises(InvalidArgument) as policy:
        ServeConfig(engine=EngineSettings(preemption="evict"))
    assert policy.value.field == "--preemption" and "swap or recompute" in policy.value.reason
    with pytest.raises(InvalidArgument) as space:
        ServeConfig(engine=EngineSettings(swap_space_gib=-1))
    assert space.value.field == "--swap-space-gib"
    with pytest.raises(InvalidArgument) as stall:
        ServeConfig(engine=EngineSettings(max_decode_stall_ms=-1))
    assert stall.value.field == "--max-decode-stall-ms"


def test_full_queue_is_refused_with_a_retry_hint_and_waiting_too_long_expires(demo_model_dir):
    router = reference_router()
    loaded = load_model(demo_model_dir, CPU, router, fuse=True)
    settings = EngineSettings(kv_cache_tokens=2048, max_batch_size=1, max_queued_requests=1, queue_timeout_s=0.5)
    scheduler = build_engine("demo", loaded, router, settings)
    try:
        running = Job(params(450), [5, 6, 7], pinned=None)
        scheduler.submit(running)
        next(running.results())  # it holds the only slot
        queued = Job(params(4), [5, 6, 7], pinned=None)
        scheduler.submit(queued)
        with pytest.raises(ResourceExhausted) as refused:
            scheduler.submit(Job(params(4), [5, 6, 7], pinned=None))
        assert refused.value.retry_after_ms and refused.value.retry_after_ms >= 50
        assert "retry after" in str(refused.value) and "--max-queued-requests 1" in str(refused.value)
        with pytest.raises(ResourceExhausted) as expired:
            tokens_of(queued)
        assert "--queue-timeout" in str(expired.value) and expired.value.retry_after_ms
        running.cancelled.set()
        assert tokens_of(running)[1].finish_reason == "cancelled"
        assert run_alone(scheduler, [5, 6, 7], params(2))[1].completion_tokens == 2
    finally:
        scheduler.close()


def test_pinned_requests_run_their_kernel_at_every_batch_size(engine):
    prompts = random_prompts(6, seed=7)
    alone = [run_alone(engine, prompt, params(8))[0] for prompt in prompts]
    # Three on the dispatch, then three pinned: the pinned ones wait for the first batch to drain, then batch.
    jobs = [Job(params(8), prompt, None) for prompt in prompts[:3]]
    jobs += [Job(params(8, kernel="reference_torch"), prompt, ReferenceTorch()) for prompt in prompts[3:]]
    for job in jobs:
        engine.submit(job)
    results = [tokens_of(job) for job in jobs]
    assert [tokens for tokens, _ in results] == alone
    for finished in [done for _, done in results[3:]]:
        assert {use.kernel for use in finished.kernels} == {"reference_torch"}
    pinned_buckets = {use.batch_tokens for _, done in results[3:] for use in done.kernels if use.phase == "decode"}
    assert max(pinned_buckets) > 1, "pinned requests batch with each other"


def test_unload_drains_queued_and_running_requests(demo_model_dir):
    router = reference_router()
    loaded = load_model(demo_model_dir, CPU, router, fuse=True)
    scheduler = build_engine("demo", loaded, router, EngineSettings(kv_cache_tokens=1024, max_batch_size=2))
    jobs = [Job(params(10), prompt, pinned=None) for prompt in random_prompts(4)]
    for job in jobs:
        scheduler.submit(job)
    closer = threading.Thread(target=scheduler.close)
    closer.start()
    assert all(tokens_of(job)[1].completion_tokens == 10 for job in jobs)
    closer.join(timeout=60)
    assert not closer.is_alive()


def test_a_prompt_alone_padded_to_its_bucket_prefills_as_unpadded_and_pads_only_into_the_padding_block(
    demo_model_dir,
):
    """What a GPU engine captures and replays for a prompt that comes alone, run eagerly: the same code, no capture."""
    scheduler = switching_engine(demo_model_dir, max_batch_size=4)
    try:
        runner, cache = scheduler.runner, scheduler.runner.cache
        assert runner.prefill_buckets == ()  # the CPU pads nothing unless told to
        prompt, table = list(range(300, 337)), [5, 9, 2]  # 37 tokens: blocks 5 and 9 full, 5 positions of block 2
        with torch.inference_mode():
            eager, eager_kernel = runner.prefill([prompt], [table])
            eager_kv = [layer.clone() for layer in cache.k + cache.v]
            for layer in cache.k + cache.v:
                layer.zero_()
            runner.prefill_buckets = (16, 48, 64)
            padded, padded_kernel = runner.prefill([prompt], [table])
        assert (eager_kernel.bucket, padded_kernel.bucket) == (
            runner.step_kernel(37).bucket,
            runner.step_kernel(48).bucket,
        )
        torch.testing.assert_close(padded, eager, rtol=1e-5, atol=1e-5)
        for before, after in zip(eager_kv, cache.k + cache.v, strict=True):
            for block, positions in ((5, 16), (9, 16), (2, 5)):
                torch.testing.assert_close(
                    after[block, :, :positions], before[block, :, :positions], rtol=1e-5, atol=1e-5
                )
            assert not after[2, :, 5:].any()  # the 11 padding rows wrote nothing into the prompt's own block ...
            untouched = [b for b in range(after.shape[0]) if b not in (5, 9, 2, PADDING_BLOCK)]
            assert not after[untouched].any()  # ... nor into any block but the padding block
    finally:
        scheduler.close()


def test_a_hit_without_a_graph_of_its_rest_replays_its_whole_prompt_and_writes_only_the_rest(
    demo_model_dir, monkeypatch
):
    """A lone prompt after a hit that has no graph of its rest (a GPU where flash does not serve its span) replays
    its whole prompt's padded pass instead, but leaves the shared blocks as they are: the cached positions' rows
    write to the padding block."""
    scheduler = switching_engine(demo_model_dir, max_batch_size=4)
    try:
        runner, cache = scheduler.runner, scheduler.runner.cache
        prompt, table = list(range(300, 337)), [5, 9, 2]
        with torch.inference_mode():
            eager, _ = runner.prefill([prompt], [table])
            eager_kv = [layer.clone() for layer in cache.k + cache.v]
            for layer in cache.k + cache.v:
                layer.fill_(7.0)  # block 5 stands for a shared block: its k/v must not be written again
            runner.prefill_buckets = (16, 48, 64)
            monkeypatch.setattr(runner, "hit_buckets", lambda length, cached: None)
            passes, padded_pass = [], runner._prefill_rows

            def counted(rows: int) -> torch.Tensor:
                passes.append(rows)
                return padded_pass(rows)

            monkeypatch.setattr(runner, "_prefill_rows", counted)
            padded, _ = runner.prefill([prompt], [table], [BLOCK_TOKENS])
        assert passes == [48]  # the whole prompt's bucket, not an eager pass of its rest
        torch.testing.assert_close(padded, eager, rtol=1e-5, atol=1e-5)
        for before, after in zip(eager_kv, cache.k + cache.v, strict=True):
            assert bool((after[5] == 7.0).all()), "the pass wrote into the shared block"
            torch.testing.assert_close(after[9], before[9], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(after[2, :, :5], before[2, :, :5], rtol=1e-5, atol=1e-5)
    finally:
        scheduler.close()


def prefix_cache_tokens(model: str) -> tuple[float, float]:
    labels = {"model": model, "device": "cpu"}
    return tuple(
        REGISTRY.get_sample_value(f"awqd_prefix_cache_{kind}_tokens_total", labels) or 0.0 for kind in ("prompt", "hit")
    )


def test_prompts_with_a_cached_start_share_its_blocks_and_give_the_same_tokens(demo_model_dir):
    """A prompt's full blocks are published after its prefill and kept when it ends. Later prompts that start the
    same way take them and prefill only the rest, with the tokens an engine without the cache gives; the hit is in
    each Finished and in the metrics. Pinned runs, exclusive runs and jobs that opt out neither take nor publish."""
    cached, plain = (switching_engine(demo_model_dir, 8, prefix_caching=on) for on in (True, False))
    try:
        assert (cached.prefix_caching, plain.prefix_caching) == (True, False)
        start = list(range(300, 350))  # three full blocks and two tokens
        prompts = [[*start, 7, 8, 9], start + list(range(60, 80)), list(range(900, 930)), start[:48]]
        expected = [run_alone(plain, prompt, params(10))[0] for prompt in prompts]
        assert plain.blocks.cached_blocks == 0

        _, first = run_alone(cached, start, params(10))
        assert first.cached_prompt_tokens == 0 and cached.blocks.cached_blocks == 3
        looked_up, hit = prefix_cache_tokens("demo")
        jobs = [Job(params(10), prompt, pinned=None) for prompt in prompts]
        submit_together(cached, jobs)
        outcomes = [tokens_of(job) for job in jobs]
        assert [tokens for tokens, _ in outcomes] == expected
        # 48 tokens but its last must run for its logits: the first two blocks only
        assert [finished.cached_prompt_tokens for _, finished in outcomes] == [48, 48, 0, 32]
        assert prefix_cache_tokens("demo") == (looked_up + sum(map(len, prompts)), hit + 48 + 48 + 32)
        assert cached.blocks.used_blocks == 0

        pinned = Job(params(4), start, pinned=cached.router.dispatch.candidates[0])
        exclusive = Job(params(4), start, pinned=None, exclusive=True)
        opted_out = Job(params(4), start, pinned=None, prefix_caching=False)
        for job in (pinned, exclusive, opted_out):
            cached.submit(job)
            assert tokens_of(job)[1].cached_prompt_tokens == 0
        assert prefix_cache_tokens("demo")[1] == hit + 48 + 48 + 32
    finally:
        cached.close()
        plain.close()


def test_a_conversations_next_turn_shares_the_blocks_its_answer_filled(demo_model_dir):
    """Blocks that decode steps fill are published too, so a next turn's prompt (the first prompt, the answer, a new
    question) shares them, with the tokens an engine without the cache gives."""
    cached, plain = (switching_engine(demo_model_dir, 4, prefix_caching=on) for on in (True, False))
    try:
        first = list(range(300, 340))  # 40 tokens: two full blocks
        answer, finished = run_alone(cached, first, params(40))
        assert finished.finish_reason == "length"
        # Written: the prompt and 39 answer tokens (the last is never fed), 79 positions: four full blocks.
        next_turn = [*first, *answer, 11, 12, 13]
        tokens, finished = run_alone(cached, next_turn, params(8))
        assert finished.cached_prompt_tokens == 4 * BLOCK_TOKENS
        assert tokens == run_alone(plain, next_turn, params(8))[0]
    finally:
        cached.close()
        plain.close()


@pytest.mark.parametrize("sliding_window", [None, 20])
@pytest.mark.parametrize(
    ("buckets", "cached", "shape"),
    [((8, 16), 2 * BLOCK_TOKENS, (8, 64)), ((16, 48, 64), BLOCK_TOKENS, (64, 128))],
    ids=["past-the-buckets", "within-them"],
)
def test_a_lone_prompt_after_a_hit_replays_its_padded_rest_as_the_whole_prompt_would_run(
    demo_model_dir, sliding_window, buckets, cached, shape
):
    """What a GPU engine captures for a lone prompt after a hit whose rest fits a prefill bucket, run eagerly: its
    rest padded to a row bucket, attending over its sequence gathered into a key bucket. The same logits and k/v as
    the whole prompt's eager pass; the shared blocks untouched; the padding rows write only the padding block. A
    window of 20 cuts into the cached positions (the masked form; flash serves the GPU without one)."""
    router = KernelRouter(Dispatch(buckets=(1, 512), candidates=(ReferenceTorch(), DequantMatmulCpu())))
    loaded = load_model(demo_model_dir, CPU, router, fuse=True)
    config = copy.copy(loaded.config)
    config.sliding_window = sliding_window
    loaded = dataclasses.replace(loaded, config=config)
    scheduler = build_engine("demo", loaded, router, EngineSettings(kv_cache_tokens=4096, max_batch_size=4))
    try:
        runner, cache = scheduler.runner, scheduler.runner.cache
        prompt, table = list(range(300, 337)), [5, 9, 2]  # 37 tokens: blocks 5 and 9 full, 5 positions of block 2
        shared = list(range(cached // BLOCK_TOKENS))
        with torch.inference_mode():
            whole, _ = runner.prefill([prompt], [table])
            whole_kv = [layer.clone() for layer in cache.k + cache.v]
            for layer in cache.k + cache.v:
                layer[[b for i, b in enumerate(table) if i not in shared]] = 0  # the rest's blocks
                layer[PADDING_BLOCK].zero_()
            runner.prefill_buckets = buckets
            assert runner.hit_buckets(len(prompt), cached) == shape
            after_hit, kernel = runner.prefill([prompt], [table], [cached])
        assert kernel.bucket == runner.step_kernel(shape[0]).bucket
        torch.testing.assert_close(after_hit, whole, rtol=1e-5, atol=1e-5)
        for before, after in zip(whole_kv, cache.k + cache.v, strict=True):
            shared_blocks = [table[i] for i in shared]
            torch.testing.assert_close(after[shared_blocks], before[shared_blocks], rtol=0, atol=0)
            torch.testing.assert_close(after[[5, 9]], before[[5, 9]], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(after[2, :, :5], before[2, :, :5], rtol=1e-5, atol=1e-5)
            assert not after[2, :, 5:].any()  # the padding rows wrote nothing into the prompt's block ...
            untouched = [b for b in range(after.shape[0]) if b not in (5, 9, 2, PADDING_BLOCK)]
            assert not after[untouched].any()  # ... nor into any block but the padding block
            assert after[PADDING_BLOCK].any()
    finally:
        scheduler.close()


def every_hit_shape(runner) -> list[tuple[int, int]]:
    """The (rows, keys) pairs of every hit within the context, whole blocks cached: what warm-up must capture."""
    max_seq_len = runner.cache.plan.max_seq_len
    every = {
        runner.hit_buckets(length, cached)
        for cached in range(BLOCK_TOKENS, max_seq_len, BLOCK_TOKENS)
        for length in range(cached + 1, max_seq_len + 1)
    }
    return sorted(every - {None})


def test_a_hit_pads_its_rest_to_a_power_of_two_and_gathers_its_keys_into_doubling_slots(engine):
    runner = engine.runner
    runner.prefill_buckets = (16, 24, 32, 48, 64, 96)
    assert runner.hit_row_buckets == (16, 32, 64, 96)  # the longest bucket, a rest can take it
    limit = runner.cache.plan.max_seq_len + 96  # any hit's cached start and padded rest fit
    assert limit > 128
    assert runner.key_buckets == (*(b for b in (32, 64, 128, 256, 512, 1024, 2048, 4096) if b < limit), limit)
    assert runner.hit_buckets(100, 16) == (96, 128)
    assert runner.hit_buckets(40, 16) == (32, 64)  # within the buckets too: the rest's graph
    assert runner.hit_buckets(130, 16) is None  # a rest of 114: eager
    assert runner.hit_buckets(100, 0) is None  # no hit: the whole prompt's graph
    assert runner.hit_shapes() == every_hit_shape(runner)
    assert (16, 32) in runner.hit_shapes() and (96, limit) in runner.hit_shapes()
    assert (32, 32) not in runner.hit_shapes()  # a hit caches a block at least
    runner.prefill_buckets = (16, 32)
    assert runner.hit_shapes() == every_hit_shape(runner)
    assert runner.key_buckets[-1] == limit - 64 and (16, limit - 64) not in runner.hit_shapes()  # no hit reaches it
    runner.prefill_buckets = ()  # no CUDA graphs
    assert (runner.hit_row_buckets, runner.key_buckets, runner.hit_buckets(100, 16)) == ((), (), None)


def test_a_captured_pass_after_a_hit_takes_only_key_buckets_that_flash_serves(engine, monkeypatch):
    """With CUDA graphs, a pass after a hit is captured only where flash attends over its slots (up to a sliding
    window): the masked form would hold every score in the graph's memory. A longer span runs eagerly."""
    runner = engine.runner
    runner.prefill_buckets = (16, 32)
    every = runner.key_buckets
    assert len(every) >= 3
    runner.cuda_graphs = True  # what a GPU runner has; nothing here captures
    assert runner.key_buckets == ()  # flash serves no CPU tensor
    served = []

    def up_to_the_window(device, dtype, shape, longest):
        served.append((device, dtype, shape))
        return longest <= every[1]

    monkeypatch.setattr(step, "varlen_flash_serves", up_to_the_window)
    assert runner.key_buckets == every[:2]
    model = runner.model
    assert served[0] == (model.device, model.dtype, model.attention_shape)
    assert runner.hit_buckets(40, 16) == (32, every[1])
    assert runner.hit_buckets(every[1] + 8, every[1] - 8) is None  # its span passes the window: eager
