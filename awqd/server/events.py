"""Engine events into the asyncio loop, so thousands of Generate streams need no thread each.

The engine's scheduler threads hand every job's events to one EventBridge. It wakes the loop once per burst (a
decode step streams a token to every running sequence), not once per event; on the loop, each event goes to the
queue of the stream it belongs to, which that stream's RPC awaits. A stream that has fallen behind (its queue holds
several token deltas when it reads) sends them as one message: the proto's deltas are "added since the previous
message", and under load one write per step instead of one per token keeps the loop from falling further behind.
For the same reason the last delta and the completion, which the engine hands over together, go as one message:
every stream of an admission wave finishes in the same step, and that step would otherwise cost two writes each.
How far behind the loop is shows in awqd_stream_delivery_lag_seconds, at each stream's first token and completion.
"""

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import NamedTuple

from awqd import metrics
from awqd.engine.sequence import Event, Finished, Job, TokenDelta

Stamped = tuple[Event, float]  # an event and when the engine handed it over (perf_counter)


class Message(NamedTuple):
    """One GenerateResponse's worth: token deltas merged into one, and Finished on the last."""

    delta: TokenDelta | None
    finished: Finished | None


class EventBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: collections.deque[tuple[asyncio.Queue[Stamped], Stamped]] = collections.deque()
        self._wake_pending = False

    def stream(self, job: Job) -> AsyncIterator[Message]:
        """On the loop: the job's messages, the last one carrying Finished, or the error that ended it raised."""
        inbox: asyncio.Queue[Stamped] = asyncio.Queue()
        job.events.listen(lambda event: self._put(inbox, event))
        return _read(inbox, job.params.model)

    def _put(self, inbox: asyncio.Queue[Stamped], event: Event) -> None:
        """On an engine thread: queues the event, and wakes the loop unless a wake-up is already on its way."""
        with self._lock:
            self._pending.append((inbox, (event, time.perf_counter())))
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop has closed (the server stopped): no stream reads on
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, collections.deque()
            self._wake_pending = False
        for inbox, stamped in batch:
            inbox.put_nowait(stamped)


async def _read(inbox: asyncio.Queue[Stamped], model: str) -> AsyncIterator[Message]:
    held: Stamped | None = None  # the event after a merged run of deltas, read ahead
    first_token = metrics.STREAM_DELIVERY_LAG.labels(model, "first")
    while True:
        (event, handed_at), held = (held, None) if held is not None else (await inbox.get(), None)
        if isinstance(event, Exception):
            raise event
        delta = None
        if isinstance(event, TokenDelta):
            delta = event
            while not inbox.empty():
                following, following_at = inbox.get_nowait()
                if not isinstance(following, TokenDelta):
                    held = following, following_at
                    break
                delta = TokenDelta(delta.text + following.text, delta.token_ids + following.token_ids)
            if first_token is not None and delta.token_ids:
                first_token.observe(time.perf_counter() - handed_at)
                first_token = None
            if held is None or not isinstance(held[0], Finished):
                yield Message(delta, None)
                continue
            (event, handed_at), held = held, None
        metrics.STREAM_DELIVERY_LAG.labels(model, "last").observe(time.perf_counter() - handed_at)
        yield Message(delta, event)
        return
