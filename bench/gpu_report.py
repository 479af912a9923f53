"""Turn the files `make gpu-check` leaves in $OUT into a results folder under bench/results/.

    python bench/gpu_report.py OUT_DIR bench/results/<gpu>-<date>

Copies the raw files and writes README.md with the tables: device, kernel decisions per bucket on both boots,
boot times, and generation timings per kernel.
"""

import json
import re
import shutil
import sys
from pathlib import Path

RAW_FILES = ("nvidia-smi.csv", "steps.log", "describe-first.txt", "describe-first.json", "describe-second.json",
             "generate.jsonl")  # fmt: skip


def short(source: str) -> str:
    return source.removeprefix("DECISION_SOURCE_").lower()


def seconds(duration: str) -> float:
    return float(duration.rstrip("s"))


def decisions_table(device: dict) -> list[str]:
    names = [t["kernel"] for t in device["decisions"][0]["timings"]]
    lines = [
        "| tokens | chosen | source | " + " | ".join(f"{n} (ms)" for n in names) + " |",
        "|---" * (3 + len(names)) + "|",
    ]
    for decision in device["decisions"]:
        times = {t["kernel"]: t["median_ms"] for t in decision["timings"]}
        cells = [f"**{times[n]:.3f}**" if n == decision["kernel"] else f"{times[n]:.3f}" for n in names]
        lines.append(
            f"| {decision['batch_tokens']} | {decision['kernel']} | {short(decision['source'])} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def generations(path: Path) -> list[tuple[str, dict | None, str]]:
    runs, kernel, last = [], None, None
    for line in path.read_text().splitlines():
        message = json.loads(line)
        if set(message) == {"kernel"}:
            if kernel is not None:
                runs.append((kernel, last))
            kernel, last = message["kernel"], None
        elif "completion" in message:
            last = message["completion"]
    runs.append((kernel, last))
    return runs


def main(out_dir: Path, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        shutil.copyfile(out_dir / name, results / name)
    first = json.loads((out_dir / "describe-first.json").read_text())
    second = json.loads((out_dir / "describe-second.json").read_text())
    steps = (out_dir / "steps.log").read_text()
    boots = dict(re.findall(r"boot (first|second): ([\d.]+) s to SERVING", steps))
    gpu = next(d for d in first["devices"] if d["kind"] == "DEVICE_KIND_CUDA")
    gpu_again = next(d for d in second["devices"] if d["kind"] == "DEVICE_KIND_CUDA")
    cpu, cpu_again = first["devices"][0], second["devices"][0]
    model = first["models"][0]
    node = first["node"]
    versions = {c["name"]: c.get("version") or f"absent ({c.get('reason', '')})" for c in node["components"]}

    lines = [
        f"# {gpu['name']}: discovery, kernel selection and 7B-shaped generation",
        "",
        f"Measured with `make gpu-check` (bench/gpu_check.sh) on {node['started_at'][:10]}, on the device machine: "
        f"one {gpu['name']} (compute capability {gpu['compute_capability']}, {gpu['uuid']}, "
        f"{int(gpu['memory_total_bytes']) / 2**30:.0f} GiB), driver {versions['nvidia_driver']}, "
        f"torch {versions['torch']}, triton {versions['triton']}, transformers {versions['transformers']}, "
        f"autoawq {versions['autoawq']}, awq_ext {versions['awq_ext']}.",
        "",
        "The model is `awqd synth --arch llama-2-7b`: Llama-2-7B shapes, random int4 weights, group 128, GEMM-packed.",
        "Kernel times are the median for the seven linear layers of one decoder layer (q, k, v, o: 4096x4096; "
        "gate, up: 4096->11008; down: 11008->4096), CUDA-graph replay, as FACTS.md's baseline measures them.",
        "",
        "## Kernel candidates on the GPU",
        "",
        "| candidate | supported | correctness | reason |",
        "|---|---|---|---|",
    ]
    for kernel in gpu["kernels"]:
        check = kernel.get("correctness")
        verdict = (
            f"rel. error {check.get('max_relative_error', 0):.1e} (tolerance {check['tolerance']:.0e})"
            if check
            else "-"
        )
        lines.append(
            f"| {kernel['name']} | {'yes' if kernel.get('supported') else 'no'} | {verdict} | {kernel['reason']} |"
        )
    lines += [
        "",
        f"## Boot 1: empty cache ({short(gpu['selection']['source'])}, "
        f"{seconds(gpu['selection']['duration']):.1f} s for the GPU)",
        "",
        *decisions_table(gpu),
        "",
        f"## Boot 2: same fingerprint ({short(gpu_again['selection']['source'])}, "
        f"{seconds(gpu_again['selection']['duration']):.1f} s for the GPU)",
        "",
        *[f"- {note}" for note in gpu_again["selection"].get("notes", [])],
        "",
        "## Boot times",
        "",
        "| boot | to SERVING | GPU selection | CPU selection |",
        "|---|---|---|---|",
        f"| 1 (empty cache) | {boots.get('first')} s | {seconds(gpu['selection']['duration']):.1f} s, "
        f"{short(gpu['selection']['source'])} | {seconds(cpu['selection']['duration']):.1f} s, "
        f"{short(cpu['selection']['source'])} |",
        f"| 2 (cache present) | {boots.get('second')} s | {seconds(gpu_again['selection']['duration']):.1f} s, "
        f"{short(gpu_again['selection']['source'])} | {seconds(cpu_again['selection']['duration']):.1f} s, "
        f"{short(cpu_again['selection']['source'])} |",
        "",
        "CPU notes on boot 2: " + "; ".join(cpu_again["selection"].get("notes", [])),
        "",
        "## Generation on the 7B-shaped model (HF eager decode, batch 1, prompt 7 tokens, 32 new tokens)",
        "",
        f"Model load: {seconds(model['load_duration']):.2f} s; weights on the GPU: "
        f"{int(model['weight_memory_bytes']) / 1e9:.2f} GB plus "
        f"{int(model.get('extra_layout_memory_bytes', 0)) / 1e9:.2f} GB of extra layouts (one per kernel the model "
        "may switch to).",
        "",
        "| --kernel | time to first token (ms) | ms per output token | kernels used (phase: kernel x steps) |",
        "|---|---|---|---|",
    ]
    for kernel, completion in generations(out_dir / "generate.jsonl"):
        if completion is None:
            lines.append(f"| {kernel} | refused: see steps.log (FAILED_PRECONDITION with the reason) | | |")
            continue
        used = ", ".join(f"{k['phase']}: {k['kernel']} x{k['steps']}" for k in completion["kernels"])
        timings = completion["timings"]
        lines.append(
            f"| {kernel} | {timings['time_to_first_token_ms']:.1f} | {timings['ms_per_output_token']:.1f} | {used} |"
        )
    (results / "README.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {results}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
