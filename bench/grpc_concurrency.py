"""Many concurrent Generate streams from an independent client: `python3 bench/grpc_concurrency.py --target H:P`.

The client is built from the raw generated stubs (awqd_client.v1.awqd_pb2 / awqd_pb2_grpc) and grpc alone: no
torch, no awqd, not awqd_client's wrapper. Every stream runs on one asyncio loop (grpc.aio), so the client does not
spend a thread per stream and measures the server rather than itself.

Per concurrency level (--levels), all the level's streams start at once, each a greedy request of --prompt-tokens
prompt token ids (drawn with a fixed seed per stream, the streams numbered across the run: two runs send the same
work, and no round repeats an earlier round's prompts, which would hit the prefix cache) and --new-tokens new tokens.
With --shared-prefix-tokens S, the first S ids are the same in every stream, as a system prompt would be, and
the table reports the share of prompt tokens the server's prefix cache served. With --warmup, an untimed round at
the same level runs first. Then per level:
- aggregate tok/s counted at the client: tokens received / (last token's arrival - first request sent);
- TTFT p50/p99 at the client (request sent -> first token), the server's own (the engine's receipt of the
  request -> its first token sampled), and the client's minus the server's, p50/p99: what the network, the gRPC
  server and the loop add;
- inter-token time p50/p99 at the client;
- the server's own ms per token (Completion.timings.ms_per_output_token), and the streaming overhead per token:
  the client's mean inter-token time minus the server's ms per token, per stream, averaged (microseconds). Both
  means run from the stream's first token to its last. So, per stream, this is the last token's delivery delay
  (arrival minus the server's sampling) minus the first token's, over the gaps between them. A cost that every
  message pays alike cancels. What is left is how much later the last token is delivered than the first. At 256
  streams, every stream's last token comes in the same step, so this is about the end burst;
- with --metrics (the daemon's metrics URL), the server loop's mean delivery lag at each stream's first token and
  completion (awqd_stream_delivery_lag_seconds), which separates the server's share of the overhead from the client's;
- tokens per message: above 1 when the server's loop fell behind and coalesced a stream's pending token deltas;
- the statuses: OK, or each gRPC code, and "lost" streams (OK without a Completion, or tokens that disagree with
  its usage). A stream never hangs: --timeout gives every call a deadline, so it ends with a status.
--hold N opens N streams at once after the levels: every one must complete or end with an explicit status.

Writes grpc-concurrency.json and grpc-concurrency.md under --out. Needs a running daemon (bench/concurrency_check.py
starts one); --wait-ready S waits up to S seconds for its health check to answer SERVING.
"""

import argparse
import asyncio
import json
import math
import multiprocessing
import multiprocessing.synchronize
import random
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients" / "python" / "src"))

from awqd_client.v1 import awqd_pb2 as pb
from awqd_client.v1 import awqd_pb2_grpc

TOKEN_RANGE = (100, 2000)  # inside the demo model's and every synthetic architecture's vocabulary


@dataclass
class Stream:
    sent_at: float = 0.0
    arrivals: list[float] = field(default_factory=list)  # one entry per token received
    tokens: int = 0
    token_messages: int = 0  # messages that carried tokens: fewer than tokens when the server coalesced them
    completion: pb.Completion | None = None
    code: str = ""  # "OK" or the gRPC status name

    def __getstate__(self) -> dict:
        """For the client processes: the Completion travels serialized (its generated class does not pickle)."""
        return {**vars(self), "completion": self.completion.SerializeToString() if self.completion else None}

    def __setstate__(self, state: dict) -> None:
        completion = state.pop("completion")
        vars(self).update(state, completion=pb.Completion.FromString(completion) if completion is not None else None)

    @property
    def lost(self) -> bool:
        """Ended OK, yet without a Completion, or with fewer or more tokens than the Completion counts."""
        return self.code == "OK" and (self.completion is None or self.completion.usage.completion_tokens != self.tokens)


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


