"""KERNEL mode: each candidate's latency over one decoder layer's linear shapes, per batch size, beside fp16.

The timing is awqd.kernels.measure's, the same code boot-time selection uses, on fresh random weights: no hosted
model and no cached decision is touched. Each candidate is first checked against the reference on these shapes,
since boot checked it on the hosted models' shapes only. Bandwidth counts the bytes an AWQ layer must read: int4
weights plus fp16 scales and 4-bit zeros per group; the baseline reads its dense weights.
"""

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import torch

from awqd.benchmark.budget import Budget
from awqd.benchmark.report import KernelLatency, Progress
from awqd.kernels import registry
from awqd.kernels.measure import (
    FP16_BASELINE,
    KernelTiming,
    check_correctness,
    compute_dtype,
    measure_copy_bandwidth_gbps,
    prepare_all,
    time_candidate,
    time_dense_baseline,
)


@dataclass(frozen=True)
class KernelPlan:
    device: torch.device
    shapes: tuple[tuple[int, int], ...]  # (out, in) of each linear layer of one decoder layer
    group_size: int
    candidates: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    warmup: int
    iterations: int


@dataclass
class KernelResults:
    latencies: list[KernelLatency] = field(default_factory=list)
    roofline_gbps: float = 0.0
    notes: list[str] = field(default_factory=list)


def quantized_bytes(shapes: Sequence[tuple[int, int]], group_size: int) -> int:
    """int4 weights, fp16 scales and int4 zeros: what one pass of an AWQ kernel must read."""
    weights = sum(out_features * in_features for out_features, in_features in shapes)
    groups = weights // group_size
    return weights // 2 + groups * 2 + groups // 2


def dense_bytes(shapes: Sequence[tuple[int, int]], device: torch.device) -> int:
    weights = sum(out_features * in_features for out_features, in_features in shapes)
    return weights * torch.finfo(compute_dtype(device)).bits // 8


def latency(timing: KernelTiming, batch_tokens: int, num_bytes: int, baseline_ms: float) -> KernelLatency:
    return KernelLatency(
        kernel=timing.kernel,
        batch_tokens=batch_tokens,
        median_ms=timing.median_ms,
        p10_ms=timing.p10_ms,
        p90_ms=timing.p90_ms,
        effective_bandwidth_gbps=num_bytes / (timing.median_ms * 1e-3) / 1e9,
        speedup_vs_fp16=baseline_ms / timing.median_ms if baseline_ms else 0.0,
        cuda_graph=timing.cuda_graph,
    )


def measure_kernels(plan: KernelPlan, budget: Budget) -> Generator[Progress, None, KernelResults]:
    """Yields progress after each unit of work; returns what was measured before the budget ran out, if it did."""
    device, shapes = plan.device, list(plan.shapes)
    results = KernelResults()
    total = len(plan.candidates) + 1 + len(plan.batch_sizes) * (len(plan.candidates) + 1)
    done = 0

    usable = []
    for name in plan.candidates:
        if budget.exhausted():
            return results
        check = check_correctness(registry.build(name), device, shapes, plan.group_size)
        done += 1
        if check.passed:
            usable.append(name)
            yield Progress("correctness", done, total, f"{name} passed (relative error {check.max_relative_error:.2e})")
        else:
            results.notes.append(
                f"{name} failed its correctness check on these shapes and was not timed: {check.error}"
            )
            yield Progress("correctness", done, total, f"{name} FAILED: {check.error}")

    if budget.exhausted():
        return results
    results.roofline_gbps = measure_copy_bandwidth_gbps(device)
    done += 1
    yield Progress("roofline", done, total, f"copy bandwidth {results.roofline_gbps:.1f} GB/s")

    layers = prepare_all([registry.build(name) for name in usable], shapes, plan.group_size, device, results.notes)
    awq_bytes, fp16_bytes = quantized_bytes(shapes, plan.group_size), dense_bytes(shapes, device)
    try:
        for batch_tokens in plan.batch_sizes:
            if budget.exhausted():
                return results
            baseline_ms = 0.0
            try:
                baseline = time_dense_baseline(
                    shapes, plan.group_size, device, batch_tokens, plan.warmup, plan.iterations
                )
                baseline_ms = baseline.median_ms
                results.latencies.append(latency(baseline, batch_tokens, fp16_bytes, baseline_ms))
            except Exception as error:  # e.g. out of memory for the dense copies: the AWQ rows still stand
                results.notes.append(
                    f"{FP16_BASELINE} failed at {batch_tokens} tokens: {type(error).__name__}: {error}"
                )
            done += 1
            yield Progress("kernel", done, total, f"{FP16_BASELINE} at {batch_tokens} tokens")
            for prepared in layers:
                if budget.exhausted():
                    return results
                name = prepared.candidate.name
                try:
                    timing = time_candidate(prepared, device, batch_tokens, plan.warmup, plan.iterations)
                    results.latencies.append(latency(timing, batch_tokens, awq_bytes, baseline_ms))
                except Exception as error:  # correct at the checked sizes yet failing at this one
                    results.notes.append(f"{name} failed at {batch_tokens} tokens: {type(error).__name__}: {error}")
                done += 1
                yield Progress("kernel", done, total, f"{name} at {batch_tokens} tokens")
    finally:
        del layers
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results
