"""Boot-to-SERVING and the first minute of traffic: `python3 bench/warmup_check.py --out DIR` on a GPU machine.

1. Synthesizes a Llama-2-7B-shaped AWQ checkpoint (awqd synth, random int4 weights).
2. Boots `python -m awqd serve` twice on the same --cache-dir: the first boot cold (kernel selection measured,
   Triton compiling into the cache directory), the second warm (decisions re-validated, Triton builds reused).
   Each boot is timed from the process start to the gRPC health check answering SERVING, and Describe gives
   the shares of kernel selection, model loading and warm-up.
3. The moment the second boot reports SERVING, --clients concurrent clients (64) start sending greedy requests,
   each right after its previous one ends, with prompt and output lengths drawn around P=128 and N=128, for two
   windows of --window-s (55 s) each. Per window: requests answered, RESOURCE_EXHAUSTED and other statuses,
   generated tokens per second (by token arrival time), TTFT percentiles; and a 10-second timeline.

Ready means ready: no RESOURCE_EXHAUSTED, and the first window's throughput equal to the second's.

`--dry-run` runs the same steps on the CPU in about a minute: the tiny architecture, 8 clients, 5-second
windows, shorter prompts. Writes warmup-check.json, warmup-check.md, describe-{first,second}.json and the two
daemons' logs under --out; whatever happened is written even if a step fails or the time limit is reached.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))

from awqd_client.v1 import awqd_pb2 as pb  # noqa: E402
from awqd_client.v1 import awqd_pb2_grpc  # noqa: E402

MODEL = "synth"
TOKEN_RANGE = (100, 2000)  # inside every synthetic architecture's vocabulary
TIMELINE_S = 10


@dataclass
class Settings:
    arch: str
    clients: int
    window_s: float
    prompt_tokens: int
    new_tokens: int
    selection_budget_s: float
    boot_timeout_s: float
    limit_s: float


# Under 10 minutes on an H200: synth ~10 s, a cold boot up to ~4.5 min (the default 240 s selection budget, then load
# and warm-up), a warm one ~1 min (re-validating the cached decisions), two 55 s windows, shutdowns.
FULL = Settings("llama-2-7b", 64, 55.0, 128, 128, 240.0, 360.0, 590.0)
DRY_RUN = Settings("tiny", 8, 5.0, 32, 32, 3.0, 120.0, 300.0)


@dataclass
class Request:
    sent_at: float  # seconds after SERVING
    prompt_tokens: int
    client: int
    arrivals: list[float] = field(default_factory=list)  # each streamed message's tokens, seconds after SERVING
    tokens: list[int] = field(default_factory=list)
    code: str = ""  # "OK" or the status name


class Results:
    def __init__(self, out: Path, settings: Settings):
        self.out = out
        self.lock = threading.Lock()
        self.data: dict = {
            "started_at": datetime.now(UTC).isoformat(),
            "settings": settings.__dict__,
            "boots": [],
            "errors": [],
        }

    def write(self) -> None:
        with self.lock:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "warmup-check.json").write_text(json.dumps(self.data, indent=2))
            (self.out / "warmup-check.md").write_text(markdown(self.data))


class Daemon:
    """`python -m awqd serve` on a free loopback port, its log in a file."""

    def __init__(self, work: Path, log_path: Path, settings: Settings, port: int):
        self.target = f"127.0.0.1:{port}"
        env = python_env()
        env.pop("TRITON_CACHE_DIR", None)  # Triton builds go under --cache-dir, so the first boot is cold
        # --max-concurrent-streams above the client count: only the model's own admission control may refuse.
        command = [
            sys.executable, "-m", "awqd", "serve", "--listen", self.target, "--cache-dir", str(work / "cache"),
            "--model-root", str(work / "models"), "--model", f"{MODEL}={settings.arch}",
            "--selection-budget", str(settings.selection_budget_s), "--metrics-listen", "off",
            "--max-workers", str(settings.clients + 16), "--max-concurrent-streams", str(settings.clients + 8),
        ]  # fmt: skip
        self.log = log_path.open("w")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log, env=env, cwd=ROOT)
        self.channel = grpc.insecure_channel(self.target)

    def wait_serving(self, timeout_s: float) -> float:
        """Seconds from the process start to health SERVING (polled every 50 ms)."""
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = self.started + timeout_s
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"awqd exited during boot with code {self.process.returncode}")
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return time.perf_counter() - self.started
            except grpc.RpcError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"awqd did not report SERVING within {timeout_s:.0f} s")

    def describe(self) -> pb.DescribeResponse:
        return awqd_pb2_grpc.AwqdServiceStub(self.channel).Describe(pb.DescribeRequest(), timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self.channel.close()
        self.log.close()


def python_env() -> dict[str, str]:
    """This checkout first, then whatever PYTHONPATH already names (the GPU machine's carried wheels)."""
    paths = [str(ROOT), str(ROOT / "clients" / "python" / "src"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def boot_record(label: str, boot_to_serving_s: float, described: pb.DescribeResponse) -> dict:
    (model,) = [m for m in described.models if m.name == MODEL]
    selection = [d.selection.duration.ToNanoseconds() / 1e9 for d in described.devices if d.HasField("selection")]
    warmup_s = model.warmup_duration.ToNanoseconds() / 1e9
    return {
        "boot": label,
        "boot_to_serving_s": round(boot_to_serving_s, 2),
        "model_state": pb.ModelState.Name(model.state),
        "model_error": model.error,
        "selection_s": [round(s, 2) for s in selection],
        "selection_sources": [pb.DecisionSource.Name(d.selection.source) for d in described.devices],
        "load_s": round(model.load_duration.ToNanoseconds() / 1e9, 2),
        "warmup_s": round(warmup_s, 2),
        "warmup_share": round(warmup_s / boot_to_serving_s, 3) if boot_to_serving_s else None,
        "warmup_graphs": model.warmup_graphs,
        "warmup_graph_memory_bytes": model.warmup_graph_memory_bytes,
        "kv_cache_slots": model.kv_cache_slots,
        "device": next((d.name for d in described.devices if d.torch_device == model.device), model.device),
    }


def soak(daemon: Daemon, settings: Settings, serving_at: float) -> list[Request]:
    """settings.clients clients, each sending its next request as soon as the last ends, for two windows."""
    end = serving_at + 2 * settings.window_s
    requests: list[list[Request]] = [[] for _ in range(settings.clients)]

    def client(index: int) -> None:
        rng = random.Random(index)
        stub = awqd_pb2_grpc.AwqdServiceStub(grpc.insecure_channel(daemon.target))
        while time.perf_counter() < end:
            prompt = rng.randint(settings.prompt_tokens // 2, settings.prompt_tokens * 3 // 2)
            new_tokens = rng.randint(settings.new_tokens // 2, settings.new_tokens * 3 // 2)
            ids = [rng.randrange(*TOKEN_RANGE) for _ in range(prompt)]
            record = Request(sent_at=time.perf_counter() - serving_at, prompt_tokens=prompt, client=index)
            requests[index].append(record)
            call = stub.Generate(
                pb.GenerateRequest(model=MODEL, prompt_token_ids=ids, max_new_tokens=new_tokens),
                timeout=max(1.0, end + 30 - time.perf_counter()),
            )
            try:
                for message in call:
                    if message.token_ids:
                        record.arrivals.extend([time.perf_counter() - serving_at] * len(message.token_ids))
                        record.tokens.extend(message.token_ids)
                record.code = "OK"
            except grpc.RpcError as error:
                record.code = error.code().name
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    time.sleep(0.05)  # a client backs off a little before retrying

    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(settings.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * settings.window_s + 90)
    return [record for per_client in requests for record in per_client]


def window_summary(records: list[Request], start: float, stop: float) -> dict:
    sent = [r for r in records if start <= r.sent_at < stop]
    codes: dict[str, int] = {}
    for record in sent:
        codes[record.code or "UNFINISHED"] = codes.get(record.code or "UNFINISHED", 0) + 1
    tokens = sum(1 for r in records for t in r.arrivals if start <= t < stop)
    ttft = sorted((r.arrivals[0] - r.sent_at) * 1000 for r in sent if r.arrivals)
    return {
        "from_s": start,
        "to_s": stop,
        "requests_sent": len(sent),
        "codes": codes,
        "resource_exhausted": codes.get("RESOURCE_EXHAUSTED", 0),
        "tokens": tokens,
        "tokens_per_s": round(tokens / (stop - start), 1),
        "ttft_p50_ms": round(statistics.median(ttft), 1) if ttft else None,
        "ttft_p99_ms": round(ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))], 1) if ttft else None,
    }


def soak_record(records: list[Request], settings: Settings) -> dict:
    window = settings.window_s
    windows = [window_summary(records, 0.0, window), window_summary(records, window, 2 * window)]
    timeline = [
        window_summary(records, float(start), float(min(start + TIMELINE_S, 2 * window)))
        for start in range(0, int(2 * window), TIMELINE_S)
    ]
    later = windows[1]["tokens_per_s"]
    return {
        "clients": settings.clients,
        "windows": windows,
        "timeline": [
            {key: row[key] for key in ("from_s", "to_s", "tokens_per_s", "resource_exhausted", "ttft_p50_ms")}
            for row in timeline
        ],
        "resource_exhausted": sum(1 for r in records if r.code == "RESOURCE_EXHAUSTED"),
        "first_window_over_second": round(windows[0]["tokens_per_s"] / later, 3) if later else None,
        "first_wave_ttft_ms": first_wave_ttft(records),
    }


def first_wave_ttft(records: list[Request]) -> dict:
    """TTFT of each client's first request, all sent the moment SERVING was reported: the wave warm-up is for."""
    firsts: dict[int, Request] = {}
    for record in records:
        firsts.setdefault(record.client, record)
    ttft = sorted((r.arrivals[0] - r.sent_at) * 1000 for r in firsts.values() if r.arrivals)
    if not ttft:
        return {}
    return {"requests": len(ttft), "p50": round(statistics.median(ttft), 1), "max": round(ttft[-1], 1)}


def log_findings(log_path: Path) -> dict:
    """From a daemon's JSON log: warm-up's slowest steps, and the Triton compilations after SERVING (each one a
    specialisation warm-up missed, which stalled the request that met it)."""
    slowest, compiled = {}, []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "model_warmed_up":
            slowest = event.get("slowest_steps", {})
        elif event.get("event") == "triton_kernel_compiled" and event.get("phase") == "serving":
            compiled.append(f"{event.get('kernel')} {event.get('specialization', '')[:120]}")
    return {"warmup_slowest_steps": slowest, "compiled_while_serving": compiled}


def run(args: argparse.Namespace, settings: Settings, results: Results) -> None:
    work = args.work
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    checkpoint = models / settings.arch
    if not (checkpoint / "config.json").exists():
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "awqd", "synth", "--arch", settings.arch, "--out", str(checkpoint)],
            check=True, env=python_env(), cwd=ROOT, timeout=300,
        )  # fmt: skip
        results.data["synth_s"] = round(time.perf_counter() - started, 1)
    for label in ("first", "second"):
        daemon = Daemon(work, args.out / f"daemon-{label}.log", settings, free_port())
        try:
            boot_to_serving = daemon.wait_serving(settings.boot_timeout_s)
            serving_at = time.perf_counter()
            records = soak(daemon, settings, serving_at) if label == "second" else []
            described = daemon.describe()
            (args.out / f"describe-{label}.json").write_text(
                json.dumps(MessageToDict(described, preserving_proto_field_name=True), indent=2)
            )
            results.data["boots"].append(boot_record(label, boot_to_serving, described))
            if records:
                results.data["soak"] = soak_record(records, settings)
        finally:
            daemon.stop()
            if results.data["boots"] and results.data["boots"][-1]["boot"] == label:
                results.data["boots"][-1].update(log_findings(args.out / f"daemon-{label}.log"))
            results.write()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None, help="checkpoint and cache directory (default: a new one)")
    parser.add_argument("--dry-run", action="store_true", help="the CPU run: tiny model, 8 clients, 5 s windows")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--window-s", type=float, default=None)
    parser.add_argument("--limit-s", type=float, default=None, help="stop and write what was measured by then")
    parser.add_argument("--selection-budget", type=float, default=None, help="the daemon's --selection-budget")
    args = parser.parse_args()
    settings = DRY_RUN if args.dry_run else FULL
    if args.clients:
        settings.clients = args.clients
    if args.window_s:
        settings.window_s = args.window_s
    if args.limit_s:
        settings.limit_s = args.limit_s
    if args.selection_budget:
        settings.selection_budget_s = args.selection_budget
    scratch = args.work is None
    if scratch:
        args.work = Path(tempfile.mkdtemp(prefix="awqd-warmup-"))
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out, settings)

    def overrun() -> None:
        results.data["errors"].append(f"the whole check exceeded its {settings.limit_s:.0f} s limit; stopped here")
        results.write()
        print("warmup_check: time limit reached", file=sys.stderr, flush=True)
        os._exit(3)

    watchdog = threading.Timer(settings.limit_s, overrun)
    watchdog.daemon = True
    watchdog.start()
    try:
        run(args, settings, results)
    except Exception as error:
        results.data["errors"].append(f"{type(error).__name__}: {error}")
        traceback.print_exc()
    finally:
        watchdog.cancel()
        results.data["finished_at"] = datetime.now(UTC).isoformat()
        results.write()
        if scratch:
            shutil.rmtree(args.work, ignore_errors=True)
    print((args.out / "warmup-check.md").read_text())
    return 1 if results.data["errors"] else 0