class Client:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        # Separate connections (a local subchannel pool each), so one TCP connection does not carry every stream.
        self.channels = [
            grpc.aio.insecure_channel(args.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(args.channels)
        ]
        self.stubs = [awqd_pb2_grpc.AwqdServiceStub(channel) for channel in self.channels]
        shared = random.Random("shared prefix")
        self.shared_prefix = [
            shared.randrange(*TOKEN_RANGE) for _ in range(min(args.shared_prefix_tokens, args.prompt_tokens))
        ]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    def request(self, index: int) -> pb.GenerateRequest:
        rng = random.Random(index)
        ids = self.shared_prefix + [
            rng.randrange(*TOKEN_RANGE) for _ in range(self.args.prompt_tokens - len(self.shared_prefix))
        ]
        return pb.GenerateRequest(
            model=self.args.model, prompt_token_ids=ids, max_new_tokens=self.args.new_tokens, temperature=0.0
        )

    async def one(self, index: int) -> Stream:
        stream = Stream()
        request = self.request(index)
        stream.sent_at = time.perf_counter()
        call = self.stubs[index % len(self.stubs)].Generate(request, timeout=self.args.timeout)
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                if message.token_ids:
                    now = time.perf_counter()
                    stream.arrivals.extend([now] * len(message.token_ids))
                    stream.tokens += len(message.token_ids)
                    stream.token_messages += 1
                if message.HasField("completion"):
                    stream.completion = message.completion
            stream.code = "OK"
        except grpc.aio.AioRpcError as error:
            stream.code = error.code().name
        return stream

    async def streams(self, indices: list[int]) -> list[Stream]:
        return list(await asyncio.gather(*(self.one(index) for index in indices)))


class SpreadClient:
    """Each round's streams dealt over --processes client processes, each with its own asyncio loop and
    connections, started together behind a barrier: at a few hundred streams one Python loop receiving every token
    can fall behind the server and count its own delay as the server's. perf_counter is the system's monotonic
    clock, so timestamps from every process compare."""

    def __init__(self, args: argparse.Namespace):
        context = multiprocessing.get_context("spawn")
        self.processes = args.processes
        barrier = context.Barrier(args.processes)
        self.pool = ProcessPoolExecutor(args.processes, context, initializer=_start_worker, initargs=(args, barrier))

    async def round(self, indices: list[int]) -> list[Stream]:
        parts = [indices[first :: self.processes] for first in range(self.processes)]
        done = await asyncio.gather(*(asyncio.wrap_future(self.pool.submit(_worker_round, part)) for part in parts))
        return [stream for part in done for stream in part]

    async def close(self) -> None:
        self.pool.shutdown()


_worker: tuple[asyncio.AbstractEventLoop, Client, multiprocessing.synchronize.Barrier] | None = None


def _start_worker(args: argparse.Namespace, barrier: multiprocessing.synchronize.Barrier) -> None:
    global _worker
    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(_client(args))
    _worker = (loop, client, barrier)


async def _client(args: argparse.Namespace) -> Client:
    return Client(args)


def _worker_round(indices: list[int]) -> list[Stream]:
    loop, client, barrier = _worker
    barrier.wait()  # every process holds one part of the round, and all start together
    return loop.run_until_complete(client.streams(indices))


def summary(streams: list[Stream]) -> dict:
    codes: dict[str, int] = {}
    for stream in streams:
        codes[stream.code] = codes.get(stream.code, 0) + 1
    arrivals = [t for s in streams for t in s.arrivals]
    tokens = len(arrivals)
    span = (max(arrivals) - min(s.sent_at for s in streams)) if arrivals else 0.0
    ttft_ms = [(s.arrivals[0] - s.sent_at) * 1000 for s in streams if s.arrivals]
    # The server's TTFT runs from the engine's receipt of the request to its first token's sampling.
    server_ttft_ms = [s.completion.timings.time_to_first_token_ms for s in streams if s.completion is not None]
    ttft_gap_ms = [
        (s.arrivals[0] - s.sent_at) * 1000 - s.completion.timings.time_to_first_token_ms
        for s in streams
        if s.arrivals and s.completion is not None
    ]
    inter_token_ms = [(later - earlier) * 1000 for s in streams for earlier, later in pairwise(s.arrivals)]
    # Per stream, over the same tokens: the client's mean gap between its first and last token, and the server's.
    paired = [
        ((s.arrivals[-1] - s.arrivals[0]) * 1000 / (len(s.arrivals) - 1), s.completion.timings.ms_per_output_token)
        for s in streams
        if s.completion is not None and len(s.arrivals) > 1 and s.completion.timings.ms_per_output_token > 0
    ]
    token_messages = sum(s.token_messages for s in streams)
    prompt = sum(s.completion.usage.prompt_tokens for s in streams if s.completion is not None)
    cached = sum(s.completion.usage.cached_prompt_tokens for s in streams if s.completion is not None)
    client_ms = statistics.fmean(c for c, _ in paired) if paired else None
    server_ms = statistics.fmean(s for _, s in paired) if paired else None
    return {
        "streams": len(streams),
        "codes": codes,
        "lost": sum(s.lost for s in streams),
        "tokens": tokens,
        "seconds": round(span, 3),
        "tokens_per_s": round(tokens / span, 1) if span else None,
        "tokens_per_message": round(tokens / token_messages, 3) if token_messages else None,
        "ttft_p50_ms": rounded(percentile(ttft_ms, 0.5), 1),
        "ttft_p99_ms": rounded(percentile(ttft_ms, 0.99), 1),
        "server_ttft_p50_ms": rounded(percentile(server_ttft_ms, 0.5), 1),
        "server_ttft_p99_ms": rounded(percentile(server_ttft_ms, 0.99), 1),
        "ttft_client_minus_server_p50_ms": rounded(percentile(ttft_gap_ms, 0.5), 3),
        "ttft_client_minus_server_p99_ms": rounded(percentile(ttft_gap_ms, 0.99), 3),
        "inter_token_p50_ms": rounded(percentile(inter_token_ms, 0.5), 3),
        "inter_token_p99_ms": rounded(percentile(inter_token_ms, 0.99), 3),
        "client_ms_per_token": rounded(client_ms, 4),
        "server_ms_per_token": rounded(server_ms, 4),
        "overhead_us_per_token": rounded(statistics.fmean((c - s) * 1000 for c, s in paired) if paired else None, 1),
        "cached_prompt_share": rounded(cached / prompt if prompt else None, 3),
    }


def delivery_lags(metrics_url: str, model: str) -> dict[str, tuple[float, float]]:
    """The daemon's awqd_stream_delivery_lag_seconds count and sum per message (first, last) for the model."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    lags = {"first": [0.0, 0.0], "last": [0.0, 0.0]}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model or sample.labels.get("message") not in lags:
                continue
            if sample.name == "awqd_stream_delivery_lag_seconds_count":
                lags[sample.labels["message"]][0] = sample.value
            elif sample.name == "awqd_stream_delivery_lag_seconds_sum":
                lags[sample.labels["message"]][1] = sample.value
    return {message: (count, total) for message, (count, total) in lags.items()}


def mean_lag_ms(before: dict, after: dict, message: str) -> float | None:
    count = after[message][0] - before[message][0]
    return round((after[message][1] - before[message][1]) / count * 1000, 3) if count else None


async def wait_ready(target: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} did not answer SERVING within {timeout_s:.0f} s")
            await asyncio.sleep(0.2)


async def describe(client: Client) -> dict:
    try:
        answer = await client.stubs[0].Describe(pb.DescribeRequest(), timeout=30)
    except grpc.aio.AioRpcError as error:
        return {"error": f"{error.code().name}: {error.details()}"}
    return {
        "awqd_version": answer.node.awqd_version,
        "hostname": answer.node.hostname,
        "devices": [d.name for d in answer.devices],
        "models": {m.name: {"device": m.device, "kv_cache_tokens": m.kv_cache_tokens} for m in answer.models},
    }


async def run(args: argparse.Namespace, results: dict, write) -> None:
    if args.wait_ready:
        await wait_ready(args.target, args.wait_ready)
    client = Client(args)
    rounds = SpreadClient(args) if args.processes > 1 else None

    sent = 0

    async def play(streams: int) -> list[Stream]:
        # Every stream of the run has its own prompt, so no round's prefill hits the prefix cache of one before it.
        nonlocal sent
        indices, sent = list(range(sent, sent + streams)), sent + streams
        return await (rounds.round(indices) if rounds else client.streams(indices))

    async def measured(level: int) -> dict:
        """One timed round: the client's summary, and with --metrics the server loop's mean delivery lag in it."""
        lags = delivery_lags(args.metrics, args.model) if args.metrics else None
        started = time.perf_counter()
        row = {"level": level, **summary(await play(level))}
        if lags is not None:
            after = delivery_lags(args.metrics, args.model)
            row["server_lag_first_ms"] = mean_lag_ms(lags, after, "first")
            row["server_lag_last_ms"] = mean_lag_ms(lags, after, "last")
        row["wall_s"] = round(time.perf_counter() - started, 3)
        print(json.dumps(row), flush=True)
        return row

    try:
        results["server"] = await describe(client)
        for level in args.levels:
            if args.warmup:
                await play(level)
            results["levels"].append(await measured(level))
            write()
        if args.hold:
            results["hold"] = await measured(args.hold)
    finally:
        await client.close()
        if rounds:
            await rounds.close()


def markdown(data: dict) -> str:
    settings = data["settings"]
    server = data.get("server", {})
    lines = [
        f"# Concurrent gRPC streams: {settings['target']}, model {settings['model']}",
        "",
        f"P={settings['prompt_tokens']} prompt tokens (the first {settings['shared_prefix_tokens']} the same in every "
        f"stream), N={settings['new_tokens']} new tokens, greedy; "
        f"{settings['channels']} client connections per client process, {settings['processes']} process(es), one "
        "asyncio loop each (bench/grpc_concurrency.py, raw stubs). "
        f"Server: awqd {server.get('awqd_version', '?')} on {', '.join(server.get('devices', [])) or '?'}. "
        f"Started {data['started_at']}.",
        "",
        "| concurrent streams | aggregate tok/s (client) | TTFT p50 ms | TTFT p99 ms | server TTFT p99 ms | "
        "inter-token p50 ms | inter-token p99 ms | server ms/token | overhead µs/token | "
        "server loop lag first / last ms | tokens per message | prompt share cached | statuses | lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = list(data["levels"])
    if "hold" in data:
        rows.append({**data["hold"], "level": f"{data['hold']['level']} (held)"})
    for row in rows:
        lines.append(
            f"| {row['level']} | {row['tokens_per_s']} | {row['ttft_p50_ms']} | {row['ttft_p99_ms']} | "
            f"{row['server_ttft_p99_ms']} | {row['inter_token_p50_ms']} | {row['inter_token_p99_ms']} | "
            f"{row['server_ms_per_token']} | {row['overhead_us_per_token']} | {row.get('server_lag_first_ms', '-')} / "
            f"{row.get('server_lag_last_ms', '-')} | {row.get('tokens_per_message', '-')} | "
            f"{row.get('cached_prompt_share', '-')} | {row['codes']} | "
            f"{row['lost']} |"
        )
    for error in data.get("errors", []):
        lines.append(f"- **Error:** {error}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--model", default="synth")
    parser.add_argument("--levels", default="1,32,56,64,128,256", help="comma-separated concurrent stream counts")
    parser.add_argument("--hold", type=int, default=0, help="after the levels, hold this many streams at once")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument(
        "--shared-prefix-tokens",
        type=int,
        default=0,
        help="the first this many prompt ids are the same in every stream",
    )
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--warmup", action="store_true", help="an untimed round before each level")
    parser.add_argument("--channels", type=int, default=4, help="client connections per client process")
    parser.add_argument("--processes", type=int, default=1, help="client processes each round's streams are dealt to")
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline of each call, seconds")
    parser.add_argument("--wait-ready", type=float, default=0.0, help="first wait this long for health SERVING")
    parser.add_argument("--metrics", help="the daemon's metrics URL: report its stream delivery lag per level")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.levels = [int(level) for level in args.levels.split(",") if level]
    settings = {key: value for key, value in vars(args).items() if key != "out"}
    results: dict = {"started_at": datetime.now(UTC).isoformat(), "settings": settings, "levels": [], "errors": []}
    args.out.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        (args.out / "grpc-concurrency.json").write_text(json.dumps(results, indent=2))
        (args.out / "grpc-concurrency.md").write_text(markdown(results))

    try:
        asyncio.run(run(args, results, write))
    except Exception as error:
        results["errors"].append(f"{type(error).__name__}: {error}")
    results["finished_at"] = datetime.now(UTC).isoformat()
    write()
    print(markdown(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
