"""Turn the files `make bench` leaves in $OUT into bench/results/<gpu>-<date>-bench.{json,md,png}.

    python bench/bench_report.py OUT_DIR [RESULTS_DIR]

The JSON holds the three Benchmark reports as the daemon sent them; the markdown names the device and tabulates
kernel latency per batch size (with the ratios to fp16 cuBLAS and to AutoAWQ's best kernel) and single-query
latency per kernel family at both prompt lengths; the PNG is awqctl's latency plot.
"""

import json
import re
import shutil
import sys
from pathlib import Path

FP16 = "fp16_cublas"
SINGLE_QUERY_RUNS = {"128": "single-query-128.json", "1024": "single-query-1024.json"}


def load(path: Path) -> dict | None:
    """A report, or None where its step failed (an empty or missing file; steps.log says why)."""
    return json.loads(path.read_text()) if path.exists() and path.stat().st_size else None


def slug(name: str) -> str:
    """ "NVIDIA H200" -> "h200"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().removeprefix("nvidia ")).strip("-")


def cell(row: dict | None, bold: bool) -> str:
    if row is None:
        return "-"
    return f"**{row['median_ms']:.4f}**" if bold else f"{row['median_ms']:.4f}"


def kernel_table(report: dict) -> list[str]:
    rows = report.get("kernel_latencies", [])
    kernels = [FP16, *sorted({row["kernel"] for row in rows} - {FP16})]
    by_batch: dict[int, dict[str, dict]] = {}
    for row in rows:
        by_batch.setdefault(row["batch_tokens"], {})[row["kernel"]] = row
    lines = [
        "| tokens | " + " | ".join(f"{kernel} (ms)" for kernel in kernels)
        + " | fastest | vs fp16 | vs AutoAWQ's best | GB/s | % of roofline |",
        "|---" * (len(kernels) + 6) + "|",
    ]  # fmt: skip
    roofline = report.get("roofline_bandwidth_gbps", 0.0)
    for batch, row_of in sorted(by_batch.items()):
        quantized = [row for kernel, row in row_of.items() if kernel != FP16]
        best = min(quantized, key=lambda row: row["median_ms"]) if quantized else None
        autoawq = [row for row in quantized if row["kernel"].startswith("autoawq_")]
        autoawq_best = min(autoawq, key=lambda row: row["median_ms"]) if autoawq else None
        cells = [cell(row_of.get(kernel), bold=best is not None and kernel == best["kernel"]) for kernel in kernels]
        if best is None:
            lines.append(f"| {batch} | " + " | ".join(cells) + " | - | - | - | - | - |")
            continue
        vs_autoawq = f"{autoawq_best['median_ms'] / best['median_ms']:.2f}x" if autoawq_best else "no AutoAWQ kernel"
        bandwidth = best.get("effective_bandwidth_gbps", 0.0)
        share = f"{bandwidth / roofline:.0%}" if roofline else "-"
        speedup = f"{best.get('speedup_vs_fp16', 0):.2f}x"
        figures = [best["kernel"], speedup, vs_autoawq, f"{bandwidth:.4g}", share]
        lines.append(f"| {batch} | {' | '.join([*cells, *figures])} |")
    return lines


def single_query_table(report: dict) -> list[str]:
    lines = [
        "| kernel | TTFT (ms) | ms/token p50 | ms/token p90 | total (ms) | tokens/s | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report.get("single_query", []):
        if not row.get("runs"):
            lines.append(f"| {row['kernel']} | not measured (see the verdict) | | | | | 0 |")
            continue
        lines.append(
            f"| {row['kernel']} | {row['time_to_first_token_ms']:.1f} | {row['ms_per_token_p50']:.2f} | "
            f"{row['ms_per_token_p90']:.2f} | {row['total_ms']:.1f} | {row['tokens_per_second']:.1f} | {row['runs']} |"
        )
    return lines


def batch_sweep_table(report: dict) -> list[str]:
    lines = [
        "| concurrent sequences | aggregate tokens/s | inter-token p50 (ms) | inter-token p99 (ms) |",
        "|---|---|---|---|",
    ]
    for point in report.get("batch_sweep", []):
        lines.append(
            f"| {point['concurrent_sequences']} | {point['tokens_per_second']:.1f} | "
            f"{point['inter_token_p50_ms']:.2f} | {point['inter_token_p99_ms']:.2f} |"
        )
    return lines


def main(out_dir: Path, results: Path) -> Path:
    kernel = load(out_dir / "kernel.json")
    queries = {prompt: load(out_dir / name) for prompt, name in SINGLE_QUERY_RUNS.items()}
    sweep = load(out_dir / "batch-sweep.json")
    first = kernel or next((report for report in queries.values() if report), None)
    if first is None:
        sys.exit(f"no benchmark report in {out_dir}; see {out_dir / 'steps.log'}")
    device, node = first["device"], first["node"]
    versions = {c["name"]: c.get("version") or "absent" for c in node.get("components", [])}
    stem = results / f"{slug(device['name'])}-{first['started_at'][:10]}-bench"
    results.mkdir(parents=True, exist_ok=True)
    summary = {"kernel": kernel, "single_query": queries, "batch_sweep": sweep}
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    if (out_dir / "kernel.png").exists():
        shutil.copyfile(out_dir / "kernel.png", stem.with_suffix(".png"))

    lines = [
        f"# {device['name']}: kernel and single-query latency (awqd Benchmark RPC)",
        "",
        f"Measured with `make bench` (bench/bench.sh) on {first['started_at'][:10]}: {device['name']} "
        f"({device.get('torch_device', '')}, compute capability {device.get('compute_capability', '-')}), "
        + ", ".join(f"{name} {version}" for name, version in versions.items())
        + ".",
        "",
    ]
    if kernel:
        lines += [
            "## Kernel latency (KERNEL mode)",
            "",
            "Median ms for one pass over the seven linear layers of one decoder layer ("
            + ", ".join(kernel.get("shapes", []))
            + "; out x in), random int4 weights, group 128. Roofline: "
            f"{kernel.get('roofline_bandwidth_gbps', 0):.0f} GB/s ({kernel.get('roofline_source', '')}). "
            "vs fp16: fp16 cuBLAS time over the fastest AWQ kernel's (above 1: faster than fp16). "
            "vs AutoAWQ's best: the fastest autoawq_* kernel's time over the fastest kernel's. "
            "GB/s: int4 weights + scales + zeros read per second by the fastest kernel.",
            "",
            *kernel_table(kernel),
            "",
            f"Verdict: {kernel['verdict'].get('summary', '')}",
            "",
            f"![latency vs batch size]({stem.with_suffix('.png').name})",
            "",
        ]
    for prompt, report in queries.items():
        if report is None:
            lines += [f"## Single query, {prompt}-token prompt: no report (see steps.log)", ""]
            continue
        lines += [
            f"## Single query, {prompt}-token prompt, 128 new tokens (SINGLE_QUERY mode)",
            "",
            "Greedy, batch 1, awqd's decode engine (each run alone on the model); times exclude queueing.",
            "",
            *single_query_table(report),
            "",
            f"GEMV over GEMM: {report['verdict'].get('gemv_over_gemm_speedup', 0):.2f}x "
            "(0: one of them was not measured). "
            f"Verdict: {report['verdict'].get('summary', '')}",
            "",
        ]
    if sweep:
        lines += [
            "## Concurrent sequences (BATCH_SWEEP mode)",
            "",
            "Greedy, 128-token prompts, 128 new tokens each, submitted together to the decode engine.",
            "",
            *batch_sweep_table(sweep),
            "",
            f"Verdict: {sweep['verdict'].get('summary', '')}",
            "",
        ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    return stem


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    written = main(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) == 3 else "bench/results"))
    print(f"wrote {written}.{{json,md,png}}")
