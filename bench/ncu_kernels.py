"""Nsight Compute counters for the W4A16 kernels on the engine's layer (issue 15's "profile first"):

    python3 bench/ncu_kernels.py --out DIR [--cases awqd_triton_gemv@1,awqd_triton_gemm@16,...]

For each case (candidate@tokens, or candidate@tokens/split-k=S: a Triton candidate's tuned tiles with K split S
ways) it tunes the candidate for that bucket here, outside Nsight Compute: timed under ncu, the tuner picked other
tiles than a plain process does (bench/results/h200-2026-12-04-own-kernels/ncu-20d4138). Then it runs itself under
`ncu --clock-control none` (the clocks stay as they are) with those tiles installed and the profiler off except
around one pass over the four fused Llama-2-7B linears (qkv 12288x4096, o 4096x4096, gate_up 22016x4096, down
4096x11008; W4 g128 with a zero point), after a warm-up. Per kernel launch it keeps the duration, achieved DRAM
bandwidth (bytes read over duration, and % of peak), L2 traffic (bytes over duration, and % of peak), SM throughput
(% of peak), how busy the tensor, ALU and FMA pipes were, achieved and theoretical occupancy, registers, grid and
block, and the warp-stall breakdown (cycles per issued instruction by reason). Writes ncu-kernels.json,
ncu-kernels.md and each case's tiles (tiles-CASE.json) under --out.

The child mode (--child) is what ncu runs; it is not meant to be called by hand.
"""

import argparse
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008))
GROUP_SIZE = 128
DEFAULT_CASES = (
    "awqd_triton_gemv@1,torch_int4_tinygemm@1,awqd_triton_gemm@16,fbgemm_bf16i4_shuffled@16,"
    "awqd_triton_gemm@64,fbgemm_bf16i4_shuffled@64"
)
METRICS = {
    "gpu__time_duration.sum": "duration_ns",
    "dram__bytes_read.sum": "dram_read_bytes",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed": "dram_pct_of_peak",
    "lts__t_bytes.sum": "l2_bytes",
    "lts__throughput.avg.pct_of_peak_sustained_elapsed": "l2_pct_of_peak",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed": "sm_pct_of_peak",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "achieved_occupancy_pct",
    "sm__maximum_warps_per_active_cycle_pct": "theoretical_occupancy_pct",
    "launch__registers_per_thread": "registers",
    "launch__grid_size": "grid",
    "launch__block_size": "block",
    "smsp__inst_executed.sum": "instructions",
}
STALLS = (
    "long_scoreboard",
    "short_scoreboard",
    "barrier",
    "mio_throttle",
    "lg_throttle",
    "math_pipe_throttle",
    "wait",
    "not_selected",
    "selected",
    "no_instruction",
    "drain",
    "dispatch_stall",
    "membar",
    "branch_resolving",
    "tex_throttle",
    "imc_miss",
    "sleeping",
    "misc",
)
STALL_METRIC = "smsp__average_warps_issue_stalled_{}_per_issue_active.ratio"
# How busy each pipe kept the SMs while active: at 512 tokens, whether a kernel is bound by its MMAs (wgmma on
# sm_90, mma.sync before) or by the integer and float work of unpacking. Not every chip's ncu has the wgmma one,
# so a run that ncu rejects is profiled again without them.
PIPE_METRICS = {
    "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active": "wgmma_pipe_pct",
    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active": "mma_pipe_pct",
    "sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active": "alu_pipe_pct",
    "sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active": "fma_pipe_pct",
}


def parse_case(case: str) -> tuple[str, int, int | None]:
    """'name@tokens[/split-k=S]' -> (name, tokens, S or None)."""
    kernel, _, split_k = case.partition("/split-k=")
    name, tokens = kernel.split("@")
    return name, int(tokens), int(split_k) if split_k else None


def tune_case(case: str, tune_s: float) -> dict:
    """The candidate's tiles for the case's bucket, tuned on this process's GPU: {"table": stored table or None,
    "notes": [...]}; with a split-K, every tuned tile split that many ways."""
    import torch

    from awqd.kernels import registry

    name, tokens, split_k = parse_case(case)
    device = torch.device("cuda:0")
    tuned = registry.build(name).tune(SHAPES, [tokens], GROUP_SIZE, device, time.perf_counter() + tune_s)
    notes = list(tuned.notes)
    if split_k:  # the tuned tiles with K split this many ways, to compare the same tiles split and unsplit
        if not tuned.table:
            raise SystemExit(f"{case}: {name} has no tuned tiles to split")
        for by_bucket in tuned.table.values():
            for config in by_bucket.values():
                config["split_k"] = split_k
        notes.append(f"split-K forced to {split_k} on every tuned tile")
    return {"table": tuned.table, "notes": notes}


def child(case: str, tiles: Path) -> None:
    """Installs the tiles tune_case chose, warms the candidate up, then profiles one pass over the four linears."""
    import torch

    from awqd.kernels import registry
    from awqd.kernels.measure import random_layer_weights, served_counters

    name, tokens, _ = parse_case(case)
    device = torch.device("cuda:0")
    candidate = registry.build(name)
    table = json.loads(tiles.read_text())["table"]
    if table:
        candidate.install_tuning(table, device)
    weights = random_layer_weights(SHAPES, GROUP_SIZE, device, 1)[0]
    packed = [candidate.prepare(weight, device) for weight in weights]
    inputs = [torch.randn(tokens, i, dtype=torch.float16, device=device) for _, i in SHAPES]
    with served_counters(device):  # as the engine runs them
        for _ in range(3):
            for x, p in zip(inputs, packed, strict=True):
                candidate.forward(x, p)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        for x, p in zip(inputs, packed, strict=True):
            candidate.forward(x, p)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()


