"""One request as the engine runs it: the Job its caller reads events from, and the Sequence that owns KV-cache
blocks while it runs.

The Sequence turns each sampled token into what the caller sees: incremental text, stop sequences with held-back
text, end-of-sequence, max_new_tokens; and at the end one Finished with usage, timings and the kernels used per
phase and bucket.
"""

import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from awqd.engine.detokenize import IncrementalDecoder, StopMatcher
from awqd.engine.kv_cache import BLOCK_TOKENS, prefix_keys
from awqd.engine.request import GenerateParams
from awqd.engine.sampling import RowSampling
from awqd.engine.step import StepKernel
from awqd.kernels.base import Candidate


class FinishReason(StrEnum):
    LENGTH = "length"  # max_new_tokens reached
    STOP = "stop"  # a stop sequence matched
    EOS = "eos"  # the model sampled an end-of-sequence token
    CANCELLED = "cancelled"  # the caller went away or its deadline passed


@dataclass(frozen=True)
class TokenDelta:
    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class KernelUse:
    phase: str
    batch_tokens: int
    kernel: str
    steps: int


@dataclass(frozen=True)
class Finished:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: float
    ms_per_output_token: float
    total_ms: float
    queue_ms: float
    kernels: tuple[KernelUse, ...]
    cached_prompt_tokens: int = 0  # prompt tokens whose k/v came from the prefix cache
    token_times: tuple[float, ...] = ()  # each sampled token's perf_counter time, eos included
    received_at: float = 0.0  # the request's arrival, perf_counter

    @property
    def token_times_ms(self) -> tuple[float, ...]:
        """Each sampled token's time after the request arrived, eos included. Computed when read (~7 µs for 128
        tokens): a step that ends a wave of 256 requests builds all their summaries while those streams wait."""
        return tuple((t - self.received_at) * 1000 for t in self.token_times)


Event = TokenDelta | Finished | Exception


class JobEvents:
    """A job's events in order, from the engine's thread: queued for a caller that blocks on them (Job.results, the
    benchmarks), or handed to a listener as they come once one is attached (the asyncio server, which must not
    hold a thread per stream)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._listener: Callable[[Event], None] | None = None
        self._lock = threading.Lock()

    def put(self, event: Event) -> None:
        if self._listener is None:
            with self._lock:
                if self._listener is None:
                    self._queue.put(event)
                    return
        self._listener(event)

    def get(self, timeout: float | None = None) -> Event:
        """The next queued event; queue.Empty after timeout seconds. Not for a job with a listener."""
        return self._queue.get(timeout=timeout)

    def listen(self, listener: Callable[[Event], None]) -> None:
        """Hands every later event to listener as the engine puts it, on the engine's thread, so it must not block.
        The events queued so far go first, on the caller's thread."""
        with self._lock:
            while not self._queue.empty():
                listener(self._queue.get_nowait())
            self._listener = listener


