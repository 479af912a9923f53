"""SINGLE_QUERY mode: one sequence end to end on a hosted model, per kernel family, through the model's engine.

Each run is an exclusive Job on the model's scheduler with the family's candidate pinned (AUTO pins nothing and
uses the model's dispatch), so it waits behind live Generate calls and never runs beside them. Runs are greedy
on a prompt of exactly `prompt_tokens` random non-special token ids. The engine stops at end-of-sequence, so
warm-up doubles as a probe: if a warm-up run ends at EOS before `new_tokens`, the next prompt seed is tried.
Greedy decoding is deterministic, so the timed runs of a prompt that reached `new_tokens` reach it too; any run
that still ends early is counted with the tokens it made and named in the notes.

Figures exclude the time a run waited in the queue: TTFT is from the scheduler picking the job up to the first
token; per-token times are the gaps between consecutive sampled tokens, as the engine records them.
"""

import queue
import statistics
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import torch

from awqd.benchmark.budget import Budget
from awqd.benchmark.report import Progress, SingleQueryResult
from awqd.engine.request import GenerateParams
from awqd.engine.sequence import Finished, FinishReason, Job, TokenDelta
from awqd.hosting.manager import HostedModel
from awqd.kernels.base import Candidate

PROMPT_SEEDS = 4  # prompts tried per kernel before accepting runs that end at EOS
POLL_S = 0.1  # how often a run waiting in the queue checks whether the benchmark must stop


@dataclass(frozen=True)
class KernelEntry:
    label: str  # "gemm", "gemv", "auto" or a requested name
    pinned: Candidate | None  # None: the model's own dispatch (AUTO), or unavailable when `unavailable` is set
    unavailable: str = ""  # why this family cannot run on the model's device


@dataclass(frozen=True)
class SingleQueryPlan:
    hosted: HostedModel
    entries: tuple[KernelEntry, ...]
    prompt_tokens: int
    new_tokens: int
    warmup: int
    runs: int


@dataclass(frozen=True)
class Run:
    ttft_ms: float
    gaps_ms: list[float]
    total_ms: float
    tokens: int
    ended_at_eos: bool


@dataclass
class SingleQueryResults:
    rows: list[SingleQueryResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def prompt_ids(vocab_size: int, special_ids: Sequence[int], length: int, seed: int) -> list[int]:
    special = set(special_ids)
    allowed = torch.tensor([i for i in range(vocab_size) if i not in special])
    picks = torch.randint(0, len(allowed), (length,), generator=torch.Generator().manual_seed(seed))
    return allowed[picks].tolist()


def run_once(hosted: HostedModel, ids: list[int], new_tokens: int, entry: KernelEntry, budget: Budget) -> Run | None:
    """One greedy generation on the model's scheduler; None when the benchmark had to stop."""
    params = GenerateParams(
        model=hosted.name,
        prompt="",
        prompt_token_ids=tuple(ids),
        max_new_tokens=new_tokens,
        temperature=0.0,
        top_p=None,
        top_k=0,
        seed=0,
        stop=(),
        kernel=entry.pinned.name if entry.pinned else "auto",
    )
    job = Job(params=params, prompt_ids=ids, pinned=entry.pinned, exclusive=True, cancelled=budget.stop)
    hosted.scheduler.submit(job)
    while True:
        try:
            event = job.events.get(timeout=POLL_S)
        except queue.Empty:
            if budget.exhausted():
                return None  # stop waiting now: the scheduler ends the cancelled job on its own
            continue
        if isinstance(event, Exception):
            raise event
        if isinstance(event, TokenDelta):
            continue
        break
    finished: Finished = event
    if finished.finish_reason == FinishReason.CANCELLED:
        return None
    return Run(
        ttft_ms=finished.time_to_first_token_ms - finished.queue_ms,
        gaps_ms=[later - earlier for earlier, later in pairwise(finished.token_times_ms)],
        total_ms=finished.total_ms - finished.queue_ms,
        tokens=finished.completion_tokens,
        ended_at_eos=finished.finish_reason == FinishReason.EOS,
    )


def p50_p90(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (0.0, 0.0)
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return deciles[4], deciles[8]


def summarize(label: str, runs: list[Run]) -> SingleQueryResult:
    median_run = sorted(runs, key=lambda run: run.total_ms)[(len(runs) - 1) // 2]
    p50, p90 = p50_p90([gap for run in runs for gap in run.gaps_ms])
    return SingleQueryResult(
        kernel=label,
        time_to_first_token_ms=statistics.median(run.ttft_ms for run in runs),
        ms_per_token_p50=p50,
        ms_per_token_p90=p90,
        total_ms=median_run.total_ms,
        tokens_per_second=median_run.tokens / (median_run.total_ms * 1e-3),
        runs=len(runs),
    )


def not_measured(label: str) -> SingleQueryResult:
    return SingleQueryResult(label, 0.0, 0.0, 0.0, 0.0, 0.0, runs=0)


def measure_single_query(plan: SingleQueryPlan, budget: Budget) -> Generator[Progress, None, SingleQueryResults]:
    """Yields progress after each run; returns the rows measured before the budget ran out, if it did."""
    loaded = plan.hosted.loaded
    special_ids = loaded.tokenizer.all_special_ids
    measured = [entry for entry in plan.entries if not entry.unavailable]
    total = len(measured) * (plan.warmup + plan.runs)
    results = SingleQueryResults()
    done = 0
    for entry in plan.entries:
        if entry.unavailable:
            results.rows.append(not_measured(entry.label))
            results.notes.append(f"{entry.label}: not measured: {entry.unavailable}")
            continue
        try:
            seed, warm = 0, 0
            ids = prompt_ids(loaded.config.vocab_size, special_ids, plan.prompt_tokens, seed)
            while warm < plan.warmup:
                run = run_once(plan.hosted, ids, plan.new_tokens, entry, budget)
                if run is None:
                    return results
                warm += 1
                done += 1
                yield Progress("single_query", done, total, f"{entry.label}: warm-up {warm}/{plan.warmup}")
                if run.ended_at_eos and seed + 1 < PROMPT_SEEDS:
                    # This prompt reaches EOS early: probe the next one, with at least one more warm-up run.
                    seed += 1
                    ids = prompt_ids(loaded.config.vocab_size, special_ids, plan.prompt_tokens, seed)
                    if warm == plan.warmup:
                        warm -= 1
                        total += 1
            runs = []
            for index in range(plan.runs):
                run = run_once(plan.hosted, ids, plan.new_tokens, entry, budget)
                if run is None:
                    if runs:
                        results.rows.append(summarize(entry.label, runs))
                    return results
                runs.append(run)
                done += 1
                yield Progress("single_query", done, total, f"{entry.label}: run {index + 1}/{plan.runs}")
        except Exception as error:  # e.g. a kernel that fails at the prefill size: report it, measure the rest
            results.rows.append(not_measured(entry.label))
            results.notes.append(f"{entry.label}: failed: {type(error).__name__}: {error}")
            continue
        results.rows.append(summarize(entry.label, runs))
        short = [run.tokens for run in runs if run.ended_at_eos]
        if short:
            results.notes.append(
                f"{entry.label}: {len(short)} of {len(runs)} runs ended at end-of-sequence after {min(short)} to "
                f"{max(short)} of {plan.new_tokens} tokens on every prompt tried"
            )
    return results
