"""On-boot kernel selection for one device, bounded in time, and the operator's kernel overrides.

eligibility (capability rules, import probes, plugins' own verdicts) -> correctness of every eligible candidate
on the real layer shapes, with two different inputs per input shape -> tuning -> on CUDA, the served mode:
CUDA-graph replay with fresh inputs at every bucket decode replays -> time the correct ones on every batch
bucket -> reject timings below the memory roofline -> per bucket the fastest. Every step that runs a candidate
runs in an isolated worker process (awqd/kernels/isolation.py): a crash, hang or poisoned CUDA context rejects
that candidate with the reason, and a fresh worker goes on with the rest.

A cached result with the same fingerprint is re-validated instead of re-measured, also in the worker: the chosen
kernels' correctness is re-checked and, on the smallest, a middle and the largest bucket, the chosen kernel is
re-timed against the runner-up. The cache is kept if the chosen one is at most NOISE_MARGINS[device type]
slower than the runner-up now: above the run-to-run noise of median timings and below the gaps that decide a
bucket on a GPU (AutoAWQ's kernels differ by 1.3x-3x on H200).

A candidate right eagerly but wrong on replay is rejected for the graph buckets and timed eagerly at the others
(the engine captures a whole decode step per bucket, so eager-only kernels would need per-kernel capture rules).
A candidate with a timing below ROOFLINE_MARGIN x the roofline floor at any bucket is excluded from every bucket:
its timings measure something other than its work. When nothing passed at all, the device is degraded.

The dataclasses mirror proto awq.v1 KernelCandidate, KernelDecision, KernelTiming and KernelSelection.
"""

import dataclasses
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog
import torch

from awqd.errors import AwqdError, FailedPrecondition, InvalidArgument
from awqd.kernels import cache, plugins, registry
from awqd.kernels.base import Candidate, Dispatch
from awqd.kernels.capability import CAPABILITY_TABLE, FAMILIES, Eligibility, eligibility, select_kernel_version
from awqd.kernels.isolation import IsolatedDevice, StepFailed
from awqd.kernels.measure import (
    ROOFLINE_MARGIN,
    CorrectnessCheck,
    GraphReplayCheck,
    KernelTiming,
    compute_dtype,
    roofline_applies,
    roofline_floor_ms,
    tolerance_for,
)
from awqd.kernels.requirements import probe_requirements, torch_arch_list
from awqd.node.devices import DeviceInfo

log = structlog.get_logger("awqd.kernels")

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # decode batches, and prefill steps on the CPU
# On GPUs, prefill steps up to --prefill-tokens-per-step's default too: a step takes the kernel of the smallest
# bucket that covers it, and on an H200 a 64-prompt, 8192-token step ran 12% faster on dequantize + cuBLAS than on
# the 512 bucket's fbgemm kernel (bench/results/h200-2026-12-02-prefill). The CPU leaves them out: its kernels all
# multiply densely at that size, and timing 8192-token steps would take a small host minutes.
GPU_PREFILL_BUCKETS = (2048, 8192)
DEFAULT_GRAPH_BATCH = 256  # the engine's default --max-batch-size: decode steps up to it replay CUDA graphs
# How much slower than the runner-up a cached choice may re-time before the cache is re-measured. On an H200 the
# same kernel re-timed within 2% across boots; the host CPU drifted ~8% (bench/results/h200-2026-11-21), so the
# CPU gets a wider margin rather than re-measuring on every boot.
NOISE_MARGINS = {"cuda": 0.10, "cpu": 0.25}
# Of the time left after correctness checks, what tuning launch configurations may take; timing gets the rest.
TUNING_SHARE = 0.5
BUDGET_RAN_OUT = "not measured: the time budget ran out"  # a rule decision's reason starts with it
REFERENCE = "reference_torch"
SHAPED_STEPS = ("check", "graph_check", "tune", "time")


@dataclass
class CandidateReport:
    """proto KernelCandidate: eligibility plus the correctness checks, once they have run."""

    name: str
    family: str
    supported: bool
    reason: str
    requires: tuple[str, ...]
    layout: str
    correctness: CorrectnessCheck | None = None
    graph_replay: GraphReplayCheck | None = None  # CUDA only: the served mode of the decode buckets
    rejected: str = ""  # passed its checks, then crashed or measured the impossible while being timed
    wrong_at: dict[int, str] = field(default_factory=dict)  # bucket -> why its tuned tiles failed the check there
    plugin: str = ""  # MODULE:CLASS for a plugin candidate

    @property
    def usable(self) -> bool:
        return self.supported and self.correctness is not None and self.correctness.passed and not self.rejected

    @property
    def graph_safe(self) -> bool:
        return self.graph_replay is None or self.graph_replay.passed


