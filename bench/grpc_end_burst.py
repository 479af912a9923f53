"""What grpc.aio alone costs to end many server-streaming calls at once: `python3 bench/grpc_end_burst.py --out DIR`.

No awqd server code and no engine: a bare grpc.aio server whose Generate handler parks every call on one
asyncio.Event, then, once all --streams calls are parked, sets it. Each call then sends one GenerateResponse the
size of awqd's last message (a token and a Completion) and returns, so grpc sends its status. Measured on the
server, per round: how long after the event was set every call's last message had been sent (all_ended_ms; the
statuses follow), that per call, and the mean and last time a handler got the loop back.

This is the floor under issue 18's streaming overhead at 256 streams: every stream of an admission wave finishes in
the same decode step, and one loop ends their calls one after another, so a stream waits on average for half the
wave's serialized work. Clients run in --client-processes processes, dealt the streams evenly, each on one loop.
Writes DIR/grpc-end-burst.json.
"""

import argparse
import asyncio
import json
import multiprocessing
import platform
import statistics
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients" / "python" / "src"))

from awqd_client.v1 import awqd_pb2 as pb
from awqd_client.v1 import awqd_pb2_grpc

LAST_MESSAGE = pb.GenerateResponse(
    text=" x",
    token_ids=[1234],
    completion=pb.Completion(
        finish_reason=pb.FINISH_REASON_LENGTH,
        usage=pb.Usage(prompt_tokens=128, completion_tokens=128),
        timings=pb.GenerationTimings(time_to_first_token_ms=10.5, ms_per_output_token=27.1, total_ms=3452.0),
        kernels=[pb.KernelUse(phase="decode", batch_tokens=256, kernel="skinny", steps=127)],
    ),
)


class ParkedStreams(awqd_pb2_grpc.AwqdServiceServicer):
    def __init__(self):
        self.release = asyncio.Event()
        self.parked = 0
        self.resumed: list[float] = []
        self.ended: list[float] = []

    def reset(self) -> None:
        self.release, self.parked = asyncio.Event(), 0
        self.resumed.clear()
        self.ended.clear()

    async def Generate(self, request, context):
        self.parked += 1
        await self.release.wait()
        self.resumed.append(time.perf_counter())
        yield LAST_MESSAGE
        self.ended.append(time.perf_counter())


def run_client(target: str, streams: int, rounds: int, start: "multiprocessing.Queue[int]") -> None:
    async def main() -> None:
        channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
        stubs = [awqd_pb2_grpc.AwqdServiceStub(channel) for channel in channels]

        async def one(index: int) -> None:
            async for _ in stubs[index % len(stubs)].Generate(pb.GenerateRequest(model="m", prompt="p")):
                pass

        for _ in range(rounds):
            await asyncio.get_running_loop().run_in_executor(None, start.get)
            await asyncio.gather(*(one(index) for index in range(streams)))

    asyncio.run(main())


async def measure(streams: int, rounds: int, client_processes: int) -> list[dict]:
    server = grpc.aio.server()
    servicer = ParkedStreams()
    awqd_pb2_grpc.add_AwqdServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    context = multiprocessing.get_context("spawn")
    start: multiprocessing.Queue[int] = context.Queue()
    share = [streams // client_processes + (i < streams % client_processes) for i in range(client_processes)]
    clients = [context.Process(target=run_client, args=(f"127.0.0.1:{port}", n, rounds, start)) for n in share if n]
    for client in clients:
        client.start()
    results = []
    try:
        for _ in range(rounds):
            servicer.reset()
            for _ in clients:
                start.put(1)
            while servicer.parked < streams:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.2)  # the clients' loops go quiet
            released = time.perf_counter()
            servicer.release.set()
            while len(servicer.ended) < streams:
                await asyncio.sleep(0)
            span = max(servicer.ended) - released
            lags = [t - released for t in servicer.resumed]
            results.append(
                {
                    "streams": streams,
                    "all_ended_ms": round(span * 1000, 3),
                    "us_per_call": round(span / streams * 1e6, 1),
                    "mean_resume_ms": round(statistics.fmean(lags) * 1000, 3),
                    "last_resume_ms": round(max(lags) * 1000, 3),
                }
            )
            print(json.dumps(results[-1]), flush=True)
            await asyncio.sleep(0.2)
    finally:
        for client in clients:
            client.join(timeout=30)
        await server.stop(0)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="64,256", help="comma-separated calls ended at once")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for streams in (int(level) for level in args.streams.split(",")):
        rows += asyncio.run(measure(streams, args.rounds, args.client_processes))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "host": platform.processor() or platform.machine(),
        "cpus": multiprocessing.cpu_count(),
        "grpc": grpc.__version__,
        "python": platform.python_version(),
        "rounds": rows,
    }
    (args.out / "grpc-end-burst.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
