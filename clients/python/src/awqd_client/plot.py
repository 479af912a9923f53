"""Kernel latency against batch size as an image, for `awqctl bench --plot`.

matplotlib comes with the `plot` extra (pip install 'awqd-client[plot]') and is imported only when a plot is
drawn, so the client stays light. The roofline line is the time the int4 weights, scales and zeros take to
read at the report's roofline bandwidth: no kernel can beat it while it reads the weights from memory.
"""

import importlib.util
from collections import defaultdict
from pathlib import Path

from awqd_client.render import FP16_BASELINE
from awqd_client.v1 import awqd_pb2


class PlotUnavailable(Exception):
    """matplotlib is not installed."""


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'awqd-client[plot]'")


def roofline_ms(report: awqd_pb2.BenchmarkReport) -> float:
    """Bytes an AWQ row reads (its bandwidth times its time) at the roofline bandwidth; 0 if either is missing."""
    row = next((row for row in report.kernel_latencies if row.kernel != FP16_BASELINE), None)
    if row is None or not report.roofline_bandwidth_gbps:
        return 0.0
    return row.effective_bandwidth_gbps * row.median_ms / report.roofline_bandwidth_gbps


def plot_kernel_latencies(report: awqd_pb2.BenchmarkReport, path: Path) -> None:
    """Log-log: one line per kernel, fp16 dashed, the int4 roofline dotted. The format follows the suffix."""
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in report.kernel_latencies:
        series[row.kernel].append((row.batch_tokens, row.median_ms))
    figure = Figure(figsize=(9, 5.5), layout="constrained")
    axes = figure.subplots()
    for kernel, points in sorted(series.items()):
        points.sort()
        style = {"linestyle": "--", "color": "black"} if kernel == FP16_BASELINE else {}
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=kernel, **style)
    batch_sizes = sorted({row.batch_tokens for row in report.kernel_latencies})
    if (floor := roofline_ms(report)) and batch_sizes:
        axes.plot(
            [batch_sizes[0], batch_sizes[-1]],
            [floor, floor],
            linestyle=":",
            color="gray",
            label=f"int4 roofline ({report.roofline_bandwidth_gbps:.0f} GB/s, {report.roofline_source})",
        )
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xticks(batch_sizes, [str(size) for size in batch_sizes])
    axes.set_xlabel("batch (tokens per step)")
    axes.set_ylabel("ms per decoder layer (median)")
    device = report.device
    axes.set_title(f"{device.name} ({device.torch_device}): {len(report.shapes)} linear layers of one decoder layer")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=120)