@dataclass(frozen=True)
class Rejection:
    kernel: str
    reason: str


class DecisionSource(StrEnum):
    MEASURED = "measured"  # timed on this boot
    CACHE_VALIDATED = "cache_validated"  # cached, and its kernels re-checked and re-timed at this boot
    CAPABILITY_RULE = "capability_rule"  # from the rules alone: nothing could be timed
    FORCED = "forced"  # the operator's --kernel


@dataclass
class KernelDecision:
    batch_tokens: int
    kernel: str
    source: DecisionSource
    reason: str
    timings: list[KernelTiming] = field(default_factory=list)  # fastest first
    rejected: list[Rejection] = field(default_factory=list)  # correct candidates left out of this bucket, and why


@dataclass
class DeviceDecisions:
    """Everything Describe shows for a device's kernels; `dispatch()` turns it into the model's Dispatch."""

    device_uuid: str
    device_label: str  # e.g. "NVIDIA H200 (cuda:0, compute capability 9.0)"
    candidates: list[CandidateReport]
    decisions: list[KernelDecision]
    source: DecisionSource  # the most common among the decisions
    measured_at: datetime | None
    duration_s: float
    fingerprint: str
    notes: list[str] = field(default_factory=list)
    forced: str | None = None  # the operator's override, applied or not (notes say which)
    tuning: dict[str, Any] = field(default_factory=dict)  # candidate -> its tuned launch configurations
    graph_buckets: list[int] = field(default_factory=list)  # the buckets decode replays as CUDA graphs
    copy_bandwidth_gbps: float = 0.0  # measured by the worker; the roofline's denominator
    worker_startup_s: float = 0.0  # the isolated worker's first start-up
    worker_restarts: int = 0  # fresh workers after a crash or hang
    degraded: str = ""  # why no kernel can serve on this device; "" when it can

    def candidate(self, name: str) -> CandidateReport | None:
        return next((report for report in self.candidates if report.name == name), None)

    def usable_names(self) -> list[str]:
        return [report.name for report in self.candidates if report.usable]

    def dispatch(self) -> Dispatch:
        if self.degraded:
            raise FailedPrecondition(f"{self.device_label} is degraded: {self.degraded}")
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
        candidates = [CandidateReport(**{**c, "requires": tuple(c["requires"])}) for c in data["candidates"]]
        for report in candidates:
            if report.correctness is not None:
                report.correctness = CorrectnessCheck(**report.correctness)
            if report.graph_replay is not None:
                report.graph_replay = GraphReplayCheck(**report.graph_replay)
            report.wrong_at = {int(bucket): why for bucket, why in report.wrong_at.items()}  # JSON keys are strings
        decisions = [
            KernelDecision(
                **{
                    **d,
                    "source": DecisionSource(d["source"]),
                    "timings": [KernelTiming(**t) for t in d["timings"]],
                    "rejected": [Rejection(**r) for r in d.get("rejected", [])],
                }
            )
            for d in data["decisions"]
        ]
        measured_at = datetime.fromisoformat(data["measured_at"]) if data["measured_at"] else None
        return cls(
            **{
                **data,
                "source": DecisionSource(data["source"]),
                "candidates": candidates,
                "decisions": decisions,
                "measured_at": measured_at,
            }
        )


def device_label(device: DeviceInfo) -> str:
    if device.kind == "cpu":
        return f"the host CPU ({device.name})"
    return f"{device.name} ({device.torch_device or device.uuid}, compute capability {device.capability_str})"


def graph_buckets_for(device: DeviceInfo, buckets: Sequence[int], graph_batch: int) -> list[int]:
    """The selection buckets a decode step of up to `graph_batch` rows (0: no CUDA graphs) dispatches to."""
    if device.kind != "cuda" or graph_batch < 1:
        return []
    covering = next((b for b in buckets if b >= graph_batch), buckets[-1])
    return [b for b in buckets if b <= covering]


def default_buckets(device: DeviceInfo) -> tuple[int, ...]:
    return DEFAULT_BUCKETS + GPU_PREFILL_BUCKETS if device.kind == "cuda" else DEFAULT_BUCKETS


