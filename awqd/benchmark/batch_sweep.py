"""BATCH_SWEEP mode: decode throughput against the number of concurrent sequences on a hosted model.

For each concurrency level N, N greedy requests with distinct random prompts of exactly `prompt_tokens` ids are
submitted together to the model's scheduler, which batches them like any Generate calls (the model's AUTO
dispatch, no pin). A short untimed round first captures the CUDA graphs of that batch size. The timed round
reports the aggregate generated tokens per second (all tokens over the wall time from submission to the last
token) and the inter-token latency p50/p99 over every gap of every sequence. Live Generate calls may share the
batch, as they would share it with any caller: run a sweep on an otherwise idle model.
"""

import queue
import statistics
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from itertools import pairwise

from awqd.benchmark.budget import Budget
from awqd.benchmark.report import BatchSweepPoint, Progress
from awqd.benchmark.single_query import POLL_S, prompt_ids
from awqd.engine.request import GenerateParams
from awqd.engine.sequence import Finished, FinishReason, Job
from awqd.hosting.manager import HostedModel

WARMUP_TOKENS = 8


@dataclass(frozen=True)
class BatchSweepPlan:
    hosted: HostedModel
    levels: tuple[int, ...]
    prompt_tokens: int
    new_tokens: int
    warmup: int


@dataclass
class BatchSweepResults:
    points: list[BatchSweepPoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_round(plan: BatchSweepPlan, streams: int, new_tokens: int, budget: Budget) -> list[Finished] | None:
    """N requests together; their summaries, or None when the benchmark had to stop."""
    loaded = plan.hosted.loaded
    params = GenerateParams(plan.hosted.name, "", (), new_tokens, 0.0, None, 0, 0, (), "auto")
    jobs = []
    for seed in range(streams):
        ids = prompt_ids(loaded.config.vocab_size, loaded.tokenizer.all_special_ids, plan.prompt_tokens, seed)
        # Each round sends the same prompts: they would hit the prefix cache, and the round would not measure prefill.
        jobs.append(Job(params=params, prompt_ids=ids, pinned=None, cancelled=budget.stop, prefix_caching=False))
    for job in jobs:
        plan.hosted.scheduler.submit(job)
    finished = []
    for job in jobs:
        while True:
            try:
                event = job.events.get(timeout=POLL_S)
            except queue.Empty:
                if budget.exhausted():
                    return None  # the scheduler ends the cancelled jobs on its own
                continue
            if isinstance(event, Exception):
                raise event
            if isinstance(event, Finished):
                finished.append(event)
                break
    if any(event.finish_reason == FinishReason.CANCELLED for event in finished):
        return None
    return finished


def measure_batch_sweep(plan: BatchSweepPlan, budget: Budget) -> Generator[Progress, None, BatchSweepResults]:
    results = BatchSweepResults()
    total = len(plan.levels) * (plan.warmup + 1)
    done = 0
    for streams in plan.levels:
        for _ in range(plan.warmup):
            if run_round(plan, streams, min(WARMUP_TOKENS, plan.new_tokens), budget) is None:
                return results
            done += 1
            yield Progress("batch_sweep", done, total, f"{streams} sequences: warm-up")
        started = time.perf_counter()
        finished = run_round(plan, streams, plan.new_tokens, budget)
        if finished is None:
            return results
        wall_s = time.perf_counter() - started
        gaps = sorted(later - earlier for event in finished for earlier, later in pairwise(event.token_times_ms))
        tokens = sum(event.completion_tokens for event in finished)
        results.points.append(
            BatchSweepPoint(
                concurrent_sequences=streams,
                tokens_per_second=tokens / wall_s,
                inter_token_p50_ms=statistics.median(gaps) if gaps else 0.0,
                inter_token_p99_ms=gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))] if gaps else 0.0,
            )
        )
        short = [event.completion_tokens for event in finished if event.finish_reason == FinishReason.EOS]
        if short:
            results.notes.append(
                f"{streams} sequences: {len(short)} ended at end-of-sequence before {plan.new_tokens} tokens"
            )
        done += 1
        yield Progress("batch_sweep", done, total, f"{streams} sequences: {tokens / wall_s:.1f} tokens/s")
    return results
