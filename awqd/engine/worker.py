"""One worker thread per hosted model: requests queue up and run one at a time on that model."""

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise

import structlog

from awqd import metrics
from awqd.engine.generate import Finished, TokenDelta, generate
from awqd.engine.request import GenerateParams
from awqd.errors import AwqdError, Unavailable
from awqd.kernels.base import Candidate
from awqd.quant.linear import KernelRouter

log = structlog.get_logger("awqd.engine")


@dataclass
class Job:
    params: GenerateParams
    prompt_ids: list[int]
    pinned: Candidate | None
    received_at: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)
    events: "queue.Queue[TokenDelta | Finished | Exception]" = field(default_factory=queue.Queue)

    def results(self) -> Iterator[TokenDelta | Finished]:
        """What the RPC thread streams: every delta, then Finished, or the error that ended the job."""
        while True:
            event = self.events.get()
            if isinstance(event, Exception):
                raise event
            yield event
            if isinstance(event, Finished):
                return


class ModelWorker:
    def __init__(self, name: str, model, tokenizer, router: KernelRouter):
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.router = router
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"model-{name}", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return self._jobs.qsize()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                raise Unavailable(f"model {self.name!r} is being unloaded")
            self._jobs.put(job)

    def close(self, on_closed: Callable[[], None] | None = None) -> None:
        """Refuses new jobs, lets the running and queued ones finish, then stops the thread."""
        with self._lock:
            self._closed = True
            self._jobs.put(None)
        self._thread.join()
        if on_closed:
            on_closed()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            # A job cancelled while queued still runs: generate() ends it at once with a "cancelled" Finished,
            # which is what unblocks the RPC thread waiting on its events.
            if job.pinned is not None:
                self.router.pin(job.pinned)
            try:
                for event in generate(
                    self.model, self.tokenizer, self.router, job.params, job.prompt_ids, job.cancelled, job.received_at
                ):
                    job.events.put(event)
                    if isinstance(event, TokenDelta):
                        metrics.GENERATED_TOKENS.labels(self.name).inc(len(event.token_ids))
                _observe_latencies(self.name, event)
                log.info(
                    "generation_finished",
                    model=self.name,
                    finish_reason=event.finish_reason,
                    prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.completion_tokens,
                    ttft_ms=round(event.time_to_first_token_ms, 3),
                    ms_per_token=round(event.ms_per_output_token, 3),
                )
            except AwqdError as error:
                job.events.put(error)
            except Exception as error:
                log.error("generation_failed", model=self.name, exc_info=error)
                job.events.put(error)
            finally:
                self.router.unpin()


def _observe_latencies(model: str, finished: Finished) -> None:
    times = finished.token_times_ms
    if times:
        metrics.TIME_TO_FIRST_TOKEN.labels(model).observe(times[0] / 1000)
    inter_token = metrics.INTER_TOKEN_LATENCY.labels(model)
    for earlier, later in pairwise(times):
        inter_token.observe((later - earlier) / 1000)