def select_kernels(
    device: DeviceInfo,
    shapes: Sequence[tuple[int, int]],
    group_size: int,
    cache_dir: Path | None,
    budget_s: float = 60.0,
    buckets: Sequence[int] | None = None,
    forced: str | None = None,
    graph_batch: int = DEFAULT_GRAPH_BATCH,
    shared_from: str = "",
) -> DeviceDecisions:
    """Decide the kernel per bucket for `device`. Never raises: failures become capability rules and notes.

    `graph_batch` is the largest decode batch the engine replays as a CUDA graph (0 when graphs are off).
    `shared_from` names an identical device (same fingerprint) decided just before: when this device has no cached
    decisions of its own, that device's are re-validated here instead of measuring again. `buckets` defaults to
    default_buckets(device)."""
    started = time.perf_counter()
    shapes, buckets = [tuple(s) for s in shapes], sorted(set(buckets or default_buckets(device)))
    graph_buckets = graph_buckets_for(device, buckets, graph_batch)
    parts = cache.fingerprint_parts(device, shapes, group_size, buckets, plugins.active_specs(), graph_buckets)
    fingerprint = cache.fingerprint(parts)
    reports = candidate_reports(device)
    isolated = IsolatedDevice(device.torch_device or "cpu", plugins.active_specs())
    try:
        decisions = select_measured_or_cached(
            device,
            reports,
            shapes,
            group_size,
            cache_dir,
            started + budget_s,
            buckets,
            fingerprint,
            parts,
            isolated,
            graph_buckets,
            shared_from,
        )
    except Exception as error:  # selection must never keep a device from serving
        log.exception("kernel_selection_failed", device=device.uuid)
        decisions = DeviceDecisions(
            device.uuid, device_label(device), reports, [], DecisionSource.CAPABILITY_RULE, None, 0.0, fingerprint
        )
        decisions.notes.append(f"selection failed ({type(error).__name__}: {error}); using capability rules")
        decisions.decisions = rule_decisions(device, reports, buckets, "selection failed")
    finally:
        isolated.close()
    decisions.graph_buckets = graph_buckets
    if isolated.startups_s:
        decisions.worker_startup_s, decisions.worker_restarts = isolated.startups_s[0], isolated.restarts
        decisions.notes.append(
            f"isolated worker: started in {isolated.startups_s[0]:.2f} s, restarted {isolated.restarts} time(s)"
        )
    if not decisions.decisions:
        decisions.degraded = degraded_reason(decisions)
        log.error("device_degraded", device=device.uuid, reason=decisions.degraded)
    install_in_daemon(decisions, device)
    decisions.duration_s = time.perf_counter() - started
    if forced:
        apply_forced(decisions, forced)
    log.info(
        "kernels_selected",
        device=device.uuid,
        source=decisions.source,
        duration_s=round(decisions.duration_s, 3),
        kernels={str(d.batch_tokens): d.kernel for d in decisions.decisions},  # what serves each bucket, at a glance
    )
    if unmeasured := [d.batch_tokens for d in decisions.decisions if d.reason.startswith(BUDGET_RAN_OUT)]:
        # Those buckets serve the capability rules' kernels, which may be slower than the measured best (on an H200,
        # stale rules once prefilled 1.45x slower: bench/results/h200-2026-12-04-short-budget-rules).
        log.warning(
            "selection_budget_ran_out",
            device=device.uuid,
            budget_s=budget_s,
            buckets=unmeasured,
            action="these buckets follow the capability rules; raise --selection-budget to measure them",
        )
    return decisions


def degraded_reason(decisions: DeviceDecisions) -> str:
    supported = [r for r in decisions.candidates if r.supported]
    if not supported:
        return "no kernel candidate is supported here"
    failures = "; ".join(
        f"{r.name}: {r.rejected or (r.correctness.error if r.correctness else 'not checked')}" for r in supported
    )
    return f"no kernel candidate passed its checks ({failures})"


def install_in_daemon(decisions: DeviceDecisions, device: DeviceInfo) -> None:
    """The tuning tables the worker found, for the daemon's own instances of the candidates that passed."""
    usable = set(decisions.usable_names())
    for name, stored in decisions.tuning.items():
        if name not in usable:
            continue
        try:
            registry.build(name).install_tuning(stored, torch.device(device.torch_device or "cpu"))
        except Exception as error:  # its default tiles still run
            decisions.notes.append(f"{name}: could not install its tuning ({type(error).__name__}: {error})")


