"""How long one large prompt stalls the other streams of a running daemon, through raw generated stubs.

One stream decodes --new-tokens tokens while, after --delay-s, another call sends a prompt of --prompt-bytes bytes
("hello " repeated). The stream's client inter-token gaps (p50, max) show whether the large prompt's handling held
up the server's loop; the large call's status and duration show how it was refused or served. First, short prompts
sent one at a time give the client time to first token of a request that has the daemon to itself, and the round
trip from an asyncio loop to a worker thread is timed in this process (what a prompt's tokenizing off the loop adds).

    python bench/prompt_stall.py --target 127.0.0.1:50051 --prompt-bytes 3600000 28000 600
"""

import argparse
import asyncio
import itertools
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients" / "python" / "src"))
from awqd_client.v1 import awqd_pb2 as pb
from awqd_client.v1 import awqd_pb2_grpc


def large_call(stub, model: str, size: int, delay_s: float, outcome: dict) -> None:
    time.sleep(delay_s)
    started = time.perf_counter()
    request = pb.GenerateRequest(model=model, prompt="hello " * (size // 6), max_new_tokens=2)
    try:
        list(stub.Generate(request, timeout=120))
        outcome["status"] = "OK"
    except grpc.RpcError as error:
        outcome["status"] = error.code().name
        outcome["details"] = (error.details() or "")[:200]
    outcome["seconds"] = round(time.perf_counter() - started, 3)


def measure(target: str, model: str, size: int, new_tokens: int, delay_s: float) -> dict:
    with grpc.insecure_channel(target) as streaming, grpc.insecure_channel(target) as other:
        outcome: dict = {"prompt_bytes": size}
        sender = threading.Thread(
            target=large_call, args=(awqd_pb2_grpc.AwqdServiceStub(other), model, size, delay_s, outcome)
        )
        sender.start()
        arrivals = [
            time.perf_counter()
            for _ in awqd_pb2_grpc.AwqdServiceStub(streaming).Generate(
                pb.GenerateRequest(model=model, prompt="p", max_new_tokens=new_tokens), timeout=120
            )
        ]
        sender.join()
    gaps = sorted((later - earlier) * 1000 for earlier, later in itertools.pairwise(arrivals))
    outcome.update(gap_p50_ms=round(gaps[len(gaps) // 2], 2), gap_max_ms=round(gaps[-1], 1), gaps=len(gaps))
    return outcome


def lone_first_tokens(target: str, model: str, requests: int) -> dict:
    """Client time to first token of short prompts sent one at a time: what the prompt's hop to a worker thread
    costs a request that has the daemon to itself."""
    with grpc.insecure_channel(target) as channel:
        stub = awqd_pb2_grpc.AwqdServiceStub(channel)
        times = []
        for index in range(requests):
            started = time.perf_counter()
            stream = stub.Generate(pb.GenerateRequest(model=model, prompt=f"a lone prompt {index}", max_new_tokens=2))
            next(stream)
            times.append((time.perf_counter() - started) * 1000)
            list(stream)
    times.sort()
    return {
        "lone_requests": requests,
        "ttft_p50_ms": round(times[len(times) // 2], 3),
        "ttft_p10_ms": round(times[len(times) // 10], 3),
    }


def thread_hop() -> dict:
    """The round trip a text prompt makes from the loop to a worker thread and back, with an idle pool of the
    daemon's default size, measured in this process."""

    async def hops() -> list[float]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=32) as pool:
            times = []
            for index in range(2200):
                started = time.perf_counter()
                await loop.run_in_executor(pool, int, index)
                times.append((time.perf_counter() - started) * 1e6)
        return sorted(times[200:])

    times = asyncio.run(hops())
    return {
        "thread_hop_p50_us": round(times[len(times) // 2], 1),
        "thread_hop_p90_us": round(times[9 * len(times) // 10], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--model", default="awqd-demo")
    parser.add_argument("--prompt-bytes", type=int, nargs="+", default=[3_600_000, 28_000, 600])
    parser.add_argument("--new-tokens", type=int, default=300)
    parser.add_argument("--delay-s", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lone-requests", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(thread_hop()), flush=True)
    print(json.dumps(lone_first_tokens(args.target, args.model, args.lone_requests)), flush=True)
    for size in args.prompt_bytes:
        for _ in range(args.rounds):
            print(json.dumps(measure(args.target, args.model, size, args.new_tokens, args.delay_s)), flush=True)


if __name__ == "__main__":
    main()
