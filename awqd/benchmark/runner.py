"""Plans a Benchmark against this node, then runs it: one benchmark per device at a time, within a time budget.

Planning resolves the request (model, architecture, device, kernels) and raises before anything streams.
The run holds its device's lock from the first streamed message to the last: a second benchmark on the same
device is refused with UNAVAILABLE rather than queued, because two benchmarks timing one device at once would
each measure the other. Generate calls are not locked out: KERNEL mode leaves hosted models alone,
SINGLE_QUERY's runs queue on the model's scheduler between live requests, and QUALITY reads only the model's
weights, pinning its kernel outside the shared router (awqd.benchmark.quality).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import structlog
import torch

from awqd.benchmark.batch_sweep import BatchSweepPlan, measure_batch_sweep
from awqd.benchmark.budget import Budget
from awqd.benchmark.kernel import KernelPlan, measure_kernels
from awqd.benchmark.params import BenchmarkParams
from awqd.benchmark.quality import QualityPlan, decode_text, measure_quality, tokenize, window_size
from awqd.benchmark.report import Progress, Report
from awqd.benchmark.single_query import KernelEntry, SingleQueryPlan, measure_single_query
from awqd.benchmark.verdict import batch_sweep_verdict, kernel_verdict, quality_verdict, single_query_verdict
from awqd.errors import FailedPrecondition, InvalidArgument, Unavailable
from awqd.kernels import registry
from awqd.kernels.candidates.reference_torch import ReferenceTorch
from awqd.kernels.measure import FP16_BASELINE, default_repetitions
from awqd.kernels.selection import DeviceDecisions, default_buckets, device_label, resolve_forced_name
from awqd.kernels.shapes import decoder_layer_shapes, engine_layer_shapes, shapes_from_config
from awqd.models.synth import ARCHITECTURES, GROUP_SIZE
from awqd.state import NodeState

if TYPE_CHECKING:  # the daemon imports this module
    from awqd.config import ServeConfig
    from awqd.hosting.manager import HostedModel, ModelManager
    from awqd.kernels.base import Candidate
    from awqd.node.devices import DeviceInfo, Discovery

log = structlog.get_logger("awqd.benchmark")

SINGLE_QUERY_FAMILIES = ("gemm", "gemv", "auto")
# (warm-up, timed) runs of SINGLE_QUERY: one run of a 7B-shaped model at 1024 + 128 tokens takes seconds on a GPU.
SINGLE_QUERY_RUNS = {"cuda": (1, 5), "cpu": (1, 3)}


class BenchmarkHost(Protocol):
    """What a benchmark needs from the daemon."""

    discovery: Discovery
    decisions: dict[str, DeviceDecisions]
    default_device: str
    models: ModelManager
    config: ServeConfig

    def node_state(self) -> NodeState: ...

    def resolve(self, torch_device: str, kernel: str) -> Candidate: ...


@dataclass(frozen=True)
class Planned:
    mode: str
    device: DeviceInfo
    shapes: tuple[str, ...]  # "q_proj 4096x4096": layer, out x in
    notes: tuple[str, ...]
    plan: KernelPlan | SingleQueryPlan | BatchSweepPlan | QualityPlan


_device_locks: dict[str, threading.Lock] = {}
_device_locks_guard = threading.Lock()


@contextmanager
def device_slot(torch_device: str) -> Iterator[None]:
    with _device_locks_guard:
        lock = _device_locks.setdefault(torch_device, threading.Lock())
    if not lock.acquire(blocking=False):
        raise Unavailable(
            f"a benchmark is already running on {torch_device}; benchmarks on one device run one at a time, "
            "so retry when it has finished"
        )
    try:
        yield
    finally:
        lock.release()


def run_benchmark(
    host: BenchmarkHost, params: BenchmarkParams, stop: threading.Event, time_remaining: Callable[[], float | None]
) -> Iterator[Progress | Report]:
    """Checks and plans now, so a bad request fails before anything streams; returns the run as a generator.

    `stop` is set when the caller goes away; `time_remaining` is the gRPC deadline (None: no deadline).
    """
    params.validate()
    planners = {
        "kernel": plan_kernel,
        "single_query": plan_single_query,
        "batch_sweep": plan_batch_sweep,
        "quality": plan_quality,
    }
    planned = planners[params.mode](host, params)
    return stream(host, planned, Budget(stop, time_remaining))


def stream(host: BenchmarkHost, planned: Planned, budget: Budget) -> Iterator[Progress | Report]:
    started = time.perf_counter()
    fields = {"mode": planned.mode, "device": planned.device.torch_device}
    with device_slot(planned.device.torch_device):
        log.info("benchmark_started", **fields)
        report = None
        try:
            report = yield from measure(host, planned, budget)
        finally:  # gRPC closes the stream of a caller that went away, which ends the run at its last yield
            outcome = "benchmark_finished" if report else "benchmark_stopped"
            log.info(outcome, **fields, seconds=round(time.perf_counter() - started, 3))
    if report is not None:
        yield report


def measure(host: BenchmarkHost, planned: Planned, budget: Budget) -> Generator[Progress, None, Report | None]:
    """Progress while measuring; then the report, or None when the caller cancelled or its deadline passed."""
    started_at = datetime.now(UTC)
    roofline_gbps, roofline_source = 0.0, ""
    sweep_points: tuple = ()
    quality: tuple = ()
    if isinstance(planned.plan, KernelPlan):
        kernels = yield from measure_kernels(planned.plan, budget)
        notes = [*planned.notes, *kernels.notes]
        latencies, single_query = tuple(kernels.latencies), ()
        if kernels.roofline_gbps:
            roofline_gbps, roofline_source = kernels.roofline_gbps, "measured copy"
    elif isinstance(planned.plan, SingleQueryPlan):
        queries = yield from measure_single_query(planned.plan, budget)
        notes = [*planned.notes, *queries.notes]
        latencies, single_query = (), tuple(queries.rows)
    elif isinstance(planned.plan, QualityPlan):
        scores = yield from measure_quality(planned.plan, budget)
        notes = [*planned.notes, *scores.notes]
        latencies, single_query, quality = (), (), tuple(scores.rows)
    else:
        sweep = yield from measure_batch_sweep(planned.plan, budget)
        notes = [*planned.notes, *sweep.notes]
        latencies, single_query, sweep_points = (), (), tuple(sweep.points)
    if budget.stop.is_set() and not budget.capped:
        return None  # gRPC reports the cancellation or the deadline
    if budget.capped:
        notes.append(f"Stopped at the daemon's {budget.cap_s:.0f} s benchmark cap: later measurements are missing.")
    label = device_label(planned.device)
    if planned.mode == "kernel":
        verdict = kernel_verdict(latencies, roofline_gbps, label, notes)
    elif planned.mode == "single_query":
        verdict = single_query_verdict(single_query, label, notes)
    elif planned.mode == "quality":
        verdict = quality_verdict(quality, label, notes)
    else:
        verdict = batch_sweep_verdict(sweep_points, label, notes)
    node = host.node_state()
    return Report(
        mode=planned.mode,
        device=next(state for state in node.devices if state.info.index == planned.device.index),
        node=node,
        kernel_latencies=latencies,
        single_query=single_query,
        roofline_bandwidth_gbps=roofline_gbps,
        roofline_source=roofline_source,
        verdict=verdict,
        shapes=planned.shapes,
        started_at=started_at,
        batch_sweep=sweep_points,
        quality=quality,
    )


def plan_kernel(host: BenchmarkHost, params: BenchmarkParams) -> Planned:
    if params.model:
        hosted = host.models.ready(params.model)
        layers = shapes_from_config(hosted.loaded.config.to_dict())
        group_size, default_device = hosted.loaded.quant_config.group_size, hosted.device
    else:
        arch = ARCHITECTURES[params.architecture]
        layers = decoder_layer_shapes(
            arch.hidden_size, arch.intermediate_size, arch.num_attention_heads, arch.num_key_value_heads
        )
        group_size, default_device = GROUP_SIZE, host.default_device
    device = resolve_device(host, params.device_index, default_device)
    torch_device = torch.device(device.torch_device)
    warmup, iterations = default_repetitions(torch_device)
    plan = KernelPlan(
        device=torch_device,
        shapes=tuple(layers.values()),
        group_size=group_size,
        candidates=kernel_candidates(device_decisions(host, device), params.kernels),
        batch_sizes=tuple(sorted(set(params.batch_sizes))) or default_buckets(device),
        warmup=params.warmup_iterations or warmup,
        iterations=params.iterations or iterations,
    )
    notes = []
    if torch_device.type == "cpu":
        notes.append(f"On the CPU, {FP16_BASELINE} is float32 F.linear, as awqd computes in float32 there.")
    return Planned("kernel", device, shape_names(layers), tuple(notes), plan)


def hosted_where_it_runs(host: BenchmarkHost, params: BenchmarkParams, mode: str) -> tuple[HostedModel, DeviceInfo]:
    """The ready model and its device, for the end-to-end modes, which measure a model only where it runs."""
    hosted = host.models.ready(params.model)
    device = resolve_device(host, params.device_index, hosted.device)
    if device.torch_device != hosted.device:
        raise InvalidArgument(
            "device_index",
            f"model {hosted.name!r} runs on {hosted.device}, not on device {device.index} ({device.torch_device}); "
            f"{mode} measures a model where it runs",
        )
    cap = host.config.max_new_tokens_cap
    if params.new_tokens > cap:
        raise InvalidArgument("new_tokens", f"{params.new_tokens} exceeds this daemon's cap of {cap}")
    return hosted, device


def plan_single_query(host: BenchmarkHost, params: BenchmarkParams) -> Planned:
    hosted, device = hosted_where_it_runs(host, params, "SINGLE_QUERY")
    loaded = hosted.loaded
    if params.prompt_tokens + params.new_tokens > loaded.context_length:
        raise InvalidArgument(
            "prompt_tokens",
            f"{params.prompt_tokens} prompt plus {params.new_tokens} new tokens exceed model {hosted.name!r}'s "
            f"context window of {loaded.context_length} tokens",
        )
    explicit = bool(params.kernels)
    entries = tuple(
        kernel_entry(host, hosted, name, explicit) for name in dict.fromkeys(params.kernels or SINGLE_QUERY_FAMILIES)
    )
    dispatch = hosted.router.dispatch
    notes = [f"{e.label} ran {e.pinned.name}." for e in entries if e.pinned and e.pinned.name != e.label]
    if any(e.label == "auto" for e in entries):
        notes.append(
            f"auto ran the model's dispatch: {dispatch.candidate_for(params.prompt_tokens).name} for the "
            f"{params.prompt_tokens}-token prefill, {dispatch.candidate_for(1).name} for decode."
        )
    warmup, runs = SINGLE_QUERY_RUNS[loaded.device.type]
    plan = SingleQueryPlan(
        hosted=hosted,
        entries=entries,
        prompt_tokens=params.prompt_tokens,
        new_tokens=params.new_tokens,
        warmup=params.warmup_iterations or warmup,
        runs=params.iterations or runs,
    )
    shapes = shape_names(engine_layer_shapes(loaded.config.to_dict()))
    return Planned("single_query", device, shapes, tuple(notes), plan)


def plan_batch_sweep(host: BenchmarkHost, params: BenchmarkParams) -> Planned:
    hosted, device = hosted_where_it_runs(host, params, "BATCH_SWEEP")
    scheduler = hosted.scheduler
    if params.prompt_tokens + params.new_tokens > scheduler.max_sequence_tokens:
        raise InvalidArgument(
            "prompt_tokens",
            f"{params.prompt_tokens} prompt plus {params.new_tokens} new tokens exceed the "
            f"{scheduler.max_sequence_tokens} tokens a sequence of model {hosted.name!r} may hold",
        )
    rows = scheduler.runner.max_rows
    levels = tuple(sorted(set(params.batch_sizes)))
    if levels[-1] > rows:
        raise InvalidArgument(
            "batch_sizes",
            f"{levels[-1]} concurrent sequences exceed the {rows} model {hosted.name!r} decodes together "
            "(--max-batch-size)",
        )
    plan = BatchSweepPlan(hosted, levels, params.prompt_tokens, params.new_tokens, params.warmup_iterations or 1)
    buckets = ", ".join(map(str, scheduler.runner.batch_buckets))
    notes = (f"Sequences ran the model's dispatch; decode steps pad the batch to the buckets {buckets}.",)
    shapes = shape_names(engine_layer_shapes(hosted.loaded.config.to_dict()))
    return Planned("batch_sweep", device, shapes, notes, plan)


def plan_quality(host: BenchmarkHost, params: BenchmarkParams) -> Planned:
    """The text tokenized and capped, and the kernels to pin: the named ones, or every usable candidate whose
    layout the model holds; the reference always runs first."""
    hosted, device = hosted_where_it_runs(host, params, "QUALITY")
    loaded = hosted.loaded
    ids = tokenize(loaded.tokenizer, decode_text(params.text))
    window = window_size(params.window_tokens, loaded.context_length)  # scoring uses no KV cache
    names = params.kernels or tuple(device_decisions(host, device).usable_names())
    candidates: dict[str, Candidate] = {ReferenceTorch.name: ReferenceTorch()}
    unavailable = []
    for name in dict.fromkeys(names):
        if name == ReferenceTorch.name:
            continue  # runs first in any case, from whatever layout the model holds
        entry = kernel_entry(host, hosted, name, explicit=bool(params.kernels))
        if entry.pinned is None:
            family = name if registry.is_family(name) else registry.build(name).family
            unavailable.append((name, family, entry.unavailable))
        else:
            candidates.setdefault(entry.pinned.name, entry.pinned)
    plan = QualityPlan(
        decoder=hosted.scheduler.runner.model,
        candidates=tuple(candidates.values()),
        token_ids=tuple(ids),
        window=window,
        unavailable=tuple(unavailable),
    )
    windows = -(-(len(ids) - 1) // window)
    notes = (f"{len(ids)} tokens in {windows} windows of up to {window} tokens; each window's first is context.",)
    shapes = shape_names(engine_layer_shapes(loaded.config.to_dict()))
    return Planned("quality", device, shapes, notes, plan)


def shape_names(layers: dict[str, tuple[int, int]]) -> tuple[str, ...]:
    return tuple(f"{name} {out_features}x{in_features}" for name, (out_features, in_features) in layers.items())


def resolve_device(host: BenchmarkHost, device_index: int | None, default: str) -> DeviceInfo:
    devices = host.discovery.devices
    if device_index is None:
        return next(device for device in devices if device.torch_device == default)
    device = next((device for device in devices if device.index == device_index), None)
    if device is None:
        raise InvalidArgument(
            "device_index", f"no device {device_index}: this node has devices 0..{len(devices) - 1} (see Describe)"
        )
    if not device.torch_device:
        raise FailedPrecondition(f"device_index: torch cannot address device {device_index} ({device.name})")
    return device


def device_decisions(host: BenchmarkHost, device: DeviceInfo) -> DeviceDecisions:
    decisions = host.decisions.get(device.torch_device)
    if decisions is None:
        raise FailedPrecondition(f"no kernel decisions for {device_label(device)}")
    return decisions


def kernel_candidates(decisions: DeviceDecisions, names: tuple[str, ...]) -> tuple[str, ...]:
    """The named candidates or families (InvalidArgument if unknown, FailedPrecondition if unusable here), or
    every usable candidate when none is named. The fp16 baseline is timed in every run."""
    if not names:
        usable = decisions.usable_names()
        if not usable:
            raise FailedPrecondition(f"no kernel candidate passed its correctness check on {decisions.device_label}")
        return tuple(usable)
    resolved = []
    for name in names:
        if name == FP16_BASELINE:
            continue
        try:
            resolved.append(resolve_forced_name(decisions, name))
        except InvalidArgument as error:
            raise InvalidArgument("kernels", error.reason) from None
    return tuple(dict.fromkeys(resolved))


def kernel_entry(host: BenchmarkHost, hosted: HostedModel, name: str, explicit: bool) -> KernelEntry:
    """A named kernel that cannot run raises (FailedPrecondition); a default family is reported with the reason."""
    if name == "auto":
        return KernelEntry("auto", None)
    try:
        pinned = host.resolve(hosted.device, name)
        if pinned.layout not in hosted.loaded.layouts:
            raise FailedPrecondition(
                f"kernel {pinned.name} needs the {pinned.layout!r} layout, but model {hosted.name!r} holds "
                f"{list(hosted.loaded.layouts)} (it was loaded with --single-layout or a forced kernel)"
            )
    except InvalidArgument as error:
        raise InvalidArgument("kernels", error.reason) from None
    except FailedPrecondition as error:
        if explicit:
            raise
        return KernelEntry(name, None, str(error))
    return KernelEntry(name, pinned)