def candidate_reports(device: DeviceInfo) -> list[CandidateReport]:
    reports = [CandidateReport(**dataclasses.asdict(e)) for e in device_eligibility(device)]
    for plugin in plugins.active():
        supported, reason = plugins.eligible(plugin, device)
        if device.kind == "cuda" and not device.torch_device:
            supported, reason = False, f"torch cannot address GPU {device.uuid}, so no kernel can run on it"
        family = plugin.cls.family if plugin.cls is not None else ""
        layout = plugin.cls.layout if plugin.cls is not None else ""
        reports.append(CandidateReport(plugin.name, family, supported, reason, (), layout, plugin=plugin.spec))
    return reports


def device_eligibility(device: DeviceInfo) -> list[Eligibility]:
    verdicts = eligibility(
        device.compute_capability, probe_requirements(), torch_arch_list() if device.kind == "cuda" else None
    )
    if device.kind == "cuda" and not device.torch_device:
        reason = f"torch cannot address GPU {device.uuid}, so no kernel can run on it"
        return [dataclasses.replace(v, supported=False, reason=reason) for v in verdicts]
    return verdicts


@dataclass
class Plan:
    """What one selection measures, and the worker it runs in."""

    isolated: IsolatedDevice
    torch_device: torch.device
    shapes: list[tuple[int, int]]
    group_size: int
    buckets: list[int]
    graph_buckets: list[int]
    deadline: float
    notes: list[str]

    def call(self, op: str, limit_s: float | None = None, **arguments: Any) -> dict[str, Any]:
        """A worker step on these shapes; {"ok": False, "error": reason} when it raised, crashed or hung."""
        if op in SHAPED_STEPS:
            arguments.update(shapes=self.shapes, group_size=self.group_size)
        try:
            return self.isolated.call(op, limit_s, **arguments)
        except StepFailed as error:
            return {"ok": False, "error": str(error), "crashed": True}

    def release(self, name: str) -> None:
        """Frees a rejected candidate's timing weights in the worker, if one is running (no start for that)."""
        if self.isolated.running:
            self.call("release", name=name)


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
    isolated: IsolatedDevice,
    graph_buckets: list[int],
    shared_from: str = "",
) -> DeviceDecisions:
    notes: list[str] = []
    if not any(report.supported for report in reports):
        notes.append(f"no kernel candidate is supported on {device_label(device)}")
        return DeviceDecisions(
            device.uuid,
            device_label(device),
            reports,
            [],
            DecisionSource.CAPABILITY_RULE,
            None,
            0.0,
            fingerprint,
            notes,
        )
    plan = Plan(
        isolated, torch.device(device.torch_device), shapes, group_size, buckets, graph_buckets, deadline, notes
    )
    remaining = max(0.0, deadline - time.perf_counter())
    with cache.locked(cache_dir, device.uuid, timeout_s=remaining / 2) as lock_note:
        notes += [lock_note] if lock_note else []
        if cache_dir is not None:
            cached, load_notes = cache.load(cache_dir, device.uuid, fingerprint, parts)
            notes += load_notes
            if cached is None and shared_from:
                cached, shared_notes = cache.load(cache_dir, shared_from, fingerprint, parts)
                notes += shared_notes or [f"re-validating the decisions measured on {shared_from} (same fingerprint)"]
            if cached is not None:
                validated = validate_cached(cached, device, reports, plan)
                if validated is not None:
                    return validated
        decisions = measure(device, reports, plan)
        decisions.fingerprint = fingerprint
        if cache_dir is not None and decisions.source == DecisionSource.MEASURED:
            write_note = cache.store(cache_dir, device.uuid, fingerprint, parts, decisions.to_dict())
            decisions.notes += [write_note] if write_note else [f"saved to {cache.cache_path(cache_dir, device.uuid)}"]
        elif cache_dir is not None:
            decisions.notes.append("not cached: some buckets were not measured")
    return decisions


