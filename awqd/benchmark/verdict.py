"""The conclusions of a run, in numbers and in a few sentences."""

from collections.abc import Sequence
from itertools import groupby

from awqd.benchmark.report import BatchSweepPoint, KernelLatency, QualityResult, SingleQueryResult, Verdict
from awqd.kernels.candidates.reference_torch import ReferenceTorch
from awqd.kernels.measure import FP16_BASELINE


def kernel_verdict(
    latencies: Sequence[KernelLatency], roofline_gbps: float, device_label: str, notes: Sequence[str]
) -> Verdict:
    """Per batch size the fastest AWQ candidate; the summary adds how it compares with fp16 and the roofline."""
    candidates = sorted((row for row in latencies if row.kernel != FP16_BASELINE), key=lambda row: row.batch_tokens)
    fastest = tuple(
        min(rows, key=lambda row: row.median_ms) for _, rows in groupby(candidates, key=lambda row: row.batch_tokens)
    )
    if not fastest:
        return Verdict((), 0.0, join([f"No AWQ candidate was timed on {device_label}"], notes))
    winners = {}
    for row in fastest:
        winners.setdefault(row.kernel, []).append(str(row.batch_tokens))
    parts = [f"{kernel} at {', '.join(sizes)} tokens" for kernel, sizes in winners.items()]
    first = fastest[0]
    sentences = [f"Fastest on {device_label}: {'; '.join(parts)}"]
    figures = [f"{first.median_ms:.4g} ms"]
    if first.speedup_vs_fp16:
        figures.append(f"{first.speedup_vs_fp16:.2f}x the speed of {FP16_BASELINE}")
    if roofline_gbps:
        bandwidth = first.effective_bandwidth_gbps
        figures.append(
            f"{bandwidth:.3g} GB/s, {bandwidth / roofline_gbps:.0%} of the {roofline_gbps:.4g} GB/s roofline"
        )
    sentences.append(f"At {tokens(first.batch_tokens)} {first.kernel} takes {'; '.join(figures)}")
    slower = [str(row.batch_tokens) for row in fastest if 0 < row.speedup_vs_fp16 < 1]
    if slower:
        sentences.append(f"{FP16_BASELINE} is faster than every AWQ candidate at {', '.join(slower)} tokens.")
    return Verdict(fastest, 0.0, join(sentences, notes))


def single_query_verdict(rows: Sequence[SingleQueryResult], device_label: str, notes: Sequence[str]) -> Verdict:
    """GEMV over GEMM by median total latency, when both ran."""
    by_kernel = {row.kernel: row for row in rows if row.runs}
    gemm, gemv = by_kernel.get("gemm"), by_kernel.get("gemv")
    sentences = []
    speedup = 0.0
    if gemm and gemv:
        speedup = gemm.total_ms / gemv.total_ms
        sentences.append(
            f"On {device_label}, GEMV is {speedup:.2f}x GEMM end to end "
            f"({gemv.total_ms:.1f} ms vs {gemm.total_ms:.1f} ms; above 1 means GEMV is faster)."
        )
    else:
        missing = " and ".join(name for name in ("gemm", "gemv") if name not in by_kernel)
        sentences.append(f"On {device_label}, no GEMV-over-GEMM speedup: {missing} not measured.")
    if by_kernel:
        best = min(by_kernel.values(), key=lambda row: row.total_ms)
        sentences.append(
            f"Lowest total latency: {best.kernel}, {best.total_ms:.1f} ms "
            f"(TTFT {best.time_to_first_token_ms:.1f} ms, {best.ms_per_token_p50:.2f} ms per token p50)."
        )
    return Verdict((), speedup, join(sentences, notes))


def batch_sweep_verdict(points: Sequence[BatchSweepPoint], device_label: str, notes: Sequence[str]) -> Verdict:
    """The best aggregate throughput, and how it scales from the lowest concurrency measured."""
    if not points:
        return Verdict((), 0.0, join([f"No concurrency level was measured on {device_label}"], notes))
    best = max(points, key=lambda point: point.tokens_per_second)
    base = min(points, key=lambda point: point.concurrent_sequences)
    sentences = [
        f"On {device_label}, {best.concurrent_sequences} concurrent sequences reach {best.tokens_per_second:.1f} "
        f"tokens/s in aggregate, inter-token p99 {best.inter_token_p99_ms:.2f} ms"
    ]
    if best is not base:
        sentences.append(
            f"That is {best.tokens_per_second / base.tokens_per_second:.2f}x the {base.tokens_per_second:.1f} "
            f"tokens/s of {base.concurrent_sequences}"
        )
    return Verdict((), 0.0, join(sentences, notes))


def tokens(count: int) -> str:
    return f"{count} token" if count == 1 else f"{count} tokens"


def quality_verdict(rows: Sequence[QualityResult], device_label: str, notes: Sequence[str]) -> Verdict:
    """The reference's perplexity, and which kernels stay within the bound of it."""
    scored = [row for row in rows if not row.error]
    reference = next((row for row in scored if row.kernel == ReferenceTorch.name), None)
    if reference is None:
        sentence = f"On {device_label}, the reference kernel did not run, so no kernel could be compared with it."
        return Verdict((), 0.0, join([sentence], notes))
    others = [row for row in scored if row is not reference]
    outside = [f"{row.kernel} ({row.delta_vs_reference_percent:+.3f}%)" for row in others if not row.within_bound]
    sentences = [
        f"On {device_label}, reference perplexity {reference.perplexity:.4f} over {reference.tokens_scored} tokens."
    ]
    if outside:
        bound = reference.bound_percent
        sentences.append(
            f"{len(outside)} of {len(others)} kernels differ from it by more than {bound}%: {', '.join(outside)}."
        )
    elif others:
        worst = max(others, key=lambda row: abs(row.delta_vs_reference_percent))
        sentences.append(
            f"All {len(others)} kernels are within {reference.bound_percent}% of it (largest difference: "
            f"{worst.kernel}, {worst.delta_vs_reference_percent:+.3f}%)."
        )
    return Verdict((), 0.0, join(sentences, notes))


def join(sentences: Sequence[str], notes: Sequence[str]) -> str:
    return " ".join(text if text.endswith(".") else f"{text}." for text in [*sentences, *notes])
