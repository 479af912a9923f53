"""The server loop's cost per stream and token, from the engine's hand-over to the relay's frame:
`python3 bench/bridge_cost.py [--code-root DIR] --out FILE`.

No model and no gRPC client: --streams jobs, and a thread that plays the engine, handing every job one token per
step (as a decode step does) and then, at the last step, each job's completion with its last token. On the loop,
each message is built (awqd.server.messages), serialized and appended to a frontend relay's Outbox, whose socket a
thread drains, as the engine process does for relayed Generate calls. Per step it times the span from the first
hand-over to the moment every stream's message is in the outbox: the loop's work for that step, which a stream's
last message waits behind.

Two forms of the bridge (awqd.server.events):
- pull: a task per stream reads EventBridge.stream and appends what it reads (the relay's form before push);
- push: EventBridge.deliver calls the send in the wake-up itself (absent from code before it: skipped).

Then the end of a wave through the relay itself (awqd.server.relay.Relay._generate, with the servicer, the
interceptor's rpc_scope and the stream limit; the jobs come from a stand-in for Daemon.generate). Every stream
finishes in one decode step, but its completions reach the loop in two wake-ups, as when the engine thread's
hand-over is cut by a switch of the interpreter lock: the first half, which the loop runs, then the second half.
Timed: from the second hand-over to the last of its messages in the outbox (wave_second_half_ms), which waits
behind whatever the loop runs first, and from then to every call's end (wave_ends_ms).

--code-root runs another checkout's awqd (a `git worktree` of an older commit), so that before and after are
measured by one script.
"""

import argparse
import asyncio
import json
import platform
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--code-root", type=Path, default=Path(__file__).resolve().parent.parent)
parser.add_argument("--streams", type=int, nargs="+", default=[64, 256, 1024])
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--waves", type=int, default=9, help="timed wave ends per stream count")
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()
sys.path[:0] = [str(args.code_root), str(args.code_root / "clients" / "python" / "src")]

from awqd.engine.request import GenerateParams  # noqa: E402
from awqd.engine.sequence import Finished, FinishReason, Job, TokenDelta  # noqa: E402
from awqd.log import configure_logging  # noqa: E402
from awqd.server import messages  # noqa: E402
from awqd.server.events import EventBridge  # noqa: E402
from awqd.server.frames import Outbox  # noqa: E402
from awqd.server.relay import Relay  # noqa: E402
from awqd.server.servicer import AwqdServicer  # noqa: E402
from awqd_client.v1 import awqd_pb2 as pb  # noqa: E402

DELTA = TokenDelta(" word", (1234,))
PARAMS = GenerateParams("bench", "", (1,), 128, 0.0, None, 0, None, (), "")


def completion(steps: int) -> Finished:
    return Finished(FinishReason.LENGTH, 128, steps, 10.5, 27.1, 3452.0, 0.2, ())