def check_all(reports: list[CandidateReport], names: Sequence[str], plan: Plan) -> None:
    """The eager correctness check of each named candidate, in the worker."""
    tolerance = tolerance_for(compute_dtype(plan.torch_device))
    for report in reports:
        if report.name not in names:
            continue
        reply = plan.call("check", name=report.name)
        if reply["ok"]:
            report.correctness = CorrectnessCheck(
                reply["passed"], reply["max_relative_error"], reply["tolerance"], reply["error"]
            )
        else:
            report.correctness = CorrectnessCheck(False, 0.0, tolerance, reply["error"])
        if not report.correctness.passed:
            log.warning("kernel_rejected", kernel=report.name, error=report.correctness.error)
            plan.release(report.name)


def check_graphs(reports: list[CandidateReport], names: Sequence[str], plan: Plan) -> None:
    """The served mode of the decode buckets: CUDA-graph replay with fresh inputs, after tuning (so the tiles
    checked are the tiles served)."""
    if not plan.graph_buckets:
        return
    for report in reports:
        if report.name not in names:
            continue
        notes = []
        for bucket in plan.graph_buckets:
            reply = plan.call("graph_check", name=report.name, bucket=bucket)
            if not reply["ok"] or not reply["passed"]:
                error = reply["error"]
                if reply.get("crashed") or reply.get("poisoned"):  # not merely wrong: unsafe to run at all
                    report.rejected = f"crashed during the CUDA-graph check at {bucket} tokens: {error}"
                report.graph_replay = GraphReplayCheck(
                    False,
                    f"{error}; rejected for the CUDA-graph buckets {plan.graph_buckets[0]}-{plan.graph_buckets[-1]}",
                )
                log.warning("kernel_rejected_for_graphs", kernel=report.name, error=error)
                break
            if reply["error"]:
                notes.append(reply["error"])
        else:
            report.graph_replay = GraphReplayCheck(True, "; ".join(notes), not notes)


def check_eager_buckets(reports: list[CandidateReport], names: Sequence[str], plan: Plan) -> None:
    """The buckets outside the CUDA-graph ones (prefill steps), eagerly, for each named candidate with tuned tiles:
    its first check ran 1, 7 and 64 rows, and it serves each bucket with that bucket's tile. A candidate wrong at a
    bucket is left out of it; one that crashes is rejected."""
    for report in reports:
        if report.name not in names or report.name not in plan.isolated.tuning:
            continue
        for bucket in (b for b in plan.buckets if b not in plan.graph_buckets):
            if not report.usable:
                break
            reply = plan.call("check", name=report.name, rows=bucket)
            if reply["ok"] and reply["passed"]:
                continue
            report.wrong_at[bucket] = f"wrong at {bucket} tokens with its tuned tiles: {reply['error']}"
            log.warning("kernel_rejected_for_bucket", kernel=report.name, bucket=bucket, error=reply["error"])
            if reply.get("crashed") or reply.get("poisoned"):
                report.rejected = report.wrong_at[bucket]
                plan.release(report.name)


def measure(device: DeviceInfo, reports: list[CandidateReport], plan: Plan) -> DeviceDecisions:
    measured_at = datetime.now(UTC)
    notes = plan.notes
    check_all(reports, [r.name for r in reports if r.supported], plan)
    usable = [report.name for report in reports if report.usable]
    if not usable:
        notes.append(f"no supported candidate passed its correctness check on {device_label(device)}")
        return DeviceDecisions(
            device.uuid, device_label(device), reports, [], DecisionSource.CAPABILITY_RULE, measured_at, 0.0, "", notes
        )
    bandwidth = measure_bandwidth(plan)
    tuning = tune_all(usable, plan)
    check_graphs(reports, usable, plan)
    check_eager_buckets(reports, usable, plan)
    timings, rejected = time_buckets(reports, plan, bandwidth)

    decisions = []
    for bucket in plan.buckets:
        if timings.get(bucket):
            decisions.append(measured_decision(bucket, timings[bucket]))
        else:
            why = BUDGET_RAN_OUT if bucket not in timings else "no candidate could be timed"
            decisions += rule_decisions(device, reports, [bucket], why, plan.graph_buckets)
        if decisions and decisions[-1].batch_tokens == bucket:
            decisions[-1].rejected = rejected.get(bucket, [])
    source = Counter(d.source for d in decisions).most_common(1)[0][0] if decisions else DecisionSource.CAPABILITY_RULE
    result = DeviceDecisions(
        device.uuid, device_label(device), reports, decisions, source, measured_at, 0.0, "", notes, tuning=tuning
    )
    result.copy_bandwidth_gbps = bandwidth
    return result


