"""On-boot kernel selection for one device, bounded in time, and the operator's kernel overrides.

eligibility (capability rules + import probes) -> correctness of every eligible candidate on the real layer
shapes -> time the correct ones on every batch bucket -> per bucket the fastest. A cached result with the same
fingerprint is re-validated instead of re-measured: the chosen kernels' correctness is re-checked and, on the
smallest, a middle and the largest bucket, the chosen kernel is re-timed against the runner-up. The cache is
kept if the chosen one is at most NOISE_MARGINS[device type] slower than the runner-up now: above the run-to-run
noise of median timings and below the gaps that decide a bucket on a GPU (AutoAWQ's kernels differ by 1.3x-3x
on H200).

The dataclasses mirror proto awq.v1 KernelCandidate, KernelDecision, KernelTiming and KernelSelection.
"""

import dataclasses
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog
import torch

from awqd.errors import AwqdError, FailedPrecondition, InvalidArgument
from awqd.kernels import cache, registry
from awqd.kernels.base import Candidate, Dispatch
from awqd.kernels.capability import (
    RULES,
    Eligibility,
    eligibility,
    probe_requirements,
    select_kernel_version,
    torch_arch_list,
)
from awqd.kernels.measure import (
    CorrectnessCheck,
    KernelTiming,
    PreparedLayers,
    check_correctness,
    default_repetitions,
    prepare_layers,
    random_layer_weights,
    rotation_copies,
    time_candidate,
)
from awqd.node.devices import DeviceInfo

log = structlog.get_logger("awqd.kernels")

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# How much slower than the runner-up a cached choice may re-time before the cache is re-measured. On an H200 the
# same kernel re-timed within 2% across boots; the host CPU drifted ~8% (bench/results/h200-2026-11-21), so the
# CPU gets a wider margin rather than re-measuring on every boot.
NOISE_MARGINS = {"cuda": 0.10, "cpu": 0.25}
SOURCES = ("measured", "cache_validated", "capability_rule", "forced")
# Of the time left after correctness checks, what tuning launch configurations may take; timing gets the rest.
TUNING_SHARE = 0.5


@dataclass
class CandidateReport:
    """proto KernelCandidate: eligibility plus the correctness check, once it has run."""

    name: str
    family: str
    supported: bool
    reason: str
    requires: tuple[str, ...]
    layout: str
    correctness: CorrectnessCheck | None = None

    @property
    def usable(self) -> bool:
        return self.supported and self.correctness is not None and self.correctness.passed


@dataclass
class KernelDecision:
    batch_tokens: int
    kernel: str
    source: str  # one of SOURCES
    reason: str
    timings: list[KernelTiming] = field(default_factory=list)  # fastest first


