"""Overlapped decode (awqd.engine.scheduler, awqd.engine.inflight) on the CPU with the demo model: the scheduler
launches step N+1 before streaming step N's tokens. What a caller sees must be exactly what it sees without overlap:
the same tokens, text and finish reasons, no token past an end, and every block back when the work is done.
Also the incremental detokenizer's fast path against transformers' decode.
"""

import queue
import random
import time

import pytest
from test_engine import CPU, params, random_prompts, reference_router, run_alone, submit_together
from transformers import AutoTokenizer

from awqd.config import EngineSettings
from awqd.engine.build import build_engine
from awqd.engine.detokenize import IncrementalDecoder, text_decoder
from awqd.engine.kv_cache import BLOCK_TOKENS
from awqd.engine.sequence import Finished, Job, TokenDelta
from awqd.models.loader import load_model


@pytest.fixture(scope="module")
def loaded(demo_model_dir):
    router = reference_router()
    return load_model(demo_model_dir, CPU, router, fuse=True), router


@pytest.fixture(scope="module")
def engines(loaded):
    """One engine with overlap and one without, on the same weights (each with its own KV cache)."""
    model, router = loaded
    settings = EngineSettings(kv_cache_tokens=4096, max_batch_size=8)
    overlapped = build_engine("demo", model, router, settings)
    sequential = build_engine(
        "demo", model, router, EngineSettings(kv_cache_tokens=4096, max_batch_size=8, overlap_decode=False)
    )
    assert overlapped.overlap_decode and not sequential.overlap_decode
    try:
        yield overlapped, sequential
    finally:
        overlapped.close()
        sequential.close()


def events_of(job: Job) -> list[TokenDelta | Finished]:
    return list(job.results())


def run_together(scheduler, requests, prompts, eos_ids: frozenset[int] | None = None) -> list[list]:
    """Submits the jobs at one step boundary; each job's events, with Finished's timings left out."""
    if eos_ids is not None:
        scheduler.eos_ids = eos_ids  # the tokens that end a sequence, for sequences started from now on
    jobs = [Job(request, prompt, pinned=None) for request, prompt in zip(requests, prompts, strict=True)]
    submit_together(scheduler, jobs)
    seen = [visible(events_of(job)) for job in jobs]
    wait_blocks_free(scheduler)  # the engine is done with them: nothing more may come after Finished
    for job in jobs:
        with pytest.raises(queue.Empty):
            job.events.get(timeout=0)
    return seen


def visible(events) -> list:
    """What a caller relies on: each delta, and the finish reason and counts."""
    *deltas, finished = events
    assert all(isinstance(event, TokenDelta) for event in deltas) and isinstance(finished, Finished)
    return [*deltas, (finished.finish_reason, finished.prompt_tokens, finished.completion_tokens)]


def wait_blocks_free(scheduler) -> None:
    """The blocks of a sequence that ended while the next step was in flight come back when that step completes,
    just after the caller has its Finished."""
    deadline = time.monotonic() + 10
    while scheduler.blocks.used_blocks:
        assert time.monotonic() < deadline, f"{scheduler.blocks.used_blocks} blocks never came back"
        time.sleep(0.002)
    assert scheduler.blocks.free_blocks == scheduler.runner.cache.plan.blocks


def test_greedy_streams_ending_by_eos_stop_and_length_are_the_same_with_and_without_overlap(engines):
    overlapped, sequential = engines
    prompts = random_prompts(6, seed=21)
    # An unconstrained run picks the ends: an end-of-sequence id one stream reaches mid-way, and a stop string
    # another one's text reaches mid-way.
    free = [run_alone(sequential, prompt, params(24))[0] for prompt in prompts]
    eos = free[0][7]
    tokenizer = sequential.tokenizer
    stop_text = tokenizer.decode(free[1][:12], skip_special_tokens=True)
    stop = stop_text.strip()[-2:]
    assert stop, "the demo model's text was meant to have a stop string to cut at"
    lengths = [24, 24, 5, 9, 13, 24]
    requests = [params(length, stop=(stop,) if index == 1 else ()) for index, length in enumerate(lengths)]
    eos_ids = frozenset({eos})
    before = overlapped.steps_ahead
    with_overlap = run_together(overlapped, requests, prompts, eos_ids)
    assert overlapped.steps_ahead > before, "no step was launched ahead"
    without = run_together(sequential, requests, prompts, eos_ids)
    assert sequential.steps_ahead == 0
    assert with_overlap == without  # and nothing after Finished (run_together)
    reasons = {events[-1][0] for events in with_overlap}
    assert {"eos", "stop", "length"} <= reasons, reasons
    for events, request in zip(with_overlap, requests, strict=True):
        reason, _, completion = events[-1]
        ids = [token for delta in events[:-1] for token in delta.token_ids]
        assert len(ids) == completion <= request.max_new_tokens  # nothing streamed past the end
        assert eos not in ids
        if reason == "length":
            assert completion == request.max_new_tokens


def test_seeded_sampling_is_the_same_with_and_without_overlap(engines):
    overlapped, sequential = engines
    prompts = random_prompts(5, seed=31)
    requests = [
        params(6 + 5 * index, temperature=0.9, top_p=0.95, top_k=40 * index, seed=100 + index)
        for index in range(len(prompts))
    ]
    requests[2] = params(12)  # a greedy row among sampled ones
    with_overlap = run_together(overlapped, requests, prompts, frozenset())
    assert with_overlap == run_together(sequential, requests, prompts, frozenset())
    assert [events[-1][2] for events in with_overlap] == [request.max_new_tokens for request in requests]