def measure_bandwidth(plan: Plan) -> float:
    """The device's copy bandwidth, measured once per selection in the worker; 0.0 (no roofline) if it failed."""
    reply = plan.call("bandwidth")
    if not reply["ok"]:
        plan.notes.append(f"copy bandwidth not measured ({reply['error']}): no roofline check")
        return 0.0
    plan.notes.append(f"copy bandwidth {reply['gbps']:.1f} GB/s")
    return reply["gbps"]


def time_buckets(
    reports: list[CandidateReport], plan: Plan, bandwidth: float
) -> tuple[dict[int, list[KernelTiming]], dict[int, list[Rejection]]]:
    """Timings per bucket, fastest first, and the usable candidates left out of each bucket with the reason.

    The budget is checked between buckets (overshoot: one bucket). A candidate whose worker crashes or hangs is
    rejected; one with a timing below the roofline is excluded from every bucket."""
    rejected: dict[int, list[Rejection]] = {bucket: [] for bucket in plan.buckets}
    timings: dict[int, list[KernelTiming]] = {}
    floor_ms = roofline_floor_ms(plan.shapes, bandwidth) if bandwidth > 0 else 0.0
    if floor_ms and not roofline_applies(plan.shapes, plan.torch_device):
        plan.notes.append("roofline check skipped: the timed weights fit in the cache, so no memory floor holds")
        floor_ms = 0.0
    for bucket in plan.buckets:
        if time.perf_counter() >= plan.deadline:
            plan.notes.append(f"time budget ran out before the {bucket}-token bucket")
            break
        row = []
        for report in reports:
            if not report.usable:
                continue
            if bucket in plan.graph_buckets and not report.graph_safe:
                rejected[bucket].append(
                    Rejection(report.name, f"wrong on CUDA-graph replay: {report.graph_replay.error}")
                )
                continue
            if bucket in report.wrong_at:
                rejected[bucket].append(Rejection(report.name, report.wrong_at[bucket]))
                continue
            reply = plan.call("time", name=report.name, bucket=bucket, cuda_graph=report.graph_safe)
            if not reply["ok"]:
                reason = f"failed timing at {bucket} tokens: {reply['error']}"
                rejected[bucket].append(Rejection(report.name, reason))
                if reply.get("crashed") or reply.get("poisoned"):
                    report.rejected = reason
                continue
            timing = KernelTiming(**{k: reply[k] for k in ("kernel", "median_ms", "p10_ms", "p90_ms", "cuda_graph")})
            if timing.median_ms < ROOFLINE_MARGIN * floor_ms:
                report.rejected = (
                    f"impossible timing at {bucket} tokens: {timing.median_ms:.4g} ms is below {ROOFLINE_MARGIN:g}x "
                    f"the {floor_ms:.4g} ms that reading its int4 weights takes at the measured {bandwidth:.1f} GB/s "
                    "copy bandwidth: a measurement error, so it is excluded from every bucket"
                )
                log.warning("kernel_rejected", kernel=report.name, error=report.rejected)
                plan.release(report.name)
                continue
            row.append(timing)
        if row or any(r.usable for r in reports):
            timings[bucket] = sorted(row, key=lambda timing: timing.median_ms)
    for report in reports:  # a candidate rejected at a later bucket leaves the earlier ones too
        if report.rejected and report.correctness is not None and report.correctness.passed:
            for bucket, row in timings.items():
                if any(t.kernel == report.name for t in row):
                    timings[bucket] = [t for t in row if t.kernel != report.name]
                if not any(r.kernel == report.name for r in rejected[bucket]):
                    rejected[bucket].append(Rejection(report.name, report.rejected))
    return timings, rejected