@dataclass
class Job:
    params: GenerateParams
    prompt_ids: list[int]
    pinned: Candidate | None
    exclusive: bool = False  # runs alone, with nothing batched beside it (a SINGLE_QUERY benchmark run)
    prefix_caching: bool = True  # may share cached prompt blocks (a benchmark that measures prefill opts out)
    received_at: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)
    events: JobEvents = field(default_factory=JobEvents)

    @cached_property
    def prefix_keys(self) -> list[bytes]:
        """The prefix-cache keys of the prompt's full blocks (awqd.engine.kv_cache.prefix_keys), computed once."""
        return prefix_keys(self.prompt_ids, len(self.prompt_ids) // BLOCK_TOKENS, salt=self.params.cache_salt)

    @property
    def pin(self) -> str:
        return self.pinned.name if self.pinned is not None else ""

    def results(self) -> Iterator[TokenDelta | Finished]:
        """For a caller that blocks: every delta, then Finished, or the error that ended the job."""
        while True:
            event = self.events.get()
            if isinstance(event, Exception):
                raise event
            yield event
            if isinstance(event, Finished):
                return


class Sequence:
    def __init__(self, job: Job, tokenizer, eos_ids: frozenset[int]):
        params = job.params
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self.job = job
        self.sampling = RowSampling(params.temperature, params.top_k, params.top_p or 1.0, seed)
        self.eos_ids = eos_ids
        self.decoder = IncrementalDecoder(tokenizer)
        self.stops = StopMatcher(params.stop)
        self.started_at = time.perf_counter()
        # Where the last sampled token's k/v go when a decode step feeds it; accept() moves it past the prompt.
        self.position = len(job.prompt_ids) - 1
        self.cached_tokens = 0  # the first prefill_ids whose k/v its blocks took from the prefix cache at admission
        self.cached_prompt_tokens = 0  # cached_tokens when the request was admitted first: what its usage reports
        self.block_keys: list[bytes] = []  # the prefix keys of its full blocks written so far, once published
        self.last_token = 0  # the token the next decode step feeds
        self.generated: list[int] = []  # the tokens accepted so far that the sequence goes on from
        self.token_times: list[float] = []
        self.step_kernels: Counter[tuple[str, int, str]] = Counter()
        self.finish_reason: FinishReason | None = None

    @property
    def remaining_tokens(self) -> int:
        return self.job.params.max_new_tokens - len(self.token_times)

    def count_step(self, phase: str, kernel: StepKernel) -> None:
        self.step_kernels[phase, kernel.bucket, kernel.kernel] += 1

    def accept(self, token: int) -> bool:
        """Takes the sampled token and streams its text; True when the sequence is done."""
        self.token_times.append(time.perf_counter())
        if token in self.eos_ids:
            self.finish_reason = FinishReason.EOS
            return True
        text, stopped = self.stops.feed(self.decoder.push(token))
        self.job.events.put(TokenDelta(text=text, token_ids=(token,)))
        if stopped:
            self.finish_reason = FinishReason.STOP
            return True
        if self.remaining_tokens == 0:
            self.finish_reason = FinishReason.LENGTH
            return True
        self.generated.append(token)
        self.last_token = token
        self.position += 1
        return False

    @property
    def prefill_ids(self) -> list[int]:
        """What a prefill must run to put the sequence back where it is: the prompt, and after a preemption by
        recompute the generated tokens too. Its output samples the token after them. (Swapped out, the sequence needs
        none: position, last_token and the sampling step, len(token_times), are all it resumes decoding from.)"""
        return self.job.prompt_ids + self.generated

    def finish(self, reason: FinishReason | None = None) -> Finished:
        """Streams the held-back tail where the text ended normally: an unfinished character, as the tokenizer
        decodes it, and the text held for a stop sequence (cut where the tail completes one). Returns the summary
        for the caller to send."""
        self.finish_reason = reason or self.finish_reason
        if self.finish_reason in (FinishReason.LENGTH, FinishReason.EOS):
            tail = self.stops.feed(self.decoder.flush())[0] + self.stops.flush()  # nothing is held after a stop
            if tail:
                self.job.events.put(TokenDelta(text=tail, token_ids=()))
        return summary(
            self.job,
            self.finish_reason,
            self.started_at,
            self.token_times,
            self.step_kernels,
            self.cached_prompt_tokens,
        )


def summary(
    job: Job,
    reason: FinishReason,
    started_at: float,
    token_times: list[float],
    step_kernels: Counter | None = None,
    cached_prompt_tokens: int = 0,
) -> Finished:
    received_at = job.received_at
    return Finished(
        finish_reason=reason,
        prompt_tokens=len(job.prompt_ids),
        completion_tokens=len(token_times) - (reason == FinishReason.EOS),
        time_to_first_token_ms=(token_times[0] - received_at) * 1000 if token_times else 0.0,
        ms_per_output_token=(token_times[-1] - token_times[0]) * 1000 / (len(token_times) - 1)
        if len(token_times) > 1
        else 0.0,
        total_ms=(time.perf_counter() - received_at) * 1000,
        queue_ms=(started_at - received_at) * 1000,
        cached_prompt_tokens=cached_prompt_tokens,
        kernels=tuple(
            KernelUse(phase=phase, batch_tokens=bucket, kernel=kernel, steps=steps)
            for (phase, bucket, kernel), steps in (step_kernels or {}).items()
        ),
        token_times=tuple(token_times),
        received_at=received_at,
    )
