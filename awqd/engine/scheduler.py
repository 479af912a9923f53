"""Continuous batching: one scheduler thread per hosted model runs every request on it, step by step.

At each step boundary the scheduler
1. ends cancelled requests (the client went away or its deadline passed) and frees their KV-cache blocks at
   once, and refuses requests that waited in the queue longer than --queue-timeout (RESOURCE_EXHAUSTED, with a
   retry hint);
2. admits preempted sequences, then waiting requests, in order, while the batch has rows (--max-batch-size) and
   the paged KV cache (awqd.engine.kv_cache) has the blocks each one's prefill and next token need, up to
   --prefill-tokens-per-step prompt tokens per boundary (one longer prompt goes alone) so the running batch is not
   stalled for long; it copies the swapped-out ones' blocks back from host memory, and prefills the rest in one
   forward pass (a lone prompt's replays a CUDA graph); if that pass (or a copy) fails, only the requests it held
   fail. With prefix caching, a prompt whose start another sequence published shares those blocks, and the pass
   skips them (awqd.engine.kv_cache.BlockTables); after the pass, and as decode steps fill them, each sequence
   publishes its own full blocks;
3. unless the queue's head could join at once (a burst: the next boundary admits it first, until the running
   batch has waited --max-decode-stall-ms, so the burst's last prompts get their first tokens sooner), gives each
   running sequence the block its next position needs, preempting when blocks run out (below), runs one decode
   step for every running sequence together (row i is the i-th admitted), samples on the device, copies the new
   ids to the host once, and streams them; finished sequences leave the batch at once.

Overlapped decode (--overlap-decode, the default; awqd.engine.inflight): in the steady state, where the same rows
(less those that finished) decode again, step N+1 is launched before the host reads step N's ids. Its input ids are
step N's, gathered on the device; its positions, block grants and sampling steps count step N's token as accepted.
The host streams step N's tokens while step N+1 runs on the GPU. A sequence that finished at step N (end of
sequence, stop, cancellation) was still computed in step N+1: that token is discarded, never streamed or counted,
and its blocks are freed once step N+1 has completed, since that step writes its next position. One that reaches
max_new_tokens at step N is known ahead and left out of step N+1. Every boundary the lookahead cannot express
drains first (waits for the step in flight and streams its tokens), then goes on as without overlap: admission
(swap-in, prefill, a new pin or an exclusive run) and a block that is not free (preemption). So what a caller sees
is what the same run without overlap gives: the same tokens, greedy or seeded, each row's position and sampling
step advancing once per streamed token. (One caveat on GPUs: a step that still carries rows that just ended can fall
in a larger batch bucket, so another kernel may run it, as with any change to the batch; --batch-invariant removes
that too.)

Preemption policy (--preemption, default swap). When a running sequence needs a block and none is free, the most
recently admitted running sequence gives all its blocks back and goes to the front of the queue; its stream stays
open. How it resumes:
- swap: before its blocks are freed, the k and v they hold for its positions so far (every layer) are copied into
  host memory (awqd.engine.kv_cache.SwapSpace, --swap-space-gib per model). When blocks free up it gets new ones,
  the copy comes back bit for bit, and it goes on decoding from its next position with no prefill: position, last
  token and sampling step live in the Sequence, so its tokens, greedy or seeded, are those it would have produced
  unpreempted. Decode reads block ids from a table the runner rewrites every step, so the CUDA graphs need nothing.
- recompute: it is prefilled again over its prompt and the tokens it has generated, and goes on from the next
  token. On the CPU its tokens are unchanged; on a GPU the prefill's kernels can round the generated positions' k
  and v differently from the decode steps that first wrote them, which can flip a near-tie greedy token later.
Swap falls back to recompute when the swap space has too few free blocks (or is 0); --preemption recompute uses no
swap space. The scheduler's preempted_by and awqd_kv_cache_preemptions_total{mode} count each mode.
Preempted sequences resume before any waiting request and never expire in the queue; cancelling one frees its
host blocks too. A request that could not fit the cache even alone is refused at submit (INVALID_ARGUMENT on
max_new_tokens), so every accepted request completes or gets an error.

A request that pins a kernel (GenerateRequest.kernel, a Benchmark run) batches only with requests that pin the
same one: the router's pin applies to the whole step. When the queue's head pins differently from the running
batch, admission pauses until that batch drains, which keeps arrival order and starves no one. An exclusive
job (a SINGLE_QUERY benchmark run) waits the same way and then runs alone.

Admission control: the queue holds at most --max-queued-requests waiting requests; one more gets
RESOURCE_EXHAUSTED with a retry hint in the message and in the `retry-after-ms` trailing metadata.
"""