def tune_all(names: Sequence[str], plan: Plan) -> dict[str, Any]:
    """Tune the candidates that have launch configurations, within TUNING_SHARE of the remaining budget, so the
    timings that follow measure every candidate at its best. Tables are returned by the worker and kept, so a
    fresh worker and the daemon use them too.

    Each candidate gets an equal part of the tuning time still left when its turn comes, and what it does not use
    goes to those after it. Taken in order, the first spaces used it all: on H200s the GEMM's and the skinny
    kernel's tuning left the GEMV, which serves single streams, no time with a 240 s budget where gemlite's
    autotune ran too, and with a 90 s one (bench/results/h200-2026-12-02-concurrency-final/cold-boot,
    h200-2026-12-03-gemv-tail-step). Without gemlite, 240 s tuned every pair either way
    (h200-2026-12-03-tuning-per-launch)."""
    tuning_deadline = time.perf_counter() + TUNING_SHARE * max(0.0, plan.deadline - time.perf_counter())
    tunable = [name for name in names if registry.tunes_launches(name)]
    tuning = {}
    for index, name in enumerate(tunable):
        seconds = tuning_share(tuning_deadline - time.perf_counter(), len(tunable) - index)
        reply = plan.call(
            "tune", limit_s=seconds + plan.isolated.step_limit, name=name, buckets=plan.buckets, seconds=seconds
        )
        if not reply["ok"]:  # tuning is an optimisation: the untuned defaults still run
            plan.notes.append(f"{name}: tuning failed ({reply['error']}); using its default tiles")
            continue
        plan.notes.extend(reply["notes"])
        if reply["table"] is not None:
            tuning[name] = reply["table"]
    plan.isolated.install_tuning(tuning)
    return tuning


def tuning_share(seconds_left: float, candidates_left: int) -> float:
    """The next candidate's tuning time: an equal part of what is left, none once it has run out."""
    return max(0.0, seconds_left) / candidates_left


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
    return KernelDecision(bucket, best.kernel, DecisionSource.MEASURED, reason, timings)


def rule_decisions(
    device: DeviceInfo,
    reports: list[CandidateReport],
    buckets: Sequence[int],
    why: str,
    graph_buckets: Sequence[int] = (),
) -> list[KernelDecision]:
    """Capability-rule decisions among the candidates that passed (or, before any check ran, are supported).

    On a GPU the reference is never chosen while any other candidate passed: the rules' own choice if it passed,
    else the first passing candidate in capability-table order (plugins last)."""
    importable = {requirement for requirement, error in probe_requirements().items() if error is None}
    checked = any(report.correctness is not None for report in reports)
    order = [rule.name for rule in CAPABILITY_TABLE]
    decisions = []
    for bucket in buckets:
        allowed = [
            r.name
            for r in reports
            if (r.usable if checked else r.supported) and (r.graph_safe or bucket not in graph_buckets)
        ]
        if device.kind == "cuda" and len(allowed) > 1 and REFERENCE in allowed:
            allowed.remove(REFERENCE)
        if not allowed:
            continue
        preferred = sorted(allowed, key=lambda name: order.index(name) if name in order else len(order))
        choice = select_kernel_version(device.compute_capability, bucket, importable, set(allowed))
        kernel, reason = choice.name, f"{why}; capability rule: {choice.reason}"
        if kernel not in allowed:
            kernel = preferred[0]
            reason += f"; {choice.name} did not pass here, so {kernel}, the first candidate that did"
        decisions.append(KernelDecision(bucket, kernel, DecisionSource.CAPABILITY_RULE, reason))
    return decisions


def validate_cached(
    cached: dict[str, Any], device: DeviceInfo, reports: list[CandidateReport], plan: Plan
) -> DeviceDecisions | None:
    """The cached decisions, re-validated in the worker, or None (with the reason in notes) when they no longer
    hold."""
    notes = plan.notes
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
    plan.isolated.install_tuning(stored.tuning)  # re-validation checks and times the tiles the cache chose
    check_all(reports, chosen, plan)
    check_graphs(reports, [d.kernel for d in stored.decisions if d.batch_tokens in plan.graph_buckets], plan)
    check_eager_buckets(reports, [d.kernel for d in stored.decisions if d.batch_tokens not in plan.graph_buckets], plan)
    errors = [
        f"{report.name}: {check_failure(report)}"
        for report in reports
        if report.name in chosen and not (report.usable and report.graph_safe)
    ]
    errors += [
        f"{decision.kernel}: {report.wrong_at[decision.batch_tokens]}"
        for decision in stored.decisions
        if (report := next_report(reports, decision.kernel)) and decision.batch_tokens in report.wrong_at
    ]
    if errors:
        notes.append(f"cached kernels failed their correctness re-check ({'; '.join(errors)}); re-measuring")
        return None
    ordering_note = recheck_ordering(stored, reports, plan)
    if ordering_note.startswith("re-measuring"):
        notes.append(ordering_note)
        return None
    for report in reports:  # checks not re-run keep their result from the cached measurement
        cached_report = stored.candidate(report.name)
        if not report.supported or cached_report is None:
            continue
        if report.correctness is None:
            report.correctness, report.rejected = cached_report.correctness, cached_report.rejected
        report.graph_replay = report.graph_replay or cached_report.graph_replay
    for decision in stored.decisions:
        decision.source = DecisionSource.CACHE_VALIDATED
        decision.reason = f"{decision.reason} (measured {stored.measured_at:%Y-%m-%d %H:%M} UTC, re-validated)"
    notes.append(ordering_note)
    validated = DeviceDecisions(
        device.uuid,
        device_label(device),
        reports,
        stored.decisions,
        DecisionSource.CACHE_VALIDATED,
        stored.measured_at,
        0.0,
        stored.fingerprint,
        notes,
        tuning=stored.tuning,
    )
    validated.copy_bandwidth_gbps = stored.copy_bandwidth_gbps
    return validated


