"""When a benchmark must stop: its caller went away, its gRPC deadline passed, or the daemon's cap ran out.

Measurements are never interrupted half-way (a kernel timing is milliseconds to seconds); the benchmark checks
between them. A generation in flight stops at once, since `stop` is also the cancelled event of its Job.
"""

import threading
import time
from collections.abc import Callable

MAX_BENCHMARK_SECONDS = 600.0  # a benchmark holds its device's lock; one caller must not hold it for ever


class Budget:
    def __init__(
        self,
        stop: threading.Event,
        time_remaining: Callable[[], float | None],
        cap_s: float = MAX_BENCHMARK_SECONDS,
    ):
        self.stop = stop  # set by the RPC's termination callback: the client cancelled or its deadline passed
        self.cap_s = cap_s
        self.capped = False  # the daemon's cap, not the caller, ended the run: the report says what is missing
        self._time_remaining = time_remaining
        self._ends_at = time.monotonic() + cap_s

    def exhausted(self) -> bool:
        remaining = self._time_remaining()
        if remaining is not None and remaining <= 0:
            self.stop.set()
        if not self.stop.is_set() and time.monotonic() >= self._ends_at:
            self.capped = True
            self.stop.set()
        return self.stop.is_set()
