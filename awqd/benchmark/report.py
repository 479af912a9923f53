"""What a benchmark streams: progress, then one report. Mirrors proto awq.v1 BenchmarkProgress and BenchmarkReport."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from awqd.state import DeviceState, NodeState


@dataclass(frozen=True)
class Progress:
    stage: str  # "correctness", "roofline", "kernel", "single_query", "batch_sweep" or "quality"
    completed: int
    total: int
    message: str


@dataclass(frozen=True)
class KernelLatency:
    kernel: str  # a candidate, or measure.FP16_BASELINE
    batch_tokens: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    effective_bandwidth_gbps: float
    speedup_vs_fp16: float  # 0 when the baseline could not be timed at this batch size
    cuda_graph: bool


@dataclass(frozen=True)
class SingleQueryResult:
    kernel: str  # "gemm", "gemv", "auto" or what the request named
    time_to_first_token_ms: float
    ms_per_token_p50: float
    ms_per_token_p90: float
    total_ms: float
    tokens_per_second: float
    runs: int  # 0: not measured; the verdict's summary says why


@dataclass(frozen=True)
class BatchSweepPoint:
    concurrent_sequences: int
    tokens_per_second: float  # aggregate
    inter_token_p50_ms: float
    inter_token_p99_ms: float


@dataclass(frozen=True)
class QualityResult:
    kernel: str  # the candidate pinned for every quantized linear
    family: str
    perplexity: float  # 0 when not scored (`error` says why)
    tokens_scored: int
    delta_vs_reference_percent: float
    within_bound: bool
    bound_percent: float
    seconds: float
    error: str = ""


@dataclass(frozen=True)
class Verdict:
    fastest: tuple[KernelLatency, ...]
    gemv_over_gemm_speedup: float  # 0 when GEMM or GEMV was not measured
    summary: str


@dataclass(frozen=True)
class Report:
    mode: str
    device: DeviceState
    node: NodeState
    kernel_latencies: tuple[KernelLatency, ...]
    single_query: tuple[SingleQueryResult, ...]
    roofline_bandwidth_gbps: float
    roofline_source: str
    verdict: Verdict
    shapes: tuple[str, ...]
    started_at: datetime
    batch_sweep: tuple[BatchSweepPoint, ...] = ()
    quality: tuple[QualityResult, ...] = ()
