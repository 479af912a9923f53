"""Engine events into the asyncio loop, so thousands of Generate streams need no thread each.

The engine's scheduler threads hand every job's events to one EventBridge. It wakes the loop once per burst (a
decode step streams a token to every running sequence), not once per event. On the loop, the burst's events for
each job become one message: the proto's deltas are "added since the previous message", and the last delta and the
completion, which the engine hands over together (every stream of an admission wave finishes in the same step),
then go as one write instead of two.

A stream gets its messages in one of two ways:
- deliver (push): the bridge calls the stream's send with each message, in the wake-up itself. Nothing runs per
  stream but that call: no task switch, no queue. The frontend relay uses it, where a send appends to a frame; on a
  2-core EPYC it cut the loop's work per token and stream, hand-over to frame, 1.6-2.1x (3.9-5.5 against 6.2-11.5 µs
  at 256 streams, bench/results/cpu-2026-12-04-push-relay).
- stream (pull): an async iterator, for a writer that awaits each write (grpc.aio's own Generate). A stream that
  has fallen behind (several messages wait when it reads) sends them as one, which keeps a loop that is behind from
  falling further behind.
How far behind the loop is shows in awqd_stream_delivery_lag_seconds, at each stream's first token and completion,
from the hand-over of the oldest event in the message that carries it.
"""

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

from awqd import metrics
from awqd.engine.sequence import Event, Finished, Job, TokenDelta


class Message(NamedTuple):
    """One GenerateResponse's worth: token deltas merged into one, and Finished on the last."""

    delta: TokenDelta | None
    finished: Finished | None
    handed_at: float  # when the engine handed over the oldest event in it (perf_counter)


def merged(earlier: Message, later: Message) -> Message:
    delta = earlier.delta
    if later.delta is not None:
        delta = (
            later.delta
            if delta is None
            else TokenDelta(delta.text + later.delta.text, delta.token_ids + later.delta.token_ids)
        )
    return Message(delta, later.finished, earlier.handed_at)


class DeliveryLag:
    """One stream's awqd_stream_delivery_lag_seconds: at its first token and at its completion."""

    def __init__(self, model: str):
        self.first_token = metrics.STREAM_DELIVERY_LAG.labels(model, "first")
        self.completion = metrics.STREAM_DELIVERY_LAG.labels(model, "last")

    def sent(self, message: Message) -> None:
        if self.first_token is not None and message.delta is not None and message.delta.token_ids:
            self.first_token.observe(time.perf_counter() - message.handed_at)
            self.first_token = None
        if message.finished is not None:
            self.completion.observe(time.perf_counter() - message.handed_at)


class Delivery:
    """One job's events on the loop, a wake-up's worth at a time, to send. `done` completes after the last message
    is sent, or fails with the error that ended the job or the one that send raised; once it is done (or
    cancelled: the caller went away), later events are dropped."""

    def __init__(self, send: Callable[[Message], None], lag: DeliveryLag | None, done: asyncio.Future[None]):
        self.send = send
        self.lag = lag
        self.done = done

    def take(self, stamped: list[tuple[Event, float]]) -> None:
        if self.done.done():
            return
        message = None
        try:
            for event, handed_at in stamped:
                if isinstance(event, Exception):
                    if message is not None:
                        self._send(message)
                    self.done.set_exception(event)
                    return
                if isinstance(event, TokenDelta):
                    update = Message(event, None, handed_at)
                else:
                    update = Message(None, event, handed_at)
                message = update if message is None else merged(message, update)
            if message is not None:
                self._send(message)
                if message.finished is not None:
                    self.done.set_result(None)
        except Exception as error:  # send failed: this stream ends with it, the burst's other streams go on
            self.done.set_exception(error)

    def _send(self, message: Message) -> None:
        self.send(message)
        if self.lag is not None:
            self.lag.sent(message)


class EventBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[Delivery, Event, float]] = []
        self._wake_pending = False

    def deliver(self, job: Job, send: Callable[[Message], None]) -> asyncio.Future[None]:
        """On the loop: calls send(message) with the job's messages as they come, on the loop, so send must not
        block; the last carries Finished. The future is done after it (or fails with the job's error); cancel it
        to drop the job's later events."""
        return self._attach(job, send, DeliveryLag(job.params.model)).done

    def stream(self, job: Job) -> AsyncIterator[Message]:
        """On the loop: the job's messages, the last one carrying Finished, or the error that ended it raised."""
        inbox = Inbox()
        done = self._attach(job, inbox.put, None).done
        done.add_done_callback(inbox.wake)
        return inbox.read(done, DeliveryLag(job.params.model))

    def _attach(self, job: Job, send: Callable[[Message], None], lag: DeliveryLag | None) -> Delivery:
        delivery = Delivery(send, lag, self._loop.create_future())
        job.events.listen(lambda event: self._put(delivery, event))
        return delivery

    def _put(self, delivery: Delivery, event: Event) -> None:
        """On an engine thread: queues the event, and wakes the loop unless a wake-up is already on its way."""
        with self._lock:
            self._pending.append((delivery, event, time.perf_counter()))
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop has closed (the server stopped): no stream reads on
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._wake_pending = False
        per_job: dict[Delivery, list[tuple[Event, float]]] = {}
        for delivery, event, handed_at in batch:
            per_job.setdefault(delivery, []).append((event, handed_at))
        for delivery, stamped in per_job.items():
            delivery.take(stamped)


class Inbox:
    """A pulled stream's messages, sent but not read yet."""

    def __init__(self) -> None:
        self.ready: collections.deque[Message] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, message: Message) -> None:
        self.ready.append(message)
        self.wake()

    def wake(self, _: object = None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, done: asyncio.Future[None], lag: DeliveryLag) -> AsyncIterator[Message]:
        try:
            while True:
                if not self.ready:
                    if done.done():
                        done.result()  # raises the job's error; else its last message was read already
                        return
                    self._waiter = asyncio.get_running_loop().create_future()
                    await self._waiter
                    continue
                message = self.ready.popleft()
                while self.ready:  # fallen behind: what waits goes as one message
                    message = merged(message, self.ready.popleft())
                lag.sent(message)
                yield message
                if message.finished is not None:
                    return
        finally:  # the reader is gone: the job's later events are dropped
            if not done.cancel():
                done.exception()  # an error it did not read is retrieved here, so asyncio does not report it
