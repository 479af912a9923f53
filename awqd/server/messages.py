"""Translation from the daemon's domain objects to awq.v1 messages."""

import dataclasses

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from awqd.benchmark import report as benchmark
from awqd.benchmark.params import BenchmarkParams
from awqd.engine.request import GenerateParams
from awqd.engine.sequence import Finished, FinishReason, TokenDelta
from awqd.hosting.manager import HostedModel
from awqd.hosting.replicas import ModelState, Replica
from awqd.kernels.selection import CandidateReport, DecisionSource, DeviceDecisions, KernelDecision
from awqd.state import DeviceState, NodeState
from awqd_client.v1 import awqd_pb2 as pb

KERNEL_FAMILIES = {
    "": pb.KERNEL_FAMILY_UNSPECIFIED,  # a plugin that did not load
    "reference": pb.KERNEL_FAMILY_REFERENCE,
    "gemm": pb.KERNEL_FAMILY_GEMM,
    "gemv": pb.KERNEL_FAMILY_GEMV,
    "gemv_fast": pb.KERNEL_FAMILY_GEMV_FAST,
    "dequant_matmul": pb.KERNEL_FAMILY_DEQUANT_MATMUL,
}
DEVICE_KINDS = {"cpu": pb.DEVICE_KIND_CPU, "cuda": pb.DEVICE_KIND_CUDA}
DECISION_SOURCES = {
    DecisionSource.MEASURED: pb.DECISION_SOURCE_MEASURED,
    DecisionSource.CACHE_VALIDATED: pb.DECISION_SOURCE_CACHE_VALIDATED,
    DecisionSource.CAPABILITY_RULE: pb.DECISION_SOURCE_CAPABILITY_RULE,
    DecisionSource.FORCED: pb.DECISION_SOURCE_FORCED,
}


def timestamp(moment) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(moment)
    return message


def duration(seconds: float) -> Duration:
    message = Duration()
    message.FromNanoseconds(int(seconds * 1e9))
    return message


def node(state: NodeState) -> pb.Node:
    discovery = state.discovery
    return pb.Node(
        hostname=state.hostname,
        awqd_version=state.awqd_version,
        started_at=timestamp(state.started_at),
        uptime=duration(state.uptime_s),
        components=[
            pb.Component(name=c.name, version=c.version, available=c.available, reason=c.reason)
            for c in state.components
        ],
        gpu_discovery=pb.GpuDiscovery(
            nvml_available=discovery.nvml_available,
            nvml_error=discovery.nvml_error,
            nvml_device_count=discovery.nvml_device_count,
            torch_cuda_available=discovery.torch_cuda_available,
            torch_device_count=discovery.torch_device_count,
            warnings=list(discovery.warnings),
        ),
    )


def kernel_candidate(report: CandidateReport) -> pb.KernelCandidate:
    message = pb.KernelCandidate(
        name=report.name,
        family=KERNEL_FAMILIES[report.family],
        supported=report.supported,
        reason=report.reason,
        requires=list(report.requires),
        layout=report.layout,
        rejected=report.rejected,
        plugin=report.plugin,
    )
    if report.correctness is not None:
        check = report.correctness
        message.correctness.CopyFrom(
            pb.CorrectnessCheck(
                passed=check.passed,
                max_relative_error=check.max_relative_error,
                tolerance=check.tolerance,
                error=check.error,
            )
        )
    if report.graph_replay is not None:
        replay = report.graph_replay
        message.graph_replay.CopyFrom(
            pb.GraphReplayCheck(passed=replay.passed, error=replay.error, captured=replay.captured)
        )
    return message


def kernel_decision(decision: KernelDecision) -> pb.KernelDecision:
    return pb.KernelDecision(
        batch_tokens=decision.batch_tokens,
        kernel=decision.kernel,
        source=DECISION_SOURCES[decision.source],
        reason=decision.reason,
        timings=[
            pb.KernelTiming(
                kernel=t.kernel, median_ms=t.median_ms, p10_ms=t.p10_ms, p90_ms=t.p90_ms, cuda_graph=t.cuda_graph
            )
            for t in decision.timings
        ],
        rejected=[pb.KernelRejection(kernel=r.kernel, reason=r.reason) for r in decision.rejected],
    )


def kernel_selection(decisions: DeviceDecisions) -> pb.KernelSelection:
    message = pb.KernelSelection(
        source=DECISION_SOURCES[decisions.source],
        duration=duration(decisions.duration_s),
        fingerprint=decisions.fingerprint,
        notes=list(decisions.notes),
        copy_bandwidth_gbps=decisions.copy_bandwidth_gbps,
        worker_startup=duration(decisions.worker_startup_s),
        worker_restarts=decisions.worker_restarts,
        graph_buckets=decisions.graph_buckets,
    )
    if decisions.measured_at is not None:
        message.measured_at.CopyFrom(timestamp(decisions.measured_at))
    return message


