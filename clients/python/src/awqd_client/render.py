"""Human-readable rendering of awqd messages with rich; the CLI's --json output bypasses this module."""

from collections.abc import Iterable

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from awqd_client.v1 import awqd_pb2


def label(enum: EnumTypeWrapper, value: int) -> str:
    """DECISION_SOURCE_CACHE_VALIDATED -> "cache_validated": the prefix is the one its *_UNSPECIFIED value carries."""
    prefix = enum.Name(0).removesuffix("UNSPECIFIED")
    name = enum.Name(value) if value in enum.values() else f"{prefix}{value}"
    return name.removeprefix(prefix).lower()


def human_bytes(count: int) -> str:
    exponent = min((count.bit_length() - 1) // 10, 4) if count else 0  # 1024**exponent <= count
    return f"{count} B" if exponent == 0 else f"{count / 1024**exponent:.1f} {'KMGT'[exponent - 1]}iB"


def human_duration(duration: duration_pb2.Duration) -> str:
    seconds = duration.ToTimedelta().total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    clock = f"{hour}h {minute:02d}m {second:02d}s"
    return f"{days}d {clock}" if days else clock


def human_time(timestamp: timestamp_pb2.Timestamp) -> str:
    return timestamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")


def print_describe(console: Console, response: awqd_pb2.DescribeResponse) -> None:
    console.print(node_panel(response.node))
    console.print(devices_table(response.devices))
    for device in response.devices:
        console.print(kernels_table(device))
        if device.decisions:
            console.print(decisions_table(device))
    console.print(models_table(response.models))
    if any(len(model.replicas) > 1 for model in response.models):
        console.print(replicas_table(response.models))


def node_panel(node: awqd_pb2.Node) -> RenderableType:
    started = f" (since {human_time(node.started_at)})" if node.HasField("started_at") else ""
    header = Text.assemble(
        ("node ", "bold"),
        (node.hostname, "bold cyan"),
        f"  awqd {node.awqd_version}  up {human_duration(node.uptime)}{started}",
    )
    components = Table("component", "version", "reason", title="software", title_justify="left")
    for component in node.components:
        version = Text(component.version or "-") if component.available else Text("absent", style="yellow")
        _add_row(components, component.name, version, component.reason)
    return Group(header, gpu_discovery_line(node.gpu_discovery), components)


def gpu_discovery_line(discovery: awqd_pb2.GpuDiscovery) -> Text:
    nvml = (
        f"NVML: {discovery.nvml_device_count} GPU(s)"
        if discovery.nvml_available
        else f"NVML: unavailable ({discovery.nvml_error or 'no reason given'})"
    )
    if discovery.nvml_available and discovery.nvml_error:
        nvml += f" ({discovery.nvml_error})"
    torch = f"torch CUDA: {discovery.torch_device_count} GPU(s)" if discovery.torch_cuda_available else "torch CUDA: no"
    line = Text(f"GPU discovery: {nvml}; {torch}")
    for warning in discovery.warnings:
        line.append(f"\nwarning: {warning}", style="yellow")
    return line


def devices_table(devices: Iterable[awqd_pb2.Device]) -> Table:
    table = Table("#", "kind", "name", "uuid", "capability", "memory total", "memory free", "health", title="devices")
    for device in devices:
        health = label(awqd_pb2.DeviceHealth, device.health)
        _add_row(
            table,
            str(device.index),
            label(awqd_pb2.DeviceKind, device.kind),
            device.name,
            device.uuid,
            device.compute_capability or "-",
            human_bytes(device.memory_total_bytes),
            human_bytes(device.memory_free_bytes),
            f"{health}: {device.health_reason}" if device.health_reason else health,
        )
    return table


def kernels_table(device: awqd_pb2.Device) -> Table:
    table = Table(title=Text(f"kernels on {_device_title(device)}"))
    # Names and verdicts never wrap; the reason takes whatever width is left, so narrow terminals stay readable.
    table.add_column("candidate", no_wrap=True)
    table.add_column("supported", no_wrap=True)
    table.add_column("correctness")
    table.add_column("reason", ratio=1)
    for kernel in device.kernels:
        name = Text(kernel.name)
        name.append(f"\n{label(awqd_pb2.KernelFamily, kernel.family)}, layout {kernel.layout}", style="dim")
        supported = Text("yes", style="green") if kernel.supported else Text("no", style="red")
        correctness = correctness_text(kernel.correctness) if kernel.HasField("correctness") else Text("-")
        if kernel.HasField("graph_replay") and not kernel.graph_replay.passed:
            correctness.append(f"\nCUDA-graph replay FAILED: {kernel.graph_replay.error}", style="red")
        if kernel.rejected:
            correctness.append(f"\nREJECTED: {kernel.rejected}", style="red")
        reason = f"{kernel.reason} (plugin {kernel.plugin})" if kernel.plugin else kernel.reason
        _add_row(table, name, supported, correctness, reason)
    return table


def correctness_text(check: awqd_pb2.CorrectnessCheck) -> Text:
    if check.error:
        return Text(f"error: {check.error}", style="red")
    relation = "<=" if check.passed else ">"
    figures = f"rel err {check.max_relative_error:.2e} {relation} {check.tolerance:.0e}"
    return Text(f"passed, {figures}", style="green") if check.passed else Text(f"FAILED, {figures}", style="red")


def decisions_table(device: awqd_pb2.Device) -> Table:
    table = Table(
        "tokens <=",
        "kernel",
        "time",
        "source",
        "runners-up",
        "reason",
        title=Text(f"decisions on {_device_title(device)}"),
    )
    for decision in device.decisions:
        chosen = [timing for timing in decision.timings if timing.kernel == decision.kernel]
        others = [timing for timing in decision.timings if timing.kernel != decision.kernel]
        _add_row(
            table,
            str(decision.batch_tokens),
            Text(decision.kernel, style="bold"),
            f"{chosen[0].median_ms:.3f} ms" if chosen else "-",
            label(awqd_pb2.DecisionSource, decision.source),
            ", ".join(f"{timing.kernel} {timing.median_ms:.3f} ms" for timing in others),
            "; ".join([decision.reason, *(f"left out {r.kernel}: {r.reason}" for r in decision.rejected)]),
        )
    if device.HasField("selection"):
        table.caption = Text(selection_caption(device.selection))
    return table


def selection_caption(selection: awqd_pb2.KernelSelection) -> str:
    parts = [f"source {label(awqd_pb2.DecisionSource, selection.source)}"]
    if selection.HasField("measured_at"):
        parts.append(f"measured {human_time(selection.measured_at)}")
    if selection.HasField("duration"):
        parts.append(f"took {human_duration(selection.duration)}")
    if selection.fingerprint:
        parts.append(f"fingerprint {selection.fingerprint}")
    if selection.copy_bandwidth_gbps:
        parts.append(f"copy bandwidth {selection.copy_bandwidth_gbps:.1f} GB/s")
    parts.extend(selection.notes)
    return "; ".join(parts)


def models_table(models: Iterable[awqd_pb2.Model]) -> Table:
    table = Table(
        "name",
        "state",
        "device",
        "architecture",
        "quant",
        "kernel",
        "weights",
        "kv cache",
        "warm-up",
        "error",
        title="models",
    )
    for model in models:
        state = label(awqd_pb2.ModelState, model.state)
        style = {"ready": "green", "failed": "red"}.get(state, "yellow")
        _add_row(
            table,
            model.name,
            Text(state, style=style),
            model.device,
            model.architecture,
            quant_summary(model.quant_config),
            model.kernel or "auto",
            memory_summary(model),
            kv_cache_summary(model),
            warmup_summary(model),
            Text(model.error, style="red"),
        )
    return table


def replicas_table(models: Iterable[awqd_pb2.Model]) -> Table:
    """One row per engine of the models placed on several devices."""
    columns = ("model", "device", "state", "queued", "running", "load tokens", "kv blocks", "routed", "error")
    table = Table(*columns, title="replicas")
    for model in models:
        for replica in model.replicas if len(model.replicas) > 1 else ():
            state = label(awqd_pb2.ModelState, replica.state)
            style = {"ready": "green", "failed": "red"}.get(state, "yellow")
            _add_row(
                table,
                model.name,
                replica.device,
                Text(state, style=style),
                str(replica.queued_requests),
                str(replica.running_requests),
                str(replica.load_tokens),
                f"{replica.kv_cache_blocks_in_use}/{replica.kv_cache_blocks}",
                str(replica.requests_routed),
                Text(replica.error, style="red"),
            )
    return table


def cached_blocks(model: awqd_pb2.Model) -> str:
    if not model.prefix_caching:
        return ""
    return f"{model.kv_cache_blocks_cached} cached, "


def kv_cache_summary(model: awqd_pb2.Model) -> str:
    if not model.kv_cache_tokens:
        return ""
    if not model.kv_cache_blocks:  # a daemon from before the paged cache: one full-context slot per sequence
        return (
            f"{model.kv_cache_tokens} tokens ({model.kv_cache_slots} x {model.max_sequence_tokens}, "
            f"{human_bytes(model.kv_cache_bytes)})"
        )
    return (
        f"{model.kv_cache_tokens} tokens ({model.kv_cache_blocks} blocks of {model.kv_cache_block_tokens}, "
        f"{model.kv_cache_blocks_in_use} in use, {cached_blocks(model)}{human_bytes(model.kv_cache_bytes)})"
    )


def warmup_summary(model: awqd_pb2.Model) -> str:
    if not model.HasField("warmed_up_at"):
        return ""
    took = human_duration(model.warmup_duration)
    if not model.warmup_graphs:
        return took
    return f"{took}, {model.warmup_graphs} graphs, {human_bytes(model.warmup_graph_memory_bytes)}"


def quant_summary(config: awqd_pb2.QuantConfig) -> str:
    zero = "" if config.zero_point else " symmetric"
    return f"{label(awqd_pb2.QuantPacking, config.packing)} w{config.w_bit} g{config.group_size}{zero}"


def memory_summary(model: awqd_pb2.Model) -> str:
    extra = model.extra_layout_memory_bytes
    return human_bytes(model.weight_memory_bytes) + (f" + {human_bytes(extra)} layouts" if extra else "")


def loaded_line(model: awqd_pb2.Model) -> str:
    took = f" in {human_duration(model.load_duration)}" if model.HasField("load_duration") else ""
    warmed = f"; warm-up {warmup_summary(model)}" if model.HasField("warmed_up_at") else ""
    return (
        f"loaded {model.name} on {model.device}{took} "
        f"({quant_summary(model.quant_config)}, {memory_summary(model)}, kernel {model.kernel or 'auto'}){warmed}"
    )


def cached_prompt(usage: awqd_pb2.Usage) -> str:
    return f" ({usage.cached_prompt_tokens} cached)" if usage.cached_prompt_tokens else ""


def completion_summary(completion: awqd_pb2.Completion) -> str:
    """One line for stderr after a generation: why it ended, tokens, latencies and the kernels that ran."""
    timings = completion.timings
    kernels = ", ".join(f"{use.phase}@{use.batch_tokens} {use.kernel} x{use.steps}" for use in completion.kernels)
    return (
        f"[{label(awqd_pb2.FinishReason, completion.finish_reason)}] "
        f"{completion.usage.prompt_tokens} prompt{cached_prompt(completion.usage)} + "
        f"{completion.usage.completion_tokens} new tokens, "
        f"TTFT {timings.time_to_first_token_ms:.1f} ms, {timings.ms_per_output_token:.2f} ms/token, "
        f"total {timings.total_ms:.1f} ms; kernels: {kernels or '-'}"
    )


def _add_row(table: Table, *cells: str | Text) -> None:
    """Server strings go in as Text: rich would read "[...]" in a reason or an error as markup."""
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


def _device_title(device: awqd_pb2.Device) -> str:
    return f"device {device.index} ({device.torch_device or label(awqd_pb2.DeviceKind, device.kind)}, {device.name})"


FP16_BASELINE = "fp16_cublas"  # the daemon's name for its unquantized F.linear row


def print_benchmark(console: Console, report: awqd_pb2.BenchmarkReport) -> None:
    """The device and stack, the mode's table, then the verdict."""
    console.print(benchmark_header(report))
    if report.kernel_latencies:
        console.print(kernel_latency_table(report))
    if report.single_query:
        console.print(single_query_table(report))
    if report.batch_sweep:
        console.print(batch_sweep_table(report))
    if report.quality:
        console.print(quality_table(report))
    console.print(Text(report.verdict.summary), soft_wrap=True)


def quality_table(report: awqd_pb2.BenchmarkReport) -> Table:
    table = Table("kernel", "family", "perplexity", "tokens", "vs reference", "within bound", "s", title="quality")
    for row in report.quality:
        if row.error:
            _add_row(table, row.kernel, row.family, Text(f"not scored: {row.error}", style="yellow"), "", "", "", "")
            continue
        _add_row(
            table,
            row.kernel,
            row.family,
            f"{row.perplexity:.4f}",
            str(row.tokens_scored),
            f"{row.delta_vs_reference_percent:+.3f}%",
            Text("yes", style="green") if row.within_bound else Text(f"no (> {row.bound_percent}%)", style="red"),
            f"{row.seconds:.1f}",
        )
    return table


def batch_sweep_table(report: awqd_pb2.BenchmarkReport) -> Table:
    table = Table("sequences", "tokens/s", "inter-token p50 ms", "inter-token p99 ms", title="batch sweep")
    for point in report.batch_sweep:
        _add_row(
            table,
            str(point.concurrent_sequences),
            f"{point.tokens_per_second:.1f}",
            f"{point.inter_token_p50_ms:.2f}",
            f"{point.inter_token_p99_ms:.2f}",
        )
    return table


def benchmark_header(report: awqd_pb2.BenchmarkReport) -> Text:
    device = report.device
    capability = f", compute capability {device.compute_capability}" if device.compute_capability else ""
    versions = ", ".join(
        f"{component.name} {component.version}" for component in report.node.components if component.available
    )
    header = Text.assemble(
        (f"{label(awqd_pb2.BenchmarkMode, report.mode)} benchmark ", "bold"),
        (f"on {device.name} ({device.torch_device}{capability})", "bold cyan"),
        f"\nnode {report.node.hostname}, awqd {report.node.awqd_version}; {versions}",
    )
    if report.HasField("started_at"):
        header.append(f"\nstarted {human_time(report.started_at)}")
    if report.shapes:
        header.append(f"\nshapes (out x in): {', '.join(report.shapes)}")
    if report.roofline_bandwidth_gbps:
        header.append(f"\nroofline: {report.roofline_bandwidth_gbps:.1f} GB/s ({report.roofline_source})")
    return header


def kernel_latency_table(report: awqd_pb2.BenchmarkReport) -> Table:
    """One row per batch size and kernel; the fastest AWQ kernel of each batch size in bold."""
    fastest = {(row.batch_tokens, row.kernel) for row in report.verdict.fastest}
    table = Table(
        "tokens", "kernel", "median ms", "p10 ms", "p90 ms", "GB/s", "vs fp16", "graph", title="kernel latency"
    )
    rows = sorted(report.kernel_latencies, key=lambda row: (row.batch_tokens, row.median_ms))
    for index, row in enumerate(rows):
        style = "bold" if (row.batch_tokens, row.kernel) in fastest else "dim" if row.kernel == FP16_BASELINE else ""
        first_of_batch = index == 0 or rows[index - 1].batch_tokens != row.batch_tokens
        _add_row(
            table,
            str(row.batch_tokens) if first_of_batch else "",
            Text(row.kernel, style=style),
            f"{row.median_ms:.4f}",
            f"{row.p10_ms:.4f}",
            f"{row.p90_ms:.4f}",
            f"{row.effective_bandwidth_gbps:.1f}",
            f"{row.speedup_vs_fp16:.2f}x" if row.speedup_vs_fp16 else "-",
            "yes" if row.cuda_graph else "no",
        )
    return table


def single_query_table(report: awqd_pb2.BenchmarkReport) -> Table:
    table = Table(
        "kernel", "TTFT ms", "ms/token p50", "ms/token p90", "total ms", "tokens/s", "runs", title="single query"
    )
    for row in report.single_query:
        if not row.runs:
            _add_row(table, row.kernel, Text("not measured (see the verdict)", style="yellow"), "", "", "", "", "0")
            continue
        _add_row(
            table,
            row.kernel,
            f"{row.time_to_first_token_ms:.1f}",
            f"{row.ms_per_token_p50:.2f}",
            f"{row.ms_per_token_p90:.2f}",
            f"{row.total_ms:.1f}",
            f"{row.tokens_per_second:.1f}",
            str(row.runs),
        )
    return table