def check_failure(report: CandidateReport) -> str:
    """Why a checked candidate is not usable (or not on CUDA-graph replay)."""
    if report.correctness is not None and not report.correctness.passed:
        return report.correctness.error
    return report.rejected or report.graph_replay.error


def next_report(reports: list[CandidateReport], name: str) -> CandidateReport | None:
    return next((report for report in reports if report.name == name), None)


def recheck_ordering(stored: DeviceDecisions, reports: list[CandidateReport], plan: Plan) -> str:
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
    margin = NOISE_MARGINS[plan.torch_device.type]
    checked = []
    for decision, runner_up in pairs:
        bucket = decision.batch_tokens
        medians = {}
        for name in (decision.kernel, runner_up):
            timing = next(t for t in decision.timings if t.kernel == name)
            reply = plan.call("time", name=name, bucket=bucket, cuda_graph=timing.cuda_graph)
            if not reply["ok"]:
                return f"re-measuring: re-timing the cached choices failed: {name}: {reply['error']}"
            medians[name] = reply["median_ms"]
        chosen_ms, runner_up_ms = medians[decision.kernel], medians[runner_up]
        if chosen_ms > runner_up_ms * (1 + margin):
            return (
                f"re-measuring: at {bucket} tokens cached choice {decision.kernel} now takes {chosen_ms:.4g} ms, "
                f"more than {margin:.0%} over runner-up {runner_up} at {runner_up_ms:.4g} ms"
            )
        checked.append(f"{bucket} tokens: {decision.kernel} {chosen_ms:.4g} ms vs {runner_up} {runner_up_ms:.4g} ms")
    return f"cache re-validated within {margin:.0%}: " + "; ".join(checked)


def resolve_forced_name(decisions: DeviceDecisions, name: str) -> str:
    usable = [r.name for r in decisions.candidates if r.usable and (r.graph_safe or not decisions.graph_buckets)]
    supported_list = ", ".join(usable) or "none"
    if registry.is_candidate(name) or decisions.candidate(name) is not None:
        report = decisions.candidate(name)
        if report is None or not report.supported:
            why = report.reason if report else "not evaluated"
            raise FailedPrecondition(
                f"kernel {name} is not supported on {decisions.device_label}: {why}; supported: {supported_list}"
            )
        if name not in usable:
            raise FailedPrecondition(
                f"kernel {name} failed its checks on {decisions.device_label}: {failure(report)}; "
                f"supported: {supported_list}"
            )
        return name
    if registry.is_family(name):
        resolved = registry.resolve_family(name, usable)
        if resolved is None:
            members = "; ".join(
                f"{r.name}: {r.reason if not r.supported else failure(r)}"
                for r in decisions.candidates
                if r.family == name
            )
            raise FailedPrecondition(
                f"kernel family {name} has no supported candidate on {decisions.device_label} ({members}); "
                f"supported: {supported_list}"
            )
        return resolved
    known = ", ".join([*registry.candidate_names(), *FAMILIES])
    raise InvalidArgument("kernel", f"unknown kernel {name!r}; use 'auto', a family or a candidate: {known}")


def failure(report: CandidateReport) -> str:
    """Why a supported candidate may not be used, in words."""
    if report.correctness is None:
        return "its correctness check has not run"
    if not report.correctness.passed:
        return report.correctness.error
    if report.rejected:
        return report.rejected
    if not report.graph_safe:
        return f"wrong on CUDA-graph replay (decode's served mode): {report.graph_replay.error}"
    return "unchecked"


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
        decision.kernel, decision.source = name, DecisionSource.FORCED
    decisions.source = DecisionSource.FORCED
