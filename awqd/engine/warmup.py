"""Warm-up: everything a built engine would otherwise do lazily on its first traffic, done before it turns ready.

1. Prefill of several prompts at the token counts the kernel dispatch distinguishes. It runs eagerly on dynamic
   shapes, so there is no graph to capture; what is lazy is Triton's compilation, once per kernel, launch
   configuration and argument specialisation. A step's kernel and its tuned configuration are picked by the step's
   bucket, and Triton specialises a row count by whether it is divisible by 16, so each dispatch bucket b is run at
   b and at b - 1 tokens, as two prompts: every kernel the table names, at every bucket, in both specialisations.
   Then the largest step admission makes, a burst: --prefill-tokens-per-step tokens as many prompts of mixed
   lengths, as a wave of clients arriving together would be admitted. Its first run pays once for what the
   bucket sizes leave lazy at large row counts (library kernels' configurations, the allocator's growth).
   Then one prompt at every prompt-length bucket: a prompt that comes alone is padded to one and replayed as a
   CUDA graph (awqd.engine.step), captured here after its first, eager, step. With the prefix cache on, the pass
   after a hit of a lone prompt past those buckets, at every (rows, keys) bucket pair, captured likewise, so that
   no request pays for a capture; last, an eager pass of two prompts after prefix-cache hits, whose attention
   gathers the cached starts and attends over more keys than queries. Left lazy, that made the first hit slow: on
   an H200, when a lone prompt's hit ran it too, a 1024-token prompt's first hit took 104 ms to its first token,
   the later ones 49-58 ms.
2. Decode at every batch bucket up to the KV-cache slot count, unpinned: each bucket's first step runs eagerly
   (compiling its kernels) and its CUDA graph is captured right after (awqd.engine.step). A request that pins a
   kernel still captures that pin's graphs on its first steps.
3. One greedy generation end to end through the scheduler thread: tokenizer, sampling, detokenizer, streaming.

Every warm-up step's logits must be finite, so a checkpoint that computes NaN fails here, not on each request.
A capture that runs out of device memory fails warm-up (the model cannot hold the graphs it would need); a
capture that fails otherwise (a kernel that cannot be captured) leaves that bucket eager, as at run time, and the
report says so.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
import torch

from awqd.engine.kv_cache import BLOCK_TOKENS, blocks_for
from awqd.engine.request import GenerateParams
from awqd.engine.scheduler import Scheduler
from awqd.engine.sequence import Finished, Job
from awqd.engine.step import StepRunner
from awqd.errors import WarmupFailed

log = structlog.get_logger("awqd.engine")

GENERATION_PROMPT = "The weather today"
GENERATION_TOKENS = 8
SLOWEST_REPORTED = 3
BURST_PROMPT_TOKENS = 128  # a burst prompt's mean length; lengths spread from half of it to one and a half times
CACHED_HIT_TOKENS = 2 * BLOCK_TOKENS  # the warm-up's prefix-cache hit: whole blocks


@dataclass(frozen=True)
class WarmupReport:
    started_at: datetime
    finished_at: datetime
    duration_s: float
    graphs: int  # CUDA graphs held after warm-up: decode, single-prompt prefill and its pass after a hit
    graph_memory_bytes: int  # device memory the captures added (the graphs' pool), after emptying the cache
    prefill_tokens: tuple[int, ...]  # the prefill step sizes run, eager and padded
    decode_batches: tuple[int, ...]  # the decode batch buckets run
    notes: tuple[str, ...]
    slowest: tuple[tuple[str, float], ...] = ()  # the slowest steps and their seconds, slowest first


class _Steps:
    """What the warm-up's steps report: how long each took, and the notes for what stayed eager."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.timings: list[tuple[str, float]] = []

    @contextmanager
    def step(self, what: str) -> Iterator[str]:
        """Times the step, and turns any failure inside into WarmupFailed naming it."""
        started = time.perf_counter()
        try:
            yield what
            self.timings.append((what, time.perf_counter() - started))
        except WarmupFailed:
            raise
        except torch.cuda.OutOfMemoryError as error:
            raise WarmupFailed(f"{what}: out of device memory: {error}") from None
        except Exception as error:
            raise WarmupFailed(f"{what}: {type(error).__name__}: {error}") from None

    def check_capture(self, failure: Exception | None, what: str) -> None:
        """A capture out of device memory fails warm-up; any other failure leaves that step eager, noted."""
        if isinstance(failure, torch.cuda.OutOfMemoryError):
            raise WarmupFailed(f"capturing the {what} CUDA graph: out of device memory: {failure}")
        if failure is not None:
            self.notes.append(f"{what} stays eager: its CUDA graph capture failed: {failure}")