class JobMaker:
    """Daemon.generate's part that the relay needs: a Job for each request, kept to play the engine with."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def generate(self, params: GenerateParams) -> Job:
        self.jobs.append(Job(params, [1], None))
        return self.jobs[-1]


async def drained_outbox() -> tuple[Outbox, socket.socket]:
    """An Outbox on one end of a socket pair whose other end a thread reads and drops."""
    engine_end, loop_end = socket.socketpair()
    drain = threading.Thread(target=lambda: [None for _ in iter(lambda: engine_end.recv(1 << 20), b"")], daemon=True)
    drain.start()
    _, writer = await asyncio.open_connection(sock=loop_end)
    return Outbox(writer), engine_end


async def measure(form: str, streams: int, steps: int) -> list[float]:
    loop = asyncio.get_running_loop()
    bridge = EventBridge(loop)
    outbox, engine_end = await drained_outbox()
    jobs = [Job(PARAMS, [1], None) for _ in range(streams)]
    counted = 0
    all_in = asyncio.Event()

    def send(call_id: int, message) -> None:
        nonlocal counted
        response = messages.generate_response(message.delta, message.finished)
        outbox.send(("message", call_id, response.SerializeToString()))
        counted += 1
        if counted == streams:
            all_in.set()

    async def pull(call_id: int, job: Job) -> None:
        async for message in bridge.stream(job):
            send(call_id, message)

    if form == "pull":
        readers = [asyncio.create_task(pull(call_id, job)) for call_id, job in enumerate(jobs)]
    else:
        readers = [bridge.deliver(job, lambda m, call_id=call_id: send(call_id, m)) for call_id, job in enumerate(jobs)]
    await asyncio.sleep(0)
    spans = []
    for step in range(steps):
        counted = 0
        all_in.clear()
        last = step == steps - 1

        def engine_step(last: bool = last) -> None:
            for job in jobs:
                job.events.put(DELTA)
                if last:
                    job.events.put(completion(steps))

        started = time.perf_counter()
        thread = threading.Thread(target=engine_step)
        thread.start()
        thread.join()
        await all_in.wait()
        spans.append(time.perf_counter() - started)
    await asyncio.gather(*readers)
    await outbox.close()
    engine_end.close()
    return spans


async def wave_end(streams: int) -> tuple[float, float]:
    from awqd.server.auth import Authorizer
    from awqd.server.limits import StreamLimit

    maker = JobMaker()
    relay = Relay(AwqdServicer(maker, EventBridge(asyncio.get_running_loop()), None), Authorizer(), StreamLimit(4096))
    outbox, engine_end = await drained_outbox()
    last_sent: dict[int, float] = {}
    send = outbox.send

    def stamped(record) -> None:
        if record[0] == "message":
            last_sent[record[1]] = time.perf_counter()
        send(record)

    outbox.send = stamped
    request = pb.GenerateRequest(model="bench", prompt_token_ids=[1], max_new_tokens=128).SerializeToString()
    calls = [asyncio.create_task(relay._generate(outbox, i, request, (), "ipv4:bench", 0)) for i in range(streams)]
    while len(maker.jobs) < streams:
        await asyncio.sleep(0.001)

    def hand_over(jobs: list[Job]) -> None:
        for job in jobs:
            job.events.put(DELTA)
            job.events.put(completion(128))

    half = streams // 2
    hand_over(maker.jobs[:half])
    await asyncio.sleep(0)  # the loop runs the first wake-up
    second = time.perf_counter()
    thread = threading.Thread(target=hand_over, args=(maker.jobs[half:],))
    thread.start()
    thread.join()
    await asyncio.gather(*calls)
    ended = time.perf_counter()
    second_half_sent = max(last_sent[i] for i in range(half, streams))
    await outbox.close()
    engine_end.close()
    return (second_half_sent - second) * 1e3, (ended - second_half_sent) * 1e3


def main() -> None:
    configure_logging("info", "json")  # the relay's `rpc` lines go to stderr, as the daemon's do
    has_push = hasattr(EventBridge, "deliver")
    rows = []
    for streams in args.streams:
        for form in ("pull", "push"):
            if form == "push" and not has_push:
                continue
            spans = asyncio.run(measure(form, streams, args.steps))
            body = spans[1:-1]  # the first step wakes every reader for the first time; the last carries completions
            row = {
                "form": form,
                "streams": streams,
                "step_ms_median": round(statistics.median(body) * 1e3, 3),
                "step_ms_p90": round(statistics.quantiles(body, n=10)[-1] * 1e3, 3),
                "us_per_stream": round(statistics.median(body) / streams * 1e6, 2),
                "last_step_ms": round(spans[-1] * 1e3, 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    waves = []
    for streams in args.streams:
        asyncio.run(wave_end(streams))  # untimed: the first pass imports and warms what the calls use
        timed = [asyncio.run(wave_end(streams)) for _ in range(args.waves)]
        wave = {
            "streams": streams,
            "wave_second_half_ms_median": round(statistics.median(t for t, _ in timed), 3),
            "wave_second_half_ms": [round(t, 3) for t, _ in timed],
            "wave_ends_ms_median": round(statistics.median(e for _, e in timed), 3),
        }
        waves.append(wave)
        print(json.dumps(wave), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "code_root": str(args.code_root),
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
        "wave_end": waves,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
