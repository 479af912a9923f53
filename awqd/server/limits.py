"""The daemon-wide cap on Generate and Benchmark streams in flight."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from awqd.errors import ResourceExhausted
from awqd.metrics import STREAMS_IN_FLIGHT
from awqd.server import SERVICE_NAME

LIMITED_METHODS = frozenset(f"/{SERVICE_NAME}/{name}" for name in ("Generate", "Benchmark"))


class StreamLimit:
    """Each stream holds a gRPC worker thread for its whole life; refusing the excess keeps threads for the rest."""

    def __init__(self, limit: int):
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    @contextmanager
    def slot(self, method: str) -> Iterator[None]:
        if method not in LIMITED_METHODS:
            yield
            return
        if not self._slots.acquire(blocking=False):
            raise ResourceExhausted(
                f"max concurrent streams: {self.limit} Generate/Benchmark streams are already in flight "
                "(--max-concurrent-streams); retry when one finishes"
            )
        STREAMS_IN_FLIGHT.inc()
        try:
            yield
        finally:
            STREAMS_IN_FLIGHT.dec()
            self._slots.release()