import collections
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import structlog
import torch

from awqd import metrics
from awqd.config import PREEMPTION_POLICIES
from awqd.engine.inflight import InFlightStep
from awqd.engine.kv_cache import BLOCK_TOKENS, BlockTables, SwapSpace, blocks_for, prefix_keys
from awqd.engine.sampling import SamplingBatch, choose_tokens
from awqd.engine.sequence import Finished, FinishReason, Job, Sequence, summary
from awqd.engine.step import StepRunner
from awqd.errors import InvalidArgument, ResourceExhausted, Unavailable
from awqd.kernels.linear import KernelRouter

log = structlog.get_logger("awqd.engine")

RETRY_HINT_MS = (50, 60_000)  # bounds of the retry hint


@dataclass(frozen=True)
class AdmissionLimits:
    max_queued: int  # waiting requests beyond the running batch
    queue_timeout_s: float  # longest wait for room in the KV cache
    prefill_tokens: int  # prompt tokens one step boundary prefills together (the first prompt may be longer)
    max_decode_stall_s: float  # how long back-to-back prefills may hold up the running batch's decode


class Scheduler:
    def __init__(
        self,
        name: str,
        runner: StepRunner,
        swap: SwapSpace,
        tokenizer,
        eos_ids: frozenset[int],
        limits: AdmissionLimits,
        overlap_decode: bool = True,
        prefix_caching: bool = False,
    ):
        self.name = name
        self.runner = runner
        self.swap = swap
        self.router: KernelRouter = runner.router
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.limits = limits
        self.overlap_decode = overlap_decode
        self.prefix_caching = prefix_caching
        self.max_sequence_tokens = runner.cache.plan.max_seq_len
        self.blocks = BlockTables(runner.cache.plan.blocks)
        self.preempted_by: collections.Counter[str] = collections.Counter()  # preemptions by mode: swap, recompute
        self.steps_ahead = 0  # decode steps launched before the previous step's tokens were streamed
        self._waiting: collections.deque[Job] = collections.deque()
        self._preempted: collections.deque[Sequence] = collections.deque()  # they resume before any waiting job
        self._running: list[Sequence] = []  # in admission order; decode row i is the i-th
        self._in_flight: InFlightStep | None = None  # the decode step launched and not yet streamed
        self._stalled_since: float | None = None  # the first boundary that prefilled again instead of decoding
        self._closed = False
        self._condition = threading.Condition()
        self._step_ms = 0.0  # moving average of a decode step, for the retry hint
        self._completed_at = 0.0  # when the last decode step's ids reached the host
        self.device = str(runner.model.device)  # the metrics' device label: one engine per device
        self._tokens_streamed = metrics.GENERATED_TOKENS.labels(name, self.device)
        self._time_to_first_token = metrics.TIME_TO_FIRST_TOKEN.labels(name, self.device)
        self._token_gaps = metrics.INTER_TOKEN_LATENCY.gatherer((name, self.device))
        self._prompt_tokens_looked_up = metrics.PREFIX_CACHE_PROMPT_TOKENS.labels(name, self.device)
        self._prompt_tokens_cached = metrics.PREFIX_CACHE_HIT_TOKENS.labels(name, self.device)
        self._preemptions_counted = {
            mode: metrics.KV_CACHE_PREEMPTIONS.labels(name, self.device, mode) for mode in PREEMPTION_POLICIES
        }
        self._thread = threading.Thread(target=self._run, name=f"model-{name}", daemon=True)
        self._thread.start()

    @property
    def preemptions(self) -> int:
        return self.preempted_by.total()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting) + len(self._preempted)

    def submit(self, job: Job) -> None:
        needed = len(job.prompt_ids) + job.params.max_new_tokens
        if needed > self.max_sequence_tokens:
            plan = self.runner.cache.plan
            raise InvalidArgument(
                "max_new_tokens",
                f"prompt ({len(job.prompt_ids)} tokens) plus max_new_tokens ({job.params.max_new_tokens}) needs "
                f"{needed} KV-cache positions, but a sequence of model {self.name!r} may hold "
                f"{self.max_sequence_tokens} (its KV cache holds {plan.blocks} blocks of {plan.block_tokens} tokens; "
                "a sequence is capped at the model's context window)",
            )
        with self._condition:
            if self._closed:
                raise Unavailable(f"model {self.name!r} is being unloaded")
            if len(self._waiting) >= self.limits.max_queued:
                retry_ms = self._retry_hint_ms()
                raise ResourceExhausted(
                    f"model {self.name!r} is at capacity: {len(self._running)} requests running and "
                    f"{len(self._waiting)} queued (--max-queued-requests {self.limits.max_queued}); "
                    f"retry after about {retry_ms} ms",
                    retry_after_ms=retry_ms,
                )
            self._waiting.append(job)
            self._condition.notify()

    def close(self, on_closed: Callable[[], None] | None = None) -> None:
        """Refuses new requests, lets the running and queued ones finish, then stops the thread."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join()
        if on_closed:
            on_closed()

    def _retry_hint_ms(self) -> int:
        """When a queue place should free up: the soonest-finishing running request's remaining decode steps."""
        running = list(self._running)  # a snapshot: the scheduler thread changes the list
        remaining = min((seq.remaining_tokens for seq in running), default=1)
        step_ms = self._step_ms or 10.0
        return int(min(max(remaining * step_ms, RETRY_HINT_MS[0]), RETRY_HINT_MS[1]))

    def _idle(self) -> bool:
        return not self._waiting and not self._preempted and not self._running and self._in_flight is None

    def _run(self) -> None:
        device = self.runner.model.device
        # The engine's device is this thread's current device: Triton launches, and CUDA-graph captures, on it.
        with torch.inference_mode(), torch.cuda.device(device) if device.type == "cuda" else nullcontext():
            while True:
                with self._condition:
                    while self._idle() and not self._closed:
                        self._condition.wait()
                    if self._closed and self._idle():
                        return
                    admitted = self._admit()
                try:
                    # Admitted sequences join the batch before anything else, so every error below reaches them
                    # too, and the router keeps their pin while any of them runs.
                    self._running.extend(admitted)
                    if admitted:
                        self._drain()  # the lookahead cannot add rows: they start from the step after it
                    self._end_cancelled()
                    admitted = [seq for seq in admitted if seq in self._running]
                    swapped = [seq for seq in admitted if self.swap.holds(seq)]
                    self._swap_in(swapped)
                    self._prefill([seq for seq in admitted if seq not in swapped])
                    if admitted and self._prefill_again():
                        continue
                    self._stalled_since = None
                    if self._running or self._in_flight is not None:
                        self._decode()
                except Exception as error:  # a bug must not end the thread and strand every caller
                    self._fail(list(self._running), error)

    def _admit(self) -> list[Sequence]:
        """Under the lock: drops cancelled and expired waiters, then takes what may join the batch now: preempted
        sequences first, then waiting jobs in arrival order, each with the blocks its prefill and next token need."""
        now = time.perf_counter()
        for seq in [seq for seq in self._preempted if seq.job.cancelled.is_set()]:
            self._preempted.remove(seq)
            self.swap.release(seq)
            self._finished(seq.job, seq.finish(FinishReason.CANCELLED))
        for job in list(self._waiting):
            if job.cancelled.is_set():
                self._waiting.remove(job)
                self._end_unstarted(job, FinishReason.CANCELLED)
            elif now - job.received_at > self.limits.queue_timeout_s:
                self._waiting.remove(job)
                retry_ms = self._retry_hint_ms()
                job.events.put(
                    ResourceExhausted(
                        f"model {self.name!r}: waited {now - job.received_at:.1f} s for room in the KV cache "
                        f"(--queue-timeout {self.limits.queue_timeout_s:g} s); retry after about {retry_ms} ms",
                        retry_after_ms=retry_ms,
                    )
                )
                log.info("request_expired_in_queue", model=self.name, waited_s=round(now - job.received_at, 3))
        admitted: list[Sequence] = []
        prompt_tokens = 0
        batch = [seq.job for seq in self._running]
        while (admissible := self._admissible_head(batch)) is not None:
            head, plan = admissible
            if admitted and prompt_tokens + len(plan.ids) > self.limits.prefill_tokens:
                break
            (self._preempted if isinstance(head, Sequence) else self._waiting).popleft()
            seq = head if isinstance(head, Sequence) else Sequence(plan.job, self.tokenizer, self.eos_ids)
            self.blocks.share(seq, plan.prefix)
            self.blocks.grow(seq, plan.positions)
            seq.cached_tokens = len(plan.prefix) * BLOCK_TOKENS
            if seq is not head:  # a new request, not a preempted one resuming
                seq.cached_prompt_tokens = seq.cached_tokens
                if self._caches(plan.job):
                    self._prompt_tokens_looked_up.inc(len(plan.ids))
                    self._prompt_tokens_cached.inc(seq.cached_tokens)
            admitted.append(seq)
            prompt_tokens += len(plan.ids)
            batch.append(plan.job)
        if admitted:
            self._pin(admitted[0].job)
        return admitted

    def _admissible_head(self, batch: list[Job]) -> tuple[Job | Sequence, "ResumePlan"] | None:
        """Under the lock: the queue's head, preempted sequences first, and its _resume_plan, if it may join a batch of
        these jobs now (a batch's jobs share one pin: the first's)."""
        if not (self._preempted or self._waiting) or len(batch) >= self.runner.max_rows:
            return None
        head = self._preempted[0] if self._preempted else self._waiting[0]
        plan = self._resume_plan(head)
        job = plan.job
        if batch and job.pin != batch[0].pin:
            return None  # the head pins another kernel: let the running batch drain first
        if any(other.exclusive for other in batch) or (job.exclusive and batch):
            return None  # an exclusive run has the model to itself
        if self.blocks.blocks_needed(plan.positions, plan.prefix) > self.blocks.free_blocks:
            return None  # the head waits for blocks; nothing overtakes it
        return head, plan

    def _prefill_again(self) -> bool:
        """After a prefill: whether the next boundary admits more of a burst before the batch decodes again.

        Each decode step between a burst's prefills delays the later prompts' first tokens, so while the queue's head
        could join now they go first, until the running batch has waited --max-decode-stall-ms since the first
        boundary that did not decode (a prefill that starts within it still runs, so the wait can pass it by one
        prefill step)."""
        now = time.perf_counter()
        stalled_s = 0.0 if self._stalled_since is None else now - self._stalled_since
        if stalled_s >= self.limits.max_decode_stall_s:
            return False
        with self._condition:
            if self._admissible_head([seq.job for seq in self._running]) is None:
                return False
        if self._stalled_since is None:
            self._stalled_since = now
        return True

    def _resume_plan(self, head: Job | Sequence) -> "ResumePlan":
        """What the queue head needs to join the batch. A swapped-out sequence runs no prefill: its k/v for positions
        0..position-1 come back from host memory and the next decode step writes its position."""
        if isinstance(head, Sequence) and self.swap.holds(head):
            return ResumePlan(head.job, [], head.position + 1, [])
        job, ids = (head.job, head.prefill_ids) if isinstance(head, Sequence) else (head, head.prompt_ids)
        if not self._caches(job):
            return ResumePlan(job, ids, len(ids) + 1, [])
        keys = head.block_keys if isinstance(head, Sequence) else job.prefix_keys  # the prompt's, hashed only here
        # Whole blocks only, and never the last id: the prefill must run it for the next token's logits.
        prefix = self.blocks.cached_prefix(keys[: (len(ids) - 1) // BLOCK_TOKENS])
        return ResumePlan(job, ids, len(ids) + 1, prefix)

    def _caches(self, job: Job) -> bool:
        """Whether the job's prompt may share cached blocks and publish its own. Not for a pinned or exclusive job:
        those are benchmark runs, which measure the prefill, and a pinned kernel's k/v would be shared with others."""
        return self.prefix_caching and job.prefix_caching and job.pinned is None and not job.exclusive

    def _pin(self, job: Job) -> None:
        if job.pinned is not None:
            self.router.pin(job.pinned)
        else:
            self.router.unpin()

    def _prefill(self, group: list[Sequence]) -> None:
        """Prefills the sequences that joined at this boundary in one forward pass and samples their next tokens.

        If the pass or the sampling fails, exactly this group fails; the sequences already running go on.
        """
        if not group:
            return
        try:
            logits, kernel = self.runner.prefill(
                [seq.prefill_ids for seq in group],
                [self.blocks.table(seq) for seq in group],
                [seq.cached_tokens for seq in group],
            )
            sampling = SamplingBatch.build(
                [seq.sampling for seq in group], [len(seq.token_times) for seq in group], logits.device
            )
            tokens = choose_tokens(logits, sampling).tolist()  # the group's one device -> host copy
        except Exception as error:
            self._fail(group, error)
            return
        for seq in group:
            self._publish(seq, len(seq.prefill_ids))  # only after a pass that did not fail
        for seq, token in zip(group, tokens, strict=True):
            seq.count_step("prefill", kernel)
            if self._accept(seq, token):
                self._release(seq)

    def _swap_in(self, group: list[Sequence]) -> None:
        """Copies each swapped-out sequence's blocks back into the ones admission gave it; it then decodes on as if
        never preempted. A copy that fails fails only its sequence."""
        for seq in group:
            try:
                self.swap.swap_in(seq, self.blocks.table(seq))
            except Exception as error:
                self._fail([seq], error)

    def _decode(self) -> None:
        """Launches the running batch's next decode step, then streams the tokens of the step before it, if one is
        in flight (overlap), or of this one (no overlap). A block the lookahead needs that is not free drains first:
        preemption picks its victims from what the batch is after the step in flight."""
        previous = self._in_flight
        rows = self._rows_after(1) if previous is not None else []
        if previous is not None and not all(self.blocks.grow(seq, seq.position + 2) for seq in rows):
            self._drain()
            previous = None
        if previous is None:
            self._grow_or_preempt()
            rows = self._rows_after(0)
        try:
            launched = self._launch(rows, previous) if rows else None
        except Exception as error:
            # The step before streams first, as without overlap; then this step's rows fail, and only they.
            self._drain()
            self._fail([seq for seq in rows if seq in self._running], error)
            return
        self._in_flight = launched
        if previous is not None:
            self._complete(previous)
        if not self.overlap_decode:
            self._drain()

    def _rows_after(self, ahead: int) -> list[Sequence]:
        """The next step's rows, with `ahead` tokens in flight: those that may still need a token after them."""
        return [seq for seq in self._running if seq.remaining_tokens > ahead]

    def _launch(self, rows: list[Sequence], previous: InFlightStep | None) -> InFlightStep:
        """Launches one decode step for rows and its sampling, on the device; nothing waits for it. With a step in
        flight, each row's input is its id from that step and its position, and sampling step, are one further on."""
        ahead = int(previous is not None)
        started = time.perf_counter()
        tokens = previous.ids_for(rows) if previous is not None else [seq.last_token for seq in rows]
        positions = [seq.position + ahead for seq in rows]
        logits, kernel = self.runner.decode(tokens, positions, [self.blocks.table(seq) for seq in rows])
        sampling = SamplingBatch.build(
            [seq.sampling for seq in rows], [len(seq.token_times) + ahead for seq in rows], logits.device
        )
        step = InFlightStep.start(rows, choose_tokens(logits, sampling), kernel, started)
        self.steps_ahead += ahead
        return step

    def _drain(self) -> None:
        """Waits for the step in flight, if any, and streams its tokens."""
        step, self._in_flight = self._in_flight, None
        if step is not None:
            self._complete(step)

    def _complete(self, step: InFlightStep) -> None:
        """Waits for the step's ids (the step's one device -> host copy) and streams them. Rows whose sequence left
        the batch after the launch (cancelled, failed) are skipped; so is the token a row computed past its end."""
        try:
            tokens = step.tokens()
        except Exception as error:
            self._fail([seq for seq in step.rows if seq in self._running], error)
            return
        finally:
            for seq in step.release_after:
                self.blocks.release(seq)
        # From its launch, or, launched behind another step, from when that one completed.
        now = time.perf_counter()
        step_ms = (now - max(step.started, self._completed_at)) * 1000
        self._completed_at = now
        self._step_ms = step_ms if not self._step_ms else 0.9 * self._step_ms + 0.1 * step_ms
        running = set(self._running)
        for seq, token in zip(step.rows, tokens, strict=True):
            if seq not in running:
                continue
            seq.count_step("decode", step.kernel)
            if self._accept(seq, token):
                self._release(seq)
        self._token_gaps.flush()  # the step's gaps, so the histogram is live while long generations run

    def _grow_or_preempt(self) -> None:
        """Gives every running sequence the block its next position needs, oldest first. When none is free, the most
        recently admitted sequence is preempted (swap, or recompute: the module docstring). The oldest always fits:
        submit refuses what could not fit the cache alone."""
        index = 0
        while index < len(self._running):
            seq = self._running[index]
            if self.blocks.grow(seq, seq.position + 1):
                index += 1
            else:
                self._preempt(self._running[-1])

    def _preempt(self, seq: Sequence) -> None:
        """Swaps the sequence's written positions (0..position-1) out to host memory if the swap space has room,
        else leaves it to be recomputed; either way its device blocks are free at once and it heads the queue. The
        copy comes first: if it fails, the sequence is still running and fails with the batch."""
        written = self.blocks.table(seq)[: blocks_for(seq.position)]
        mode = "swap" if self.swap.swap_out(seq, written) else "recompute"
        self._running.remove(seq)
        freed = self.blocks.release(seq)
        self._preempted.appendleft(seq)
        self.preempted_by[mode] += 1
        self._preemptions_counted[mode].inc()
        log.info("sequence_preempted", model=self.name, mode=mode, freed_blocks=freed, tokens=seq.position)

    def _accept(self, seq: Sequence, token: int) -> bool:
        done = seq.accept(token)
        if token not in self.eos_ids:
            self._tokens_streamed.inc()
        if len(times := seq.token_times) > 1:
            self._token_gaps.observe(times[-1] - times[-2])
        if not done and seq.position % BLOCK_TOKENS == 0:
            self._publish(seq, seq.position)  # the step that completed wrote a block's last position
        return done

    def _publish(self, seq: Sequence, written: int) -> None:
        """With prefix caching, publishes the sequence's full blocks among its first `written` positions that it has
        not published yet: steps that completed wrote them, and it never writes them again. So a later prompt that
        starts with its tokens, generated ones included (a conversation's next turn), shares them."""
        if not self._caches(seq.job):
            return
        blocks, first = written // BLOCK_TOKENS, len(seq.block_keys)
        known = (seq.block_keys or seq.job.prefix_keys)[:blocks]
        seq.block_keys = prefix_keys(seq.prefill_ids, blocks, known, seq.job.params.cache_salt)
        self.blocks.publish(seq, seq.block_keys, first)

    def _end_cancelled(self) -> None:
        for seq in [seq for seq in self._running if seq.job.cancelled.is_set()]:
            self._release(seq, FinishReason.CANCELLED)

    def _release(self, seq: Sequence, reason: FinishReason | None = None) -> None:
        self._leave(seq)
        self._finished(seq.job, seq.finish(reason))

    def _end_unstarted(self, job: Job, reason: FinishReason) -> None:
        self._finished(job, summary(job, reason, time.perf_counter(), []))

    def _fail(self, sequences: list[Sequence], error: Exception) -> None:
        log.error("generation_failed", model=self.name, requests=len(sequences), exc_info=error)
        for seq in sequences:
            self._leave(seq)
            seq.job.events.put(error)

    def _leave(self, seq: Sequence) -> None:
        """The sequence leaves the batch, and its blocks (and any it holds in the swap space) are free at once, or,
        when the step in flight writes its next position, once that step has completed."""
        if seq in self._running:
            self._running.remove(seq)
        if self._in_flight is not None and seq in self._in_flight.index:
            self._in_flight.release_after.append(seq)
        else:
            self.blocks.release(seq)
        self.swap.release(seq)
        if not self._running:
            self.router.unpin()

    def _finished(self, job: Job, event: Finished) -> None:
        """Records the metrics and the log line first, so a caller that sees the summary also sees them."""
        if event.token_times:
            self._time_to_first_token.observe(event.time_to_first_token_ms / 1000)
        self._token_gaps.flush()
        log.info(
            "generation_finished",
            model=self.name,
            finish_reason=event.finish_reason,
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            ttft_ms=round(event.time_to_first_token_ms, 3),
            ms_per_token=round(event.ms_per_output_token, 3),
        )
        job.events.put(event)

    # For replica routing and health (awqd.hosting.replicas): read-only snapshots, and the end of a stopped engine.
    def load(self) -> "EngineLoad":
        """What this engine still has to do, as a racy snapshot (good enough to route by)."""
        with self._condition:
            waiting, preempted, running = list(self._waiting), list(self._preempted), list(self._running)
        tokens = sum(len(job.prompt_ids) + job.params.max_new_tokens for job in waiting)
        tokens += sum(len(seq.prefill_ids) + seq.remaining_tokens for seq in preempted)
        tokens += sum(seq.remaining_tokens for seq in running)
        return EngineLoad(len(waiting) + len(preempted), len(running), tokens, self.blocks.free_blocks)

    def wait_stopped(self) -> None:
        """Returns once the scheduler thread has ended: after close(), or when it died."""
        self._thread.join()

    def abandon(self, error: Exception) -> None:
        """Ends every request still queued, preempted or running with `error`, and refuses new ones. Only for an
        engine whose thread has stopped: nothing else would end those requests."""
        with self._condition:
            self._closed = True
            jobs = [*self._waiting, *(seq.job for seq in (*self._preempted, *self._running))]
            self._waiting.clear()
            self._preempted.clear()
            self._running.clear()
        for job in jobs:
            job.events.put(error)


@dataclass(frozen=True)
class ResumePlan:
    job: Job
    ids: list[int]  # what its prefill runs over: none for a swap-in
    positions: int  # what its blocks must cover for the prefill and the next decode step
    prefix: list[int]  # cached blocks holding its first ids' k/v, which the prefill skips


@dataclass(frozen=True)
class EngineLoad:
    queued: int  # requests waiting, preempted ones included
    running: int  # sequences in the decode batch
    tokens: int  # queued prompts and generations, plus what running and preempted sequences have left
    free_blocks: int  # KV-cache headroom
