"""Replicas on a multi-GPU node, end to end in one process: `python3 bench/multi_gpu_check.py --out DIR`.

The daemon's own code (awqd.daemon.Daemon: discovery, kernel selection, placement, routing), with no gRPC in the
way, on a Llama-2-7B-shaped synthetic AWQ checkpoint placed @all (one replica per GPU):

1. boot: wall time to ready, and per GPU the kernel-selection source (measured, or the shared measurement
   re-validated), its duration and its decode/prefill choices (and, as the last step, the same selection with
   every GPU measuring on its own, side by side, no cache: the boot time sharing saves);
2. throughput: 32 x N concurrent streams over the N replicas (least-loaded routing), aggregate tokens/s and how
   many requests each replica took;
3. failure: 32 x N streams again, and one replica's engine killed under load (its decode step raises an error
   its scheduler does not catch, as a crashed engine would): its in-flight streams must end with UNAVAILABLE
   naming it, and every other stream must complete;
4. one GPU: every replica but cuda:0 unloaded (replica unload, which drains), then 32 streams on the one left:
   N times that against step 2.

`--dry-run` runs the same steps on the CPU, listed as 2 devices (--cpu-devices, tests only), with the demo
model and 4 streams per device: it checks the script, not the speed. Every step has a time limit; a failure is
recorded and the script writes what it has (multi-gpu-check.json and .md in --out) before it exits.
"""

import argparse
import atexit
import json
import platform
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from awqd.config import EngineSettings, ModelSpec, ServeConfig
from awqd.daemon import Daemon
from awqd.engine.request import GenerateParams
from awqd.engine.sequence import Finished
from awqd.errors import Unavailable
from awqd.kernels.selection import select_kernels
from awqd.kernels.shapes import engine_layer_shapes
from awqd.models.checkpoint import open_checkpoint
from awqd.models.demo import ensure_demo_model
from awqd.models.synth import synthesize

PROMPT_TOKENS = 128
NEW_TOKENS = 128
STREAMS_PER_GPU = 32
MODEL = "replicated"


class Crash(BaseException):
    """Escapes the scheduler's per-step error handling, so the engine's thread ends: a killed engine."""


def crash(*args, **kwargs):
    raise Crash("engine killed by bench/multi_gpu_check.py")


def run_streams(daemon: Daemon, count: int, new_tokens: int, during=None) -> dict:
    """`count` concurrent greedy streams; aggregate tokens/s, and each stream's outcome."""
    prompt = tuple(range(1, PROMPT_TOKENS + 1))

    def one(index: int) -> dict:
        params = GenerateParams(MODEL, "", prompt, new_tokens, 0.0, None, 0, None, (), "")
        try:
            job = daemon.generate(params)
            events = list(job.results())
            finished = events[-1]
            assert isinstance(finished, Finished)
            return {"ok": True, "tokens": finished.completion_tokens}
        except Unavailable as error:
            return {"ok": False, "status": "UNAVAILABLE", "error": str(error)}
        except Exception as error:
            return {"ok": False, "status": type(error).__name__, "error": str(error)}

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(one, index) for index in range(count)]
        if during is not None:
            during()
        outcomes = [future.result(timeout=600) for future in futures]
    seconds = time.perf_counter() - started
    tokens = sum(outcome.get("tokens", 0) for outcome in outcomes)
    return {
        "streams": count,
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "outcomes": outcomes,
    }


def routed(daemon: Daemon) -> dict[str, int]:
    return {replica.device: replica.routed for replica in daemon.models.ready(MODEL).replicas}


def selection_rows(daemon: Daemon) -> list[dict]:
    rows = []
    for device, decisions in daemon.decisions.items():
        dispatch = decisions.dispatch() if decisions.decisions else None
        rows.append(
            {
                "device": device,
                "uuid": decisions.device_uuid,
                "source": decisions.source,
                "seconds": round(decisions.duration_s, 2),
                "decode_kernel": dispatch.candidate_for(1).name if dispatch else "",
                "prefill_512_kernel": dispatch.candidate_for(512).name if dispatch else "",
                "notes": list(decisions.notes),
            }
        )
    return rows