def warm_up(name: str, scheduler: Scheduler) -> WarmupReport:
    """Runs the warm-up on an engine no request has reached yet; raises WarmupFailed saying which step failed."""
    runner = scheduler.runner
    started_at, started = datetime.now(UTC), time.perf_counter()
    steps = _Steps()
    runner.router.unpin()
    device = runner.model.device
    # The device guard makes the capture stream the model's device's, whichever device this thread last used.
    with torch.inference_mode(), torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        reserved_before = _reserved_after_emptying(device)
        prefill_tokens = _warm_prefill(scheduler, steps)
        decode_batches = _warm_decode(runner, steps)
        graphs = len(runner.graphs) + len(runner.prefill_graphs) + len(runner.hit_graphs)
        graph_memory = max(0, _reserved_after_emptying(device) - reserved_before) if graphs else 0
    _generate_once(name, scheduler, steps)
    finished = time.perf_counter()
    if not runner.cuda_graphs:
        steps.notes.append(
            "no CUDA graphs: decode runs eagerly" + (" (--no-cuda-graphs)" if device.type == "cuda" else " on the CPU")
        )
    report = WarmupReport(
        started_at=started_at,
        finished_at=datetime.now(UTC),
        duration_s=finished - started,
        graphs=graphs,
        graph_memory_bytes=graph_memory,
        prefill_tokens=prefill_tokens,
        decode_batches=decode_batches,
        notes=tuple(steps.notes),
        slowest=tuple(sorted(steps.timings, key=lambda timing: -timing[1])[:SLOWEST_REPORTED]),
    )
    log.info(
        "model_warmed_up",
        model=name,
        seconds=round(report.duration_s, 3),
        graphs=report.graphs,
        graph_memory_bytes=report.graph_memory_bytes,
        prefill_tokens=list(prefill_tokens),
        decode_batches=list(decode_batches),
        notes=list(report.notes),
        slowest_steps={what: round(seconds, 3) for what, seconds in report.slowest},
    )
    return report


def prefill_sizes(dispatch_buckets: tuple[int, ...], limit: int) -> tuple[int, ...]:
    """Each dispatch bucket b at b and b - 1 tokens, capped at `limit`: the largest step that can run (one
    admission's tokens, --prefill-tokens-per-step, within the KV cache's capacity)."""
    return tuple(sorted({n for b in dispatch_buckets for n in (min(b, limit) - 1, min(b, limit)) if n >= 1}))