@dataclass
class DeviceDecisions:
    """Everything Describe shows for a device's kernels; `dispatch()` turns it into the model's Dispatch."""

    device_uuid: str
    device_label: str  # e.g. "NVIDIA H200 (cuda:0, compute capability 9.0)"
    candidates: list[CandidateReport]
    decisions: list[KernelDecision]
    source: str
    measured_at: datetime | None
    duration_s: float
    fingerprint: str
    notes: list[str] = field(default_factory=list)
    forced: str | None = None  # the operator's override, applied or not (notes say which)
    tuning: dict[str, Any] = field(default_factory=dict)  # candidate -> its tuned launch configurations

    def candidate(self, name: str) -> CandidateReport | None:
        return next((report for report in self.candidates if report.name == name), None)

    def usable_names(self) -> list[str]:
        return [report.name for report in self.candidates if report.usable]

    def dispatch(self) -> Dispatch:
        if not self.decisions:
            raise FailedPrecondition(f"no kernel decisions for {self.device_label}: {'; '.join(self.notes)}")
        built = {name: registry.build(name) for name in dict.fromkeys(d.kernel for d in self.decisions)}
        return Dispatch(
            buckets=tuple(d.batch_tokens for d in self.decisions),
            candidates=tuple(built[d.kernel] for d in self.decisions),
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["measured_at"] = self.measured_at.isoformat() if self.measured_at else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DeviceDecisions":
        """Inverse of to_dict; raises KeyError/TypeError/ValueError on a malformed dict."""
        candidates = [
            CandidateReport(
                **{**c, "requires": tuple(c["requires"])},
            )
            for c in data["candidates"]
        ]
        for report in candidates:
            if report.correctness is not None:
                report.correctness = CorrectnessCheck(**report.correctness)
        decisions = [
            KernelDecision(**{**d, "timings": [KernelTiming(**t) for t in d["timings"]]}) for d in data["decisions"]
        ]
        measured_at = datetime.fromisoformat(data["measured_at"]) if data["measured_at"] else None
        return cls(**{**data, "candidates": candidates, "decisions": decisions, "measured_at": measured_at})


def device_label(device: DeviceInfo) -> str:
    if device.kind == "cpu":
        return f"the host CPU ({device.name})"
    return f"{device.name} ({device.torch_device or device.uuid}, compute capability {device.capability_str})"


def select_kernels(
    device: DeviceInfo,
    shapes: Sequence[tuple[int, int]],
    group_size: int,
    cache_dir: Path | None,
    budget_s: float = 60.0,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    forced: str | None = None,
) -> DeviceDecisions:
    """Decide the kernel per bucket for `device`. Never raises: failures become capability rules and notes."""
    started = time.perf_counter()
    shapes, buckets = [tuple(s) for s in shapes], sorted(set(buckets))
    parts = cache.fingerprint_parts(device, shapes, group_size, buckets)
    fingerprint = cache.fingerprint(parts)
    reports = [CandidateReport(**dataclasses.asdict(e)) for e in device_eligibility(device)]
    try:
        decisions = select_measured_or_cached(
            device, reports, shapes, group_size, cache_dir, started + budget_s, buckets, fingerprint, parts
        )
    except Exception as error:  # selection must never keep a device from serving
        log.exception("kernel_selection_failed", device=device.uuid)
        decisions = DeviceDecisions(
            device.uuid, device_label(device), reports, [], "capability_rule", None, 0.0, fingerprint
        )
        decisions.notes.append(f"selection failed ({type(error).__name__}: {error}); using capability rules")
        decisions.decisions = rule_decisions(device, reports, buckets, "selection failed")
    decisions.duration_s = time.perf_counter() - started
    if forced:
        apply_forced(decisions, forced)
    log.info("kernels_selected", device=device.uuid, source=decisions.source, duration_s=round(decisions.duration_s, 3))
    return decisions


def device_eligibility(device: DeviceInfo) -> list[Eligibility]:
    verdicts = eligibility(
        device.compute_capability, probe_requirements(), torch_arch_list() if device.kind == "cuda" else None
    )
    if device.kind == "cuda" and not device.torch_device:
        reason = f"torch cannot address GPU {device.uuid}, so no kernel can run on it"
        return [dataclasses.replace(v, supported=False, reason=reason) for v in verdicts]
    return verdicts


def select_measured_or_cached(
    device: DeviceInfo,
    reports: list[CandidateReport],
    shapes: list[tuple[int, int]],
    group_size: int,
    cache_dir: Path | None,
    deadline: float,
    buckets: list[int],
    fingerprint: str,
    parts: dict[str, str],
) -> DeviceDecisions:
    notes: list[str] = []
    if not any(report.supported for report in reports):
        notes.append(f"no kernel candidate is supported on {device_label(device)}")
        return DeviceDecisions(
            device.uuid, device_label(device), reports, [], "capability_rule", None, 0.0, fingerprint, notes
        )
    torch_device = torch.device(device.torch_device)
    remaining = max(0.0, deadline - time.perf_counter())
    with cache.locked(cache_dir, device.uuid, timeout_s=remaining / 2) as lock_note:
        notes += [lock_note] if lock_note else []
        if cache_dir is not None:
            cached, load_notes = cache.load(cache_dir, device.uuid, fingerprint, parts)
            notes += load_notes
            if cached is not None:
                validated = validate_cached(cached, device, torch_device, reports, shapes, group_size, notes)
                if validated is not None:
                    return validated
        decisions = measure(device, torch_device, reports, shapes, group_size, deadline, buckets, notes)
        decisions.fingerprint = fingerprint
        if cache_dir is not None and decisions.source == "measured":
            write_note = cache.store(cache_dir, device.uuid, fingerprint, parts, decisions.to_dict())
            decisions.notes += [write_note] if write_note else [f"saved to {cache.cache_path(cache_dir, device.uuid)}"]
        elif cache_dir is not None:
            decisions.notes.append("not cached: some buckets were not measured")
    return decisions


def check_all(
    reports: list[CandidateReport],
    names: Sequence[str],
    torch_device: torch.device,
    shapes: list[tuple[int, int]],
    group_size: int,
) -> None:
    for report in reports:
        if report.name in names:
            report.correctness = check_correctness(registry.build(report.name), torch_device, shapes, group_size)
            if not report.correctness.passed:
                log.warning("kernel_rejected", kernel=report.name, error=report.correctness.error)


def time_buckets(
    layers: Sequence[PreparedLayers],
    torch_device: torch.device,
    buckets: Sequence[int],
    deadline: float,
    notes: list[str],
) -> dict[int, list[KernelTiming]]:
    """Timings per bucket, fastest first. The budget is checked between buckets (overshoot: one bucket)."""
    warmup, iterations = default_repetitions(torch_device)
    timings: dict[int, list[KernelTiming]] = {}
    for bucket in buckets:
        if time.perf_counter() >= deadline:
            notes.append(f"time budget ran out before the {bucket}-token bucket")
            break
        row = []
        for prepared in layers:
            try:
                row.append(time_candidate(prepared, torch_device, bucket, warmup, iterations))
            except Exception as error:  # correct at small sizes yet failing here: leave it out of this bucket
                notes.append(f"{prepared.candidate.name} failed timing at {bucket} tokens: {error}")
        if row:
            timings[bucket] = sorted(row, key=lambda timing: timing.median_ms)
    return timings


def measure(
    device: DeviceInfo,
    torch_device: torch.device,
    reports: list[CandidateReport],
    shapes: list[tuple[int, int]],
    group_size: int,
    deadline: float,
    buckets: list[int],
    notes: list[str],
) -> DeviceDecisions:
    measured_at = datetime.now(timezone.utc)
    check_all(reports, [r.name for r in reports if r.supported], torch_device, shapes, group_size)
    usable = [report.name for report in reports if report.usable]
    if not usable:
        notes.append(f"no supported candidate passed its correctness check on {device_label(device)}")
    tuning = tune_all(usable, shapes, buckets, group_size, torch_device, deadline, notes)
    layers = prepare_all(usable, shapes, group_size, torch_device, notes) if time.perf_counter() < deadline else []
    timings = time_buckets(layers, torch_device, buckets, deadline, notes)
    del layers
    if torch_device.type == "cuda":
        torch.cuda.empty_cache()

    decisions = []
    for bucket in buckets:
        if bucket in timings:
            decisions.append(measured_decision(bucket, timings[bucket]))
        else:
            decisions += rule_decisions(device, reports, [bucket], "not measured: the time budget ran out")
    source = Counter(d.source for d in decisions).most_common(1)[0][0] if decisions else "capability_rule"
    return DeviceDecisions(
        device.uuid, device_label(device), reports, decisions, source, measured_at, 0.0, "", notes, tuning=tuning
    )


def tune_all(
    names: Sequence[str],
    shapes: list[tuple[int, int]],
    buckets: list[int],
    group_size: int,
    torch_device: torch.device,
    deadline: float,
    notes: list[str],
) -> dict[str, Any]:
    """Tune the candidates that have launch configurations, within TUNING_SHARE of the remaining budget, so the
    timings that follow measure every candidate at its best."""
    tuning_deadline = time.perf_counter() + TUNING_SHARE * max(0.0, deadline - time.perf_counter())
    tuning = {}
    for name in names:
        try:
            stored = registry.build(name).tune(shapes, buckets, group_size, torch_device, tuning_deadline, notes)
        except Exception as error:  # tuning is an optimisation: the untuned defaults still run
            notes.append(f"{name}: tuning failed ({type(error).__name__}: {error}); using its default tiles")
            continue
        if stored is not None:
            tuning[name] = stored
    return tuning


def install_tuning(tuning: dict[str, Any], torch_device: torch.device) -> None:
    for name, stored in tuning.items():
        registry.build(name).install_tuning(stored, torch_device)


def prepare_all(
    names: Sequence[str],
    shapes: list[tuple[int, int]],
    group_size: int,
    torch_device: torch.device,
    notes: list[str],
) -> list[PreparedLayers]:
    """Each candidate's packed copy of one set of random timing weights; a candidate that cannot pack is noted."""
    if not names:
        return []
    weights = random_layer_weights(shapes, group_size, torch_device, rotation_copies(shapes, torch_device))
    layers = []
    for name in names:
        try:
            layers.append(prepare_layers(registry.build(name), weights, torch_device))
        except Exception as error:  # e.g. out of memory for one more layout
            notes.append(f"{name} could not pack the timing weights: {type(error).__name__}: {error}")
    return layers


def measured_decision(bucket: int, timings: list[KernelTiming]) -> KernelDecision:
    best = timings[0]
    reason = f"{best.kernel} is the fastest correct candidate at {bucket} tokens: {best.median_ms:.4g} ms"
    if len(timings) > 1:
        runner_up = timings[1]
        reason += (
            f"; runner-up {runner_up.kernel} {runner_up.median_ms:.4g} ms "
            f"({runner_up.median_ms / best.median_ms:.2f}x slower)"
        )
    else:
        reason += "; the only correct candidate"
    return KernelDecision(bucket, best.kernel, "measured", reason, timings)


def rule_decisions(
    device: DeviceInfo, reports: list[CandidateReport], buckets: Sequence[int], why: str
) -> list[KernelDecision]:
    """Capability-rule decisions, kept to candidates that passed correctness whenever it has run."""
    importable = {requirement for requirement, error in probe_requirements().items() if error is None}
    checked = any(report.correctness is not None for report in reports)
    allowed = [r.name for r in reports if (r.usable if checked else r.supported)]
    if not allowed:
        return []
    decisions = []
    for bucket in buckets:
        choice = select_kernel_version(device.compute_capability, bucket, importable)
        kernel, reason = choice.name, f"{why}; capability rule: {choice.reason}"
        if kernel not in allowed:
            kernel = allowed[0]
            reason += f"; {choice.name} is not usable here, so {kernel}, the first usable candidate"
        decisions.append(KernelDecision(bucket, kernel, "capability_rule", reason))
    return decisions


def validate_cached(
    cached: dict[str, Any],
    device: DeviceInfo,
    torch_device: torch.device,
    reports: list[CandidateReport],
    shapes: list[tuple[int, int]],
    group_size: int,
    notes: list[str],
) -> DeviceDecisions | None:
    """The cached decisions, re-validated, or None (with the reason in notes) when they no longer hold."""
    try:
        stored = DeviceDecisions.from_dict(cached)
    except (KeyError, TypeError, ValueError) as error:
        notes.append(f"cached decisions are malformed ({error!r}); re-measuring")
        return None
    chosen = list(dict.fromkeys(d.kernel for d in stored.decisions))
    unsupported = [name for name in chosen if not getattr(next_report(reports, name), "supported", False)]
    if unsupported or not stored.decisions:
        notes.append(f"cached kernels {', '.join(unsupported) or '(none)'} are not supported now; re-measuring")
        return None
    install_tuning(stored.tuning, torch_device)  # re-validation times the tiles the cache says were fastest
    check_all(reports, chosen, torch_device, shapes, group_size)
    failed = [r for r in reports if r.name in chosen and not r.usable]
    if failed:
        errors = "; ".join(f"{r.name}: {r.correctness.error if r.correctness else 'unchecked'}" for r in failed)
        notes.append(f"cached kernels failed their correctness re-check ({errors}); re-measuring")
        return None
    try:
        ordering_note = recheck_ordering(stored, torch_device, reports, shapes, group_size)
    except Exception as error:  # a kernel that passed correctness but fails at a bucket size
        ordering_note = f"re-measuring: re-timing the cached choices failed: {type(error).__name__}: {error}"
    if ordering_note.startswith("re-measuring"):
        notes.append(ordering_note)
        return None
    for report in reports:  # candidates not re-checked keep the check from the cached measurement
        cached_report = stored.candidate(report.name)
        if report.correctness is None and report.supported and cached_report is not None:
            report.correctness = cached_report.correctness
    for decision in stored.decisions:
        decision.source = "cache_validated"
        decision.reason = f"{decision.reason} (measured {stored.measured_at:%Y-%m-%d %H:%M} UTC, re-validated)"
    notes.append(ordering_note)
    return DeviceDecisions(
        device.uuid,
        device_label(device),
        reports,
        stored.decisions,
        "cache_validated",
        stored.measured_at,
        0.0,
        stored.fingerprint,
        notes,
        tuning=stored.tuning,
    )


def next_report(reports: list[CandidateReport], name: str) -> CandidateReport | None:
    return next((report for report in reports if report.name == name), None)


def recheck_ordering(
    stored: DeviceDecisions,
    torch_device: torch.device,
    reports: list[CandidateReport],
    shapes: list[tuple[int, int]],
    group_size: int,
) -> str:
    """Re-time chosen vs runner-up on the smallest, a middle and the largest bucket; a note either way."""
    decisions = stored.decisions
    sample = [decisions[index] for index in sorted({0, len(decisions) // 2, len(decisions) - 1})]
    pairs = [
        (d, d.timings[1].kernel)
        for d in sample
        if len(d.timings) > 1 and getattr(next_report(reports, d.timings[1].kernel), "supported", False)
    ]
    if not pairs:
        return "cache re-validated by correctness alone: no runner-up to re-time against"
    names = {name for d, runner_up in pairs for name in (d.kernel, runner_up)}
    layers = {
        prepared.candidate.name: prepared
        for prepared in prepare_all(sorted(names), shapes, group_size, torch_device, [])
    }
    warmup, iterations = default_repetitions(torch_device)
    margin = NOISE_MARGINS[torch_device.type]
    checked = []
    for decision, runner_up in pairs:
        bucket = decision.batch_tokens
        chosen_ms = time_candidate(layers[decision.kernel], torch_device, bucket, warmup, iterations).median_ms
        runner_up_ms = time_candidate(layers[runner_up], torch_device, bucket, warmup, iterations).median_ms
        if chosen_ms > runner_up_ms * (1 + margin):
            return (
                f"re-measuring: at {bucket} tokens cached choice {decision.kernel} now takes {chosen_ms:.4g} ms, "
                f"more than {margin:.0%} over runner-up {runner_up} at {runner_up_ms:.4g} ms"
            )
        checked.append(f"{bucket} tokens: {decision.kernel} {chosen_ms:.4g} ms vs {runner_up} {runner_up_ms:.4g} ms")
    return f"cache re-validated within {margin:.0%}: " + "; ".join(checked)


def resolve_forced_name(decisions: DeviceDecisions, name: str) -> str:
    usable = decisions.usable_names()
    supported_list = ", ".join(usable) or "none"
    if name in registry.CANDIDATES:
        report = decisions.candidate(name)
        if report is None or not report.supported:
            why = report.reason if report else "not evaluated"
            raise FailedPrecondition(
                f"kernel {name} is not supported on {decisions.device_label}: {why}; supported: {supported_list}"
            )
        if not report.usable:
            why = report.correctness.error if report.correctness else "its correctness check has not run"
            raise FailedPrecondition(
                f"kernel {name} failed its correctness check on {decisions.device_label}: {why}; "
                f"supported: {supported_list}"
            )
        return name
    if registry.is_family(name):
        resolved = registry.resolve_family(name, usable)
        if resolved is None:
            members = "; ".join(
                f"{r.name}: {r.reason if not r.supported else r.correctness.error if r.correctness else 'unchecked'}"
                for r in decisions.candidates
                if RULES[r.name].family == name
            )
            raise FailedPrecondition(
                f"kernel family {name} has no supported candidate on {decisions.device_label} ({members}); "
                f"supported: {supported_list}"
            )
        return resolved
    known = ", ".join([*registry.candidate_names(), *sorted({rule.family for rule in RULES.values()})])
    raise InvalidArgument("kernel", f"unknown kernel {name!r}; use 'auto', a family or a candidate: {known}")


def resolve_forced(decisions: DeviceDecisions, name: str) -> Candidate:
    """The candidate an override names (a candidate or a family) on this device, or FailedPrecondition saying why
    not and what is supported. Used for daemon, model and request overrides."""
    return registry.build(resolve_forced_name(decisions, name))


def apply_forced(decisions: DeviceDecisions, forced: str) -> None:
    decisions.forced = forced
    try:
        name = resolve_forced_name(decisions, forced)
    except AwqdError as error:
        decisions.notes.append(f"forced kernel {forced!r} not applied: {error}")
        return
    for decision in decisions.decisions:
        decision.reason = f"forced to {name} by the operator ({forced!r}); selection chose {decision.kernel}"
        decision.kernel, decision.source = name, "forced"
    decisions.source = "forced"