def profile(case: str, tune_s: float, out: Path) -> dict:
    started = time.perf_counter()
    tuned = tune_case(case, tune_s)
    tiles = out / f"tiles-{case.replace('/', '-')}.json"
    tiles.write_text(json.dumps(tuned, indent=1))
    done, pipes = run_ncu(case, tiles, PIPE_METRICS), PIPE_METRICS
    if done.returncode != 0:
        done, pipes = run_ncu(case, tiles, {}), {}
    result = {"case": case, "exit_status": done.returncode, "seconds": round(time.perf_counter() - started, 1)}
    result.update(tuned)
    if not pipes:
        result["notes"].append("ncu rejected the pipe metrics; profiled without them")
    if done.returncode != 0:
        result["stderr"] = done.stderr[-3000:]
    header = next((i for i, line in enumerate(done.stdout.splitlines()) if line.startswith('"ID"')), None)
    if header is None:
        result["error"] = "no ncu table in the output"
        result["stdout_tail"] = done.stdout[-2000:]
        return result
    rows = list(csv.DictReader(io.StringIO("\n".join(done.stdout.splitlines()[header:]))))
    launches = []
    for row in rows[1:]:  # rows[0] holds the units
        launch = {"kernel": row.get("Kernel Name", "")[:120]}
        for metric, key in {**METRICS, **pipes}.items():
            launch[key] = number(row.get(metric))
        stalls = {s: number(row.get(STALL_METRIC.format(s))) for s in STALLS}
        launch["stalls"] = {s: v for s, v in sorted(stalls.items(), key=lambda kv: -(kv[1] or 0)) if v}
        if launch["duration_ns"] and launch["dram_read_bytes"]:
            launch["dram_read_gbps"] = round(launch["dram_read_bytes"] / launch["duration_ns"], 1)
        if launch["duration_ns"] and launch["l2_bytes"]:
            launch["l2_gbps"] = round(launch["l2_bytes"] / launch["duration_ns"], 1)
        launches.append(launch)
    result["launches"] = launches
    result["total_us"] = round(sum(launch["duration_ns"] or 0 for launch in launches) / 1000, 2)
    return result


def run_ncu(case: str, tiles: Path, pipes: dict[str, str]) -> subprocess.CompletedProcess:
    metrics = ",".join([*METRICS, *pipes, *(STALL_METRIC.format(s) for s in STALLS)])
    command = [
        "ncu",
        "--clock-control",
        "none",
        "--profile-from-start",
        "off",
        "--target-processes",
        "all",
        "--csv",
        "--page",
        "raw",
        "--metrics",
        metrics,
        sys.executable,
        __file__,
        "--child",
        case,
        "--tiles",
        str(tiles),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def number(text: str | None) -> float | None:
    if text is None or text.strip() in ("", "n/a"):
        return None
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def markdown(data: dict) -> str:
    lines = [
        f"# Nsight Compute: W4A16 kernels on {data['device']} ({data['started_at'][:10]})",
        "",
        "Four fused Llama-2-7B linears, W4 g128 with zero point, one pass each, `ncu --clock-control none`.",
        "",
        "| case | kernel | us | DRAM read GB/s | DRAM % peak | L2 GB/s (% peak) | SM % peak | "
        "pipes % of active: wgmma / mma / alu / fma | occupancy achieved / theoretical % | regs | grid x block | "
        "top stalls (cycles per issue) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in data["cases"]:
        for launch in result.get("launches", []):
            stalls = ", ".join(f"{k} {v:.1f}" for k, v in list(launch["stalls"].items())[:3])
            lines.append(
                f"| {result['case']} | {launch['kernel'][:48]} | {(launch['duration_ns'] or 0) / 1000:.1f} | "
                f"{launch.get('dram_read_gbps', '-')} | {launch['dram_pct_of_peak']} | "
                f"{launch.get('l2_gbps', '-')} ({launch.get('l2_pct_of_peak')}) | {launch.get('sm_pct_of_peak')} | "
                f"{' / '.join(str(launch.get(key, '-')) for key in PIPE_METRICS.values())} | "
                f"{launch['achieved_occupancy_pct']} / {launch['theoretical_occupancy_pct']} | {launch['registers']} | "
                f"{launch['grid']} x {launch['block']} | {stalls} |"
            )
        if "error" in result or result.get("exit_status"):
            lines.append(f"| {result['case']} | failed: {result.get('error', '')} {result.get('stderr', '')[-300:]} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--tune-s", type=float, default=20.0, help="tuning time per case before profiling")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tiles", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.tiles)
        return 0
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    data = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cases": [],
    }
    for case in args.cases.split(","):
        data["cases"].append(profile(case, args.tune_s, args.out))
        (args.out / "ncu-kernels.json").write_text(json.dumps(data, indent=1))
        (args.out / "ncu-kernels.md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
