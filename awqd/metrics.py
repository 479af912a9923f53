"""The Prometheus counters and histograms updated on the hot path (status interceptor, stream limit, model workers).

The scrape endpoint and the metrics read from the daemon at scrape time are in awqd/server/metrics.py.
Per-engine series carry the model and the torch device its engine runs on (one engine per device a model is placed
on, awqd.hosting.replicas).
"""

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString


class BulkHistogram(Collector):
    """A labelled Prometheus histogram whose observations one thread gathers (Gatherer) and merges under one lock.

    prometheus_client's Histogram takes two locks per observation, about 1 µs. Observed at a request's end, a
    128-token request's gaps cost ~128 µs, and a decode step that ends an admission wave of 256 streams held the
    interpreter lock for ~33 ms while their completions waited for it. Gathered as the tokens come, each costs ~0.3 µs.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str],
        buckets: Iterable[float],
        registry: CollectorRegistry = REGISTRY,
    ):
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.bounds = tuple(sorted(buckets))
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}  # labels -> (counts, [sum])
        registry.register(self)

    def gatherer(self, labels: tuple[str, ...]) -> "Gatherer":
        """An accumulator for one thread's observations of one series; the series exists (at zero) from now."""
        with self._lock:
            self._series.setdefault(labels, ([0] * (len(self.bounds) + 1), [0.0]))
        return Gatherer(self, labels)

    def merge(self, labels: tuple[str, ...], counts: list[int], total: float) -> None:
        with self._lock:
            series_counts, series_sum = self._series[labels]
            for bucket, count in enumerate(counts):
                series_counts[bucket] += count
            series_sum[0] += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            series = [(labels, list(counts), total) for labels, (counts, [total]) in self._series.items()]
        for labels, counts, total in series:
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric(labels, buckets, total)
        yield family


class Gatherer:
    """Observations of one series, kept by the one thread that makes them until flush() merges them (~0.3 µs each)."""

    def __init__(self, histogram: BulkHistogram, labels: tuple[str, ...]):
        self.histogram, self.labels, self.bounds = histogram, labels, histogram.bounds
        self.counts, self.total = [0] * (len(self.bounds) + 1), 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # a value equal to a bound counts in its bucket (le)
        self.total += value

    def flush(self) -> None:
        if any(self.counts):
            self.histogram.merge(self.labels, self.counts, self.total)
            self.counts, self.total = [0] * len(self.counts), 0.0


RPC_REQUESTS = Counter("awqd_rpc_requests", "Finished RPCs by full method name and status code", ["method", "code"])
STREAMS_IN_FLIGHT = Gauge("awqd_streams_in_flight", "Generate and Benchmark streams running now")
FRONTEND_PROCESSES = Gauge("awqd_frontend_processes", "Frontend processes (--frontend-processes) listening now")
FRONTEND_RESTARTS = Counter(
    "awqd_frontend_restarts",
    "Restarts of frontend processes that exited while the daemon served, by outcome: restarted, or failed (retried)",
    ["outcome"],
)
GENERATED_TOKENS = Counter("awqd_generated_tokens", "Tokens streamed to callers", ["model", "device"])
KV_CACHE_PREEMPTIONS = Counter(
    "awqd_kv_cache_preemptions",
    "Running sequences that gave their KV-cache blocks back when blocks ran out, by how they resume: mode swap (their "
    "blocks wait in host memory and are copied back) or recompute (they are prefilled again)",
    ["model", "device", "mode"],
)
PREFIX_CACHE_PROMPT_TOKENS = Counter(
    "awqd_prefix_cache_prompt_tokens",
    "Prompt tokens of admitted requests that could use the prefix cache (not pinned, not a benchmark)",
    ["model", "device"],
)
PREFIX_CACHE_HIT_TOKENS = Counter(
    "awqd_prefix_cache_hit_tokens",
    "Of those prompt tokens, the ones whose k/v came from cached blocks of an earlier prompt with the same start; "
    "divided by awqd_prefix_cache_prompt_tokens, the hit rate",
    ["model", "device"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "awqd_time_to_first_token_seconds",
    "From the request's arrival (queueing included) to its first generated token",
    ["model", "device"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
INTER_TOKEN_LATENCY = BulkHistogram(
    "awqd_inter_token_latency_seconds",
    "Gap between consecutive generated tokens of one request",
    ["model", "device"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 5),
)
STREAM_DELIVERY_LAG = Histogram(
    "awqd_stream_delivery_lag_seconds",
    "From the engine handing a Generate stream's first token (message first) or its completion (message last) to the "
    "event bridge, to the loop sending the message that carries it (to a frontend's frame, or written by the stream's "
    "RPC; from the oldest event a merged message carries): how far the server's loop is behind the engine",
    ["model", "message"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 1),
)
TRITON_COMPILATIONS = Counter(
    "awqd_triton_compilations",
    "Triton kernel specialisations compiled (or loaded from the disk cache) in the daemon process, by phase: load (a "
    "model's packing and warm-up) or serving (outside every load: a specialisation warm-up missed, or a pinned "
    "kernel's first use)",
    ["phase"],
)