def device(state: DeviceState) -> pb.Device:
    info = state.info
    message = pb.Device(
        index=info.index,
        kind=DEVICE_KINDS[info.kind],
        uuid=info.uuid,
        name=info.name,
        compute_capability=info.capability_str,
        memory_total_bytes=info.memory_total_bytes,
        memory_free_bytes=state.memory_free_bytes,
        torch_device=info.torch_device,
        kernels=[kernel_candidate(k) for k in state.kernels],
    )
    if state.decisions is not None:
        message.decisions.extend(kernel_decision(d) for d in state.decisions.decisions)
        message.selection.CopyFrom(kernel_selection(state.decisions))
        message.health = pb.DEVICE_HEALTH_DEGRADED if state.decisions.degraded else pb.DEVICE_HEALTH_OK
        message.health_reason = state.decisions.degraded
    elif state.selection_deferred:
        message.health_reason = "kernel selection deferred: no model is placed on this device; loading one runs it"
    return message


def describe(state: NodeState, models: list[HostedModel]) -> pb.DescribeResponse:
    return pb.DescribeResponse(
        node=node(state),
        devices=[device(d) for d in state.devices],
        models=[model(m, {d.info.torch_device: d.info.uuid for d in state.devices}) for m in models],
    )


MODEL_STATES = {
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
}
PACKINGS = {
    "GEMM": pb.QUANT_PACKING_GEMM,
    "GEMV": pb.QUANT_PACKING_GEMV,
    "PACK_QUANTIZED": pb.QUANT_PACKING_PACK_QUANTIZED,
}
FINISH_REASONS = {
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.EOS: pb.FINISH_REASON_EOS,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}


def replica(replica: Replica, device_uuid: str) -> pb.ModelReplica:
    message = pb.ModelReplica(
        device=replica.device,
        device_uuid=device_uuid,
        state=MODEL_STATES[replica.state],
        error=replica.error,
        requests_routed=replica.routed,
        load_duration=duration(replica.load_seconds),
    )
    load = replica.load()
    if load is not None:
        message.queued_requests, message.running_requests, message.load_tokens = load.queued, load.running, load.tokens
    if replica.scheduler is not None:
        message.kv_cache_blocks = replica.scheduler.blocks.blocks
        message.kv_cache_blocks_in_use = replica.scheduler.blocks.used_blocks
        message.kv_cache_blocks_cached = replica.scheduler.blocks.cached_blocks
    if replica.warmup is not None:
        message.warmup_duration.CopyFrom(duration(replica.warmup.duration_s))
    return message


def model(hosted: HostedModel, device_uuids: dict[str, str] | None = None) -> pb.Model:
    message = pb.Model(
        name=hosted.name,
        path=str(hosted.path),
        device=",".join(hosted.devices),
        replicas=[replica(r, (device_uuids or {}).get(r.device, "")) for r in hosted.replicas],
        state=MODEL_STATES[hosted.state],
        error=hosted.error,
        kernel=hosted.kernel,
        load_duration=duration(hosted.load_seconds),
    )
    if hosted.loaded is not None:
        loaded = hosted.loaded
        quant = loaded.quant_config
        message.architecture = loaded.architecture
        message.quant_config.CopyFrom(
            pb.QuantConfig(
                w_bit=quant.w_bit,
                group_size=quant.group_size,
                zero_point=quant.zero_point,
                packing=PACKINGS[quant.version],
            )
        )
        message.weight_memory_bytes = loaded.weight_memory_bytes
        message.extra_layout_memory_bytes = loaded.extra_layout_memory_bytes
        message.context_length = loaded.context_length
    if hosted.scheduler is not None:
        scheduler = hosted.scheduler
        plan = scheduler.runner.cache.plan
        message.kv_cache_tokens = plan.capacity_tokens
        message.kv_cache_slots = scheduler.runner.max_rows
        message.max_sequence_tokens = plan.max_seq_len
        message.kv_cache_bytes = plan.bytes
        message.kv_cache_blocks = plan.blocks
        message.kv_cache_block_tokens = plan.block_tokens
        message.kv_cache_blocks_in_use = scheduler.blocks.used_blocks
        message.kv_cache_blocks_cached = scheduler.blocks.cached_blocks
        message.prefix_caching = scheduler.prefix_caching
    if hosted.warmup is not None:
        warmup = hosted.warmup
        message.warmed_up_at.CopyFrom(timestamp(warmup.finished_at))
        message.warmup_duration.CopyFrom(duration(warmup.duration_s))
        message.warmup_graphs = warmup.graphs
        message.warmup_graph_memory_bytes = warmup.graph_memory_bytes
    return message