def markdown(data: dict) -> str:
    settings = data["settings"]
    boots = data.get("boots", [])
    device = boots[0]["device"] if boots else "?"
    lines = [
        f"# Warm-up check on {device}",
        "",
        f"{settings['arch']}-shaped synthetic AWQ model; {settings['clients']} clients, greedy, prompts around "
        f"P={settings['prompt_tokens']} and outputs around N={settings['new_tokens']} tokens. "
        f"Started {data['started_at']}.",
        "",
        "| boot | to SERVING s | selection s | load s | of which warm-up s | warm-up share | graphs | graph memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for boot in boots:
        lines.append(
            f"| {boot['boot']} | {boot['boot_to_serving_s']} | {boot['selection_s']} "
            f"({', '.join(boot['selection_sources'])}) | {boot['load_s']} | {boot['warmup_s']} | "
            f"{boot['warmup_share']:.0%} | {boot['warmup_graphs']} | "
            f"{boot['warmup_graph_memory_bytes'] / 2**20:.1f} MiB |"
        )
    soak_data = data.get("soak")
    if soak_data:
        lines += [
            "",
            f"{soak_data['clients']} clients from the moment the second boot reported SERVING:",
            "",
            "| window | requests sent | RESOURCE_EXHAUSTED | statuses | tokens/s | TTFT p50 ms | TTFT p99 ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in soak_data["windows"]:
            lines.append(
                f"| {row['from_s']:.0f}-{row['to_s']:.0f} s | {row['requests_sent']} | {row['resource_exhausted']} | "
                f"{row['codes']} | {row['tokens_per_s']} | {row['ttft_p50_ms']} | {row['ttft_p99_ms']} |"
            )
        lines += [
            "",
            f"First window's tokens/s over the second's: {soak_data['first_window_over_second']}. "
            f"RESOURCE_EXHAUSTED in all: {soak_data['resource_exhausted']}.",
            "",
            "Tokens/s by 10 s: "
            + ", ".join(f"{row['from_s']:.0f}s: {row['tokens_per_s']}" for row in soak_data["timeline"]),
            "",
            f"Each client's first request (sent at SERVING): TTFT {soak_data['first_wave_ttft_ms']} ms.",
        ]
    for boot in boots:
        if "warmup_slowest_steps" in boot:
            lines.append(
                f"- {boot['boot']} boot: warm-up's slowest steps {boot['warmup_slowest_steps']}; Triton compilations "
                f"after SERVING: {len(boot['compiled_while_serving'])} {boot['compiled_while_serving'][:5]}"
            )
    for boot in boots:
        if boot["model_error"]:
            lines.append(f"- **Model failed on the {boot['boot']} boot:** {boot['model_error']}")
    for error in data.get("errors", []):
        lines.append(f"- **Error:** {error}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
