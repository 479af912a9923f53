"""The daemon-wide cap on Generate and Benchmark streams in flight.

A stream costs no thread (the server runs on one asyncio loop), but each holds a request's engine state and its
events; the cap keeps a flood of streams from growing the daemon without bound. Streams beyond what the models can
run at once wait in their model's queue (--max-queued-requests), which has its own refusal and retry hint.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from awqd.errors import ResourceExhausted
from awqd.metrics import STREAMS_IN_FLIGHT
from awqd.server import SERVICE_NAME

LIMITED_METHODS = frozenset(f"/{SERVICE_NAME}/{name}" for name in ("Generate", "Benchmark"))


class StreamLimit:
    """Counts streams on the server's loop, the only place that takes and gives back slots: no lock needed."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0

    @contextmanager
    def slot(self, method: str) -> Iterator[None]:
        if method not in LIMITED_METHODS:
            yield
            return
        if self.in_flight >= self.limit:
            raise ResourceExhausted(
                f"max concurrent streams: {self.limit} Generate/Benchmark streams are already in flight "
                "(--max-concurrent-streams); retry when one finishes"
            )
        self.in_flight += 1
        STREAMS_IN_FLIGHT.inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            STREAMS_IN_FLIGHT.dec()