def test_preemption_under_overlap_gives_the_tokens_of_the_unpreempted_run(loaded):
    """Eight blocks for four sequences that need four each (swap mode): preemption happens while steps are launched
    ahead, and every stream still gets the greedy tokens it gets alone."""
    model, router = loaded
    scheduler = build_engine("demo", model, router, EngineSettings(kv_cache_tokens=8 * BLOCK_TOKENS, max_batch_size=8))
    try:
        assert scheduler.overlap_decode and scheduler.runner.cache.plan.blocks == 8
        prompts = [[token + index for token in range(20, 40)] for index in range(4)]
        alone = [run_alone(scheduler, prompt, params(40))[0] for prompt in prompts]
        jobs = [Job(params(40), prompt, pinned=None) for prompt in prompts]
        before = scheduler.steps_ahead
        submit_together(scheduler, jobs)
        together = [[token for event in events_of(job)[:-1] for token in event.token_ids] for job in jobs]
        assert scheduler.preempted_by["swap"] > 0 and scheduler.steps_ahead > before
        assert together == alone
        wait_blocks_free(scheduler)
        assert scheduler.swap.tables.used_blocks == 0 and scheduler.queue_depth == 0
    finally:
        scheduler.close()


def test_cancelled_streams_under_overlap_give_every_block_back(engines):
    overlapped, _ = engines
    jobs = [Job(params(300), prompt, pinned=None) for prompt in random_prompts(6, seed=41)]
    submit_together(overlapped, jobs)
    for job in jobs:
        next(job.results())
    before = overlapped.steps_ahead
    deadline = time.monotonic() + 30
    while overlapped.steps_ahead < before + 3:  # steady state: steps launched ahead
        assert time.monotonic() < deadline
        time.sleep(0.002)
    for job in jobs[::2]:
        job.cancelled.set()
    for job in jobs[::2]:
        finished = events_of(job)[-1]
        assert finished.finish_reason == "cancelled" and finished.completion_tokens < 300
    for job in jobs[1::2]:
        job.cancelled.set()
        events_of(job)
    wait_blocks_free(overlapped)
    assert run_alone(overlapped, [5, 6, 7], params(3))[1].completion_tokens == 3


def test_text_decoder_and_incremental_decoder_give_transformers_text(demo_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    decode = text_decoder(tokenizer)
    rng = random.Random(5)
    ids = [rng.randrange(len(tokenizer)) for _ in range(3000)]  # special and <extra_N> ids included
    for start in range(0, len(ids), 7):
        window = ids[start : start + rng.randrange(1, 6)]
        assert decode(window) == tokenizer.decode(window, skip_special_tokens=True)
    # The deltas are those of re-decoding both parts of the window at every token, as before the prefix was kept.
    decoder, prefix_offset, read_offset = IncrementalDecoder(tokenizer), 0, 0
    for count, token in enumerate(ids, start=1):
        prefix = tokenizer.decode(ids[prefix_offset:read_offset], skip_special_tokens=True)
        text = tokenizer.decode(ids[prefix_offset:count], skip_special_tokens=True)
        expected = ""
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            prefix_offset, read_offset, expected = read_offset, count, text[len(prefix) :]
        assert decoder.push(token) == expected


def test_the_deltas_and_the_flush_add_up_to_transformers_text_at_every_length(demo_model_dir):
    """Wherever the ids end, inside a multi-byte character included, the flush gives what is held back as the
    tokenizer decodes it."""
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    rng = random.Random(11)
    byte_ids = [tokenizer.convert_tokens_to_ids(symbol) for symbol in ("Ã", "°", "Ł", "Ġ", "ð", "Ł", "ĺ", "Ģ")]
    ids = [rng.choice(byte_ids) if rng.random() < 0.6 else rng.randrange(len(tokenizer)) for _ in range(150)]
    held_back = 0
    for length in range(1, len(ids) + 1):
        decoder = IncrementalDecoder(tokenizer)
        streamed = "".join(decoder.push(token) for token in ids[:length])
        tail = decoder.flush()
        held_back += bool(tail)
        assert streamed + tail == tokenizer.decode(ids[:length], skip_special_tokens=True), f"{length} ids"
    assert held_back > 10  # ends inside a character are exercised


def test_a_failing_decode_step_under_overlap_fails_its_rows_after_the_step_before_streams(engines, monkeypatch):
    """A decode step that raises at its launch fails the sequences it held, each after every token of the steps
    before it; their blocks come back and the engine serves on."""
    overlapped, _ = engines
    prompts = random_prompts(3, seed=51)
    alone = [run_alone(overlapped, prompt, params(200))[0] for prompt in prompts]
    jobs = [Job(params(200), prompt, pinned=None) for prompt in prompts]
    submit_together(overlapped, jobs)
    firsts = [next(job.results()).token_ids for job in jobs]
    model, launches = overlapped.runner.model, []
    decode = model.decode

    def failing_decode(*args):
        launches.append(len(launches))
        if len(launches) > 4:  # a few steps launched ahead, then a fault
            raise RuntimeError("injected fault in a decode step")
        return decode(*args)

    monkeypatch.setattr(model, "decode", failing_decode)
    for job, first, expected in zip(jobs, firsts, alone, strict=True):
        streamed = list(first)
        with pytest.raises(RuntimeError, match="injected fault in a decode step"):
            for event in job.results():
                streamed += event.token_ids
        assert 1 < len(streamed) < 200 and streamed == expected[: len(streamed)]
    monkeypatch.undo()
    wait_blocks_free(overlapped)
    assert run_alone(overlapped, [5, 6, 7], params(3))[1].completion_tokens == 3
