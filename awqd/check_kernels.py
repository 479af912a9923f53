"""`awqd check-kernels`: the boot-time selection of one device, isolated as at boot, without a server; the
node-validation run an operator does when a GPU kind is new. Prints every candidate's status per bucket."""

from pathlib import Path
from typing import Any

from awqd.errors import InvalidArgument
from awqd.kernels.selection import DeviceDecisions, select_kernels
from awqd.kernels.shapes import engine_layer_shapes
from awqd.models.checkpoint import open_checkpoint
from awqd.models.synth import ARCHITECTURES
from awqd.node.devices import find_device

DEFAULT_GROUP_SIZE = 128


def layer_shapes(arch: str | None, model_path: Path | None) -> tuple[list[tuple[int, int]], int]:
    """The engine's fused decoder-layer shapes, and the group size, of an architecture or a checkpoint."""
    if model_path is not None:
        checkpoint = open_checkpoint(model_path)
        return list(engine_layer_shapes(checkpoint.config).values()), checkpoint.quant_config.group_size
    architecture = ARCHITECTURES.get(arch or "llama-2-7b")
    if architecture is None:
        raise InvalidArgument("--arch", f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    config = {
        "hidden_size": architecture.hidden_size,
        "intermediate_size": architecture.intermediate_size,
        "num_attention_heads": architecture.num_attention_heads,
        "num_key_value_heads": architecture.num_key_value_heads,
    }
    return list(engine_layer_shapes(config).values()), DEFAULT_GROUP_SIZE


def check_kernels(
    torch_device: str,
    arch: str | None,
    model_path: Path | None,
    budget_s: float,
    graph_batch: int,
    cache_dir: Path | None,
) -> tuple[DeviceDecisions, list[tuple[int, int]]]:
    shapes, group_size = layer_shapes(arch, model_path)
    device = find_device(torch_device)
    return select_kernels(device, shapes, group_size, cache_dir, budget_s, graph_batch=graph_batch), shapes


def summary(decisions: DeviceDecisions, shapes: list[tuple[int, int]]) -> dict[str, Any]:
    """The JSON form: the decisions as the cache stores them, plus per bucket each candidate's status."""
    return {
        **decisions.to_dict(),
        "shapes": [list(shape) for shape in shapes],
        "buckets": [
            {
                "batch_tokens": d.batch_tokens,
                "kernel": d.kernel,
                "source": d.source,
                "candidates": statuses(decisions, d),
            }
            for d in decisions.decisions
        ],
    }


def statuses(decisions: DeviceDecisions, decision) -> list[dict[str, Any]]:
    """Every supported candidate at one bucket: chosen, timed, rejected (with the reason) or failed."""
    timed = {t.kernel: t for t in decision.timings}
    left_out = {r.kernel: r.reason for r in decision.rejected}
    rows = []
    for report in decisions.candidates:
        if not report.supported:
            continue
        row: dict[str, Any] = {"kernel": report.name, "median_ms": None}
        if report.name in timed:
            row["median_ms"] = timed[report.name].median_ms
            row["status"], row["reason"] = ("chosen" if report.name == decision.kernel else "timed"), ""
        elif report.name in left_out:
            row["status"], row["reason"] = "rejected", left_out[report.name]
        elif report.correctness is not None and not report.correctness.passed:
            row["status"], row["reason"] = "failed correctness", report.correctness.error
        elif report.name == decision.kernel:
            row["status"], row["reason"] = "chosen", decision.reason
        else:
            row["status"], row["reason"] = (
                "not timed",
                report.rejected or "no timing at this bucket: " + decision.source,
            )
        rows.append(row)
    return rows


def table(decisions: DeviceDecisions, shapes: list[tuple[int, int]]) -> str:
    lines = [
        f"{decisions.device_label}: {decisions.source}, {decisions.duration_s:.1f} s; layer shapes "
        + ", ".join(f"{o}x{i}" for o, i in shapes),
    ]
    if decisions.degraded:
        lines.append(f"DEGRADED: {decisions.degraded}")
    lines.append(
        f"copy bandwidth {decisions.copy_bandwidth_gbps:.1f} GB/s; worker start-up {decisions.worker_startup_s:.2f} s, "
        f"{decisions.worker_restarts} restart(s); CUDA-graph buckets {decisions.graph_buckets or 'none'}"
    )
    lines.append("")
    lines.append("candidates:")
    for report in decisions.candidates:
        if not report.supported:
            status, reason = "unsupported", report.reason
        elif report.correctness is None:
            status, reason = "unchecked", ""
        elif not report.correctness.passed:
            status, reason = "FAILED", report.correctness.error
        elif report.rejected:
            status, reason = "REJECTED", report.rejected
        elif not report.graph_safe:
            status, reason = "eager buckets only", report.graph_replay.error
        else:
            status, reason = "passed", f"max relative error {report.correctness.max_relative_error:.2e}"
        lines.append(f"  {report.name:28} {status:20} {reason}")
    for decision in decisions.decisions:
        lines.append("")
        lines.append(f"{decision.batch_tokens} tokens -> {decision.kernel} ({decision.source})")
        for row in statuses(decisions, decision):
            median = f"{row['median_ms']:.4g} ms" if row["median_ms"] is not None else "-"
            lines.append(f"  {row['kernel']:28} {row['status']:18} {median:>12}  {row['reason']}")
    if decisions.notes:
        lines += ["", "notes:", *(f"  - {note}" for note in decisions.notes)]
    return "\n".join(lines)