def burst_lengths(total: int, rows: int, max_len: int, free_blocks: int) -> list[int]:
    """The burst step's prompt lengths: about `total` tokens in at most `rows` prompts of mixed lengths (half to one
    and a half times BURST_PROMPT_TOKENS, none over max_len), as many as the KV cache's free blocks hold."""
    count = min(rows, max(1, total // BURST_PROMPT_TOKENS, -(-total // max_len)))
    total = min(total, count * max_len)
    mean = total / count
    lengths = [min(max_len, max(1, round(mean * (0.5 + index / max(1, count - 1))))) for index in range(count)]
    for index in range(count * max_len):  # rounding and clipping: move the sum onto total, one token at a time
        missing = total - sum(lengths)
        if not missing:
            break
        row = index % count
        lengths[row] = min(max_len, max(1, lengths[row] + (1 if missing > 0 else -1)))
    while lengths and sum(map(blocks_for, lengths)) > free_blocks:
        lengths.remove(max(lengths))
    return lengths


def _warm_prefill(scheduler: Scheduler, steps: _Steps) -> tuple[int, ...]:
    runner, plan = scheduler.runner, scheduler.runner.cache.plan
    limit = min(scheduler.limits.prefill_tokens, plan.capacity_tokens)
    sizes = prefill_sizes(tuple(runner.router.dispatch.buckets), limit)
    for total in sizes:
        # Two prompts (one if a token), or as many as a step longer than one sequence may hold, as admission would.
        full, rest = divmod(total, plan.max_seq_len)
        lengths = [plan.max_seq_len] * full + ([rest] if rest else [])
        _prefill(scheduler, [total // 2, total - total // 2] if len(lengths) == 1 and total > 1 else lengths, steps)
    burst = burst_lengths(limit, runner.max_rows, plan.max_seq_len - 1, scheduler.blocks.free_blocks)
    if len(burst) > 1:
        _prefill(scheduler, burst, steps)
        sizes = tuple(sorted({*sizes, sum(burst)}))
    for bucket in runner.prefill_buckets:
        _prefill(scheduler, [bucket], steps)
        steps.check_capture(runner.prefill_eager_keys.get(("", bucket)), f"{bucket}-token prefill")
    if scheduler.prefix_caching:
        _warm_hits(runner, steps)
        # Two prompts, so that the pass is not a lone prompt's padded one, which attends over its own rows only.
        lengths = [2 * CACHED_HIT_TOKENS] * 2
        if max(lengths) <= plan.max_seq_len and sum(map(blocks_for, lengths)) <= scheduler.blocks.free_blocks:
            _prefill(scheduler, lengths, steps, cached=CACHED_HIT_TOKENS)
        else:
            steps.notes.append(
                f"no pass after a prefix-cache hit: two {lengths[0]}-token prompts do not fit the KV cache or the "
                "context, so the first hit runs its kernels for the first time"
            )
    return tuple(sorted({*sizes, *runner.prefill_buckets}))


def _warm_hits(runner: StepRunner, steps: _Steps) -> None:
    """A lone prompt's pass after a prefix-cache hit, at every (rows, keys) bucket pair: its rows from position 0
    into the padding block, which the pass's graph does not tell from a hit."""
    for rows, keys in runner.hit_shapes():
        with steps.step(f"{rows}-row prefill after a hit over {keys} keys") as what:
            logits, _ = runner.prefill_after_hit([0] * rows, [], 0, rows, keys)
            _check_finite(logits, what)
        steps.check_capture(runner.hit_eager_keys.get(("", (rows, keys))), what)


def _prefill(scheduler: Scheduler, lengths: list[int], steps: _Steps, cached: int = 0) -> None:
    """Prefills the prompts into fresh blocks. With `cached`, their first `cached` positions are then prefilled
    again as a prefix-cache hit: a second pass over the rest, reading the first pass's k/v."""
    runner, vocab = scheduler.runner, scheduler.runner.model.shape.vocab_size
    prompts = [[token % vocab for token in range(length)] for length in lengths]
    owners = [("warm-up", index) for index in range(len(prompts))]
    prompts_named = f" as {len(lengths)} prompts" if len(lengths) > 1 else ""
    hit_named = f", then after a {cached}-token prefix-cache hit" if cached else ""
    with steps.step(f"prefill of {sum(lengths)} tokens{prompts_named}{hit_named}") as what:
        try:
            if not all(scheduler.blocks.grow(owner, length) for owner, length in zip(owners, lengths, strict=True)):
                raise WarmupFailed(f"{what}: the KV cache has too few free blocks")
            tables = [scheduler.blocks.table(owner) for owner in owners]
            logits, _ = runner.prefill(prompts, tables)
            if cached:
                logits, _ = runner.prefill(prompts, tables, [cached] * len(prompts))
            _check_finite(logits, what)
        finally:
            for owner in owners:
                scheduler.blocks.release(owner)


def _warm_decode(runner: StepRunner, steps: _Steps) -> tuple[int, ...]:
    for batch in runner.batch_buckets:
        with steps.step(f"decode of {batch} rows") as what:
            # Rows that own no blocks read and write only the padding block.
            logits, _ = runner.decode([0] * batch, [0] * batch, [[]] * batch)
            _check_finite(logits, what)
        steps.check_capture(runner.eager_keys.get(("", batch)), f"{batch}-row decode")
    return runner.batch_buckets


def _generate_once(name: str, scheduler: Scheduler, steps: _Steps) -> Finished:
    """One greedy request through the scheduler thread, as a client's would run."""
    # A sequence holds at least one KV block (16 positions), more than the warm-up's prompt and tokens need.
    prompt_ids = scheduler.tokenizer(GENERATION_PROMPT)["input_ids"][: scheduler.max_sequence_tokens // 2]
    new_tokens = min(GENERATION_TOKENS, scheduler.max_sequence_tokens - len(prompt_ids))
    params = GenerateParams(name, "", tuple(prompt_ids), new_tokens, 0.0, None, 0, None, (), "")
    job = Job(params=params, prompt_ids=list(prompt_ids), pinned=None)
    with steps.step("the warm-up generation"):
        scheduler.submit(job)
        finished = list(job.results())[-1]
    if not isinstance(finished, Finished) or finished.completion_tokens < 1:
        raise WarmupFailed(f"the warm-up generation ended without generating a token: {finished}")
    return finished


def _check_finite(logits: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(logits).all()):
        raise WarmupFailed(f"{what} gave non-finite logits: the checkpoint's weights or scales hold NaN or inf")


def _reserved_after_emptying(device: torch.device) -> int:
    """Device memory PyTorch holds once its unused cache is returned: what live tensors and graph pools hold."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    return torch.cuda.memory_reserved(device)