def generate_params(request: pb.GenerateRequest) -> GenerateParams:
    return GenerateParams(
        model=request.model,
        prompt=request.prompt,
        prompt_token_ids=tuple(request.prompt_token_ids),
        max_new_tokens=request.max_new_tokens,
        temperature=request.temperature,
        top_p=request.top_p if request.HasField("top_p") else None,
        top_k=request.top_k,
        seed=request.seed if request.HasField("seed") else None,
        stop=tuple(request.stop),
        kernel=request.kernel,
        cache_salt=request.cache_salt,
    )


def generate_response(delta: TokenDelta | None, finished: Finished | None) -> pb.GenerateResponse:
    fields = {"text": delta.text, "token_ids": delta.token_ids} if delta is not None else {}
    if finished is not None:  # the last message, with the last tokens when they were ready together
        fields["completion"] = completion(finished)
    return pb.GenerateResponse(**fields)


def completion(event: Finished) -> pb.Completion:
    return pb.Completion(
        finish_reason=FINISH_REASONS[event.finish_reason],
        usage=pb.Usage(
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            cached_prompt_tokens=event.cached_prompt_tokens,
        ),
        timings=pb.GenerationTimings(
            time_to_first_token_ms=event.time_to_first_token_ms,
            ms_per_output_token=event.ms_per_output_token,
            total_ms=event.total_ms,
            queue_ms=event.queue_ms,
        ),
        kernels=[
            pb.KernelUse(phase=k.phase, batch_tokens=k.batch_tokens, kernel=k.kernel, steps=k.steps)
            for k in event.kernels
        ],
    )


BENCHMARK_MODES = {
    pb.BENCHMARK_MODE_UNSPECIFIED: "",
    pb.BENCHMARK_MODE_KERNEL: "kernel",
    pb.BENCHMARK_MODE_SINGLE_QUERY: "single_query",
    pb.BENCHMARK_MODE_BATCH_SWEEP: "batch_sweep",
    pb.BENCHMARK_MODE_QUALITY: "quality",
}


def benchmark_params(request: pb.BenchmarkRequest) -> BenchmarkParams:
    return BenchmarkParams(
        mode=BENCHMARK_MODES.get(request.mode, f"unknown mode {request.mode}"),
        model=request.model,
        architecture=request.architecture,
        device_index=request.device_index if request.HasField("device_index") else None,
        kernels=tuple(request.kernels),
        batch_sizes=tuple(request.batch_sizes),
        prompt_tokens=request.prompt_tokens,
        new_tokens=request.new_tokens,
        iterations=request.iterations,
        warmup_iterations=request.warmup_iterations,
        text=request.text,
        window_tokens=request.window_tokens,
    )


def kernel_latency(row: benchmark.KernelLatency) -> pb.KernelLatency:
    return pb.KernelLatency(**dataclasses.asdict(row))


def benchmark_report(report: benchmark.Report) -> pb.BenchmarkReport:
    modes = {name: value for value, name in BENCHMARK_MODES.items()}
    return pb.BenchmarkReport(
        mode=modes[report.mode],
        device=device(report.device),
        node=node(report.node),
        kernel_latencies=[kernel_latency(row) for row in report.kernel_latencies],
        single_query=[pb.SingleQueryResult(**dataclasses.asdict(row)) for row in report.single_query],
        batch_sweep=[pb.BatchSweepPoint(**dataclasses.asdict(point)) for point in report.batch_sweep],
        roofline_bandwidth_gbps=report.roofline_bandwidth_gbps,
        roofline_source=report.roofline_source,
        verdict=pb.BenchmarkVerdict(
            fastest=[kernel_latency(row) for row in report.verdict.fastest],
            gemv_over_gemm_speedup=report.verdict.gemv_over_gemm_speedup,
            summary=report.verdict.summary,
        ),
        shapes=list(report.shapes),
        started_at=timestamp(report.started_at),
        quality=[pb.QualityResult(**dataclasses.asdict(row)) for row in report.quality],
    )


def benchmark_response(event: benchmark.Progress | benchmark.Report) -> pb.BenchmarkResponse:
    if isinstance(event, benchmark.Progress):
        return pb.BenchmarkResponse(progress=pb.BenchmarkProgress(**dataclasses.asdict(event)))
    return pb.BenchmarkResponse(report=benchmark_report(event))
