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
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()
sys.path[:0] = [str(args.code_root), str(args.code_root / "clients" / "python" / "src")]

from awqd.engine.request import GenerateParams  # noqa: E402
from awqd.engine.sequence import Finished, FinishReason, Job, TokenDelta  # noqa: E402
from awqd.server import messages  # noqa: E402
from awqd.server.events import EventBridge  # noqa: E402
from awqd.server.frames import Outbox  # noqa: E402

DELTA = TokenDelta(" word", (1234,))
PARAMS = GenerateParams("bench", "", (1,), 128, 0.0, None, 0, None, (), "")


def completion(steps: int) -> Finished:
    return Finished(FinishReason.LENGTH, 128, steps, 10.5, 27.1, 3452.0, 0.2, ())


async def measure(form: str, streams: int, steps: int) -> list[float]:
    loop = asyncio.get_running_loop()
    bridge = EventBridge(loop)
    engine_end, loop_end = socket.socketpair()
    drain = threading.Thread(target=lambda: [None for _ in iter(lambda: engine_end.recv(1 << 20), b"")], daemon=True)
    drain.start()
    _, writer = await asyncio.open_connection(sock=loop_end)
    outbox = Outbox(writer)
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


def main() -> None:
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"code_root": str(args.code_root), "machine": platform.processor() or platform.machine(), "rows": rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