def unshared_selection(daemon: Daemon, shapes, group_size: int, budget_s: float) -> dict:
    """Every GPU measures on its own, side by side, with no cache: what boot would cost without sharing."""
    devices = [d for d in daemon.discovery.devices if d.torch_device and d.kind == daemon.discovery.devices[-1].kind]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        decided = list(pool.map(lambda d: select_kernels(d, shapes, group_size, None, budget_s=budget_s), devices))
    return {
        "wall_s": time.perf_counter() - started,
        "per_device_s": {d.torch_device: round(x.duration_s, 2) for d, x in zip(devices, decided, strict=True)},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="CPU, 2 simulated devices, the demo model")
    parser.add_argument("--budget", type=float, default=150.0, help="selection budget per device, seconds")
    parser.add_argument("--skip-unshared", action="store_true", help="skip the no-sharing selection comparison")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"started_at": datetime.now(UTC).isoformat(), "host": platform.node(), "steps": {}, "errors": []}
    work = Path(tempfile.mkdtemp(prefix="awqd-multi-gpu-"))  # the checkpoint and the caches; removed at exit
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    streams_per_device, new_tokens = (4, 16) if args.dry_run else (STREAMS_PER_GPU, NEW_TOKENS)

    def step(name: str, action) -> None:
        started = time.perf_counter()
        try:
            results["steps"][name] = action()
        except BaseException as error:  # record, write what we have, go on
            results["errors"].append({"step": name, "error": f"{type(error).__name__}: {error}"})
            traceback.print_exc()
        print(f"{name}: {time.perf_counter() - started:.1f} s", flush=True)
        write(args.out, results)

    cache_dir = work / "cache"
    if args.dry_run:
        checkpoint = ensure_demo_model(cache_dir)
    else:
        checkpoint = cache_dir / "models" / "llama-2-7b-awq"
        synthesize("llama-2-7b", checkpoint)
    config = ServeConfig(
        cache_dir=cache_dir,
        models=(ModelSpec(MODEL, checkpoint.name, "all"),),
        selection_budget_s=args.budget,
        cpu_devices=2 if args.dry_run else 1,
        metrics_listen="off",
        engine=EngineSettings(kv_cache_tokens=4096) if args.dry_run else EngineSettings(),
    )
    daemon = Daemon(config)
    results["devices"] = [f"{d.torch_device}: {d.name}" for d in daemon.discovery.devices if d.torch_device]

    def boot() -> dict:
        started = time.perf_counter()
        daemon.boot()
        hosted = daemon.models.ready(MODEL)
        return {
            "wall_s": time.perf_counter() - started,
            "selection": selection_rows(daemon),
            "replicas": [
                {"device": r.device, "state": r.state, "load_s": round(r.load_seconds, 2), "error": r.error}
                for r in hosted.replicas
            ],
        }

    step("boot", boot)
    if "boot" not in results["steps"]:
        return
    hosted = daemon.models.ready(MODEL)
    replicas = len(hosted.replicas)

    def throughput() -> dict:
        before = routed(daemon)
        report = run_streams(daemon, streams_per_device * replicas, new_tokens)
        report["routed"] = {device: count - before[device] for device, count in routed(daemon).items()}
        report["failed"] = [o for o in report.pop("outcomes") if not o["ok"]]
        return report

    step("aggregate", throughput)

    def kill_one() -> dict:
        victim = hosted.replicas[-1]

        def kill() -> None:
            deadline = time.monotonic() + 60
            while victim.scheduler.load().running == 0 and time.monotonic() < deadline:
                time.sleep(0.005)  # kill it with sequences in flight
            victim.scheduler.runner.decode = crash

        report = run_streams(daemon, streams_per_device * replicas, new_tokens, during=kill)
        outcomes = report.pop("outcomes")
        lost = [o for o in outcomes if not o["ok"] and victim.label not in o.get("error", "")]
        report.update(
            victim=victim.label,
            victim_state=victim.state,
            ended_unavailable=sum(1 for o in outcomes if o.get("status") == "UNAVAILABLE"),
            completed=sum(1 for o in outcomes if o["ok"]),
            lost_other_streams=lost,
            model_state=daemon.models.ready(MODEL).state,
        )
        return report

    if replicas > 1:
        step("replica_killed", kill_one)

    def one_gpu() -> dict:
        for replica in list(hosted.replicas[1:]):
            daemon.models.unload(replica.label)
        report = run_streams(daemon, streams_per_device, new_tokens)
        report["failed"] = [o for o in report.pop("outcomes") if not o["ok"]]
        report["device"] = hosted.replicas[0].device
        return report

    step("one_gpu", one_gpu)
    aggregate, single = results["steps"].get("aggregate"), results["steps"].get("one_gpu")
    if aggregate and single:
        results["scaling"] = {
            "replicas": replicas,
            "aggregate_tokens_per_s": aggregate["tokens_per_s"],
            "n_times_one_gpu_tokens_per_s": replicas * single["tokens_per_s"],
            "efficiency": aggregate["tokens_per_s"] / (replicas * single["tokens_per_s"]),
        }
    daemon.close()
    if not args.skip_unshared:  # last: selection installs its tuning tables, which the engines above used
        opened = open_checkpoint(checkpoint)
        shapes = list(engine_layer_shapes(opened.config).values())
        group_size = opened.quant_config.group_size
        step("selection_unshared", lambda: unshared_selection(daemon, shapes, group_size, args.budget))
    write(args.out, results)


def write(out: Path, results: dict) -> None:
    results["torch"], results["cuda"] = torch.__version__, torch.version.cuda
    (out / "multi-gpu-check.json").write_text(json.dumps(results, indent=1, default=str))
    lines = [f"# awqd replicas on {', '.join(results.get('devices', []))}", ""]
    boot = results["steps"].get("boot")
    if boot:
        lines += [f"Boot to ready: {boot['wall_s']:.1f} s", "", "| device | source | s | decode | prefill 512 |"]
        lines += ["|---|---|---|---|---|"]
        lines += [
            f"| {r['device']} | {r['source']} | {r['seconds']} | {r['decode_kernel']} | {r['prefill_512_kernel']} |"
            for r in boot["selection"]
        ]
    unshared = results["steps"].get("selection_unshared")
    if unshared:
        lines += ["", f"Selection without sharing, all devices side by side: {unshared['wall_s']:.1f} s wall"]
    for name in ("aggregate", "replica_killed", "one_gpu"):
        report = results["steps"].get(name)
        if report:
            shown = {k: v for k, v in report.items() if k not in ("lost_other_streams", "failed") or v}
            lines += ["", f"## {name}", "", "```", json.dumps(shown, indent=1, default=str), "```"]
    if "scaling" in results:
        lines += ["", "## scaling", "", "```", json.dumps(results["scaling"], indent=1), "```"]
    if results["errors"]:
        lines += ["", "## errors", "", *[f"- {e['step']}: {e['error']}" for e in results["errors"]]]
    (out / "multi-gpu-check.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
