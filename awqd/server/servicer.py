"""awq.v1.AwqdService: translates requests into daemon calls and results into messages, nothing more.

It runs on the server's asyncio loop. Generate streams the engine's events through the EventBridge (pulled by a
call here, pushed for one a frontend relays); daemon calls that can block (loading a model, unloading one, reading
device memory, a benchmark's measurements, a prompt's tokenizing) run on the bounded `blocking` executor, so the
loop never waits on them.
"""

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial
from typing import TypeVar

from awqd.daemon import Daemon
from awqd.engine.sequence import Job
from awqd.hosting.manager import HostedModel
from awqd.server import messages
from awqd.server.events import EventBridge
from awqd_client.v1 import awqd_pb2 as pb
from awqd_client.v1 import awqd_pb2_grpc

T = TypeVar("T")

INLINE_PROMPT_IDS = 4096  # checking this many token ids takes about as long as the hop to a thread (0.2 ms)


class AwqdServicer(awqd_pb2_grpc.AwqdServiceServicer):
    def __init__(self, daemon: Daemon, events: EventBridge, blocking: Executor):
        self.daemon = daemon
        self.events = events
        self.blocking = blocking

    async def _off_loop(self, call: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.blocking, call, *args)

    async def Describe(self, request: pb.DescribeRequest, context) -> pb.DescribeResponse:
        return await self._off_loop(lambda: messages.describe(self.daemon.node_state(), self.daemon.hosted_models()))

    async def Generate(self, request: pb.GenerateRequest, context):
        async for message in self.events.stream(await self._start(request, context.add_done_callback)):
            yield messages.generate_response(message.delta, message.finished)

    async def generate_to(
        self,
        request: pb.GenerateRequest,
        on_call_end: Callable[[Callable[[object], None]], None],
        send: Callable[[pb.GenerateResponse], None],
    ) -> None:
        """Generate for a call a frontend process relays (awqd.server.relay): each message goes to send, on the
        loop, as the engine hands it over; returns after the last, or raises the error that ended the job."""
        job = await self._start(request, on_call_end)
        await self.events.deliver(
            job, lambda message: send(messages.generate_response(message.delta, message.finished))
        )

    async def _start(self, request: pb.GenerateRequest, on_call_end: Callable[[Callable[[object], None]], None]) -> Job:
        received_at = time.perf_counter()  # time to first token counts the tokenizing, and the wait for a thread
        prepare = partial(self._prepare, request, received_at)
        # Text is tokenized off the loop: on it, a long prompt would stall every stream for as long as that takes.
        # A few token ids are checked on it, which costs less than the hop.
        inline = not request.prompt and len(request.prompt_token_ids) <= INLINE_PROMPT_IDS
        hosted, job = prepare() if inline else await self._off_loop(prepare)
        # Submitted on the loop, with nothing awaited since the job was made, so that a call cancelled meanwhile
        # never queues a job nobody would cancel.
        self.daemon.submit(hosted, job)
        on_call_end(lambda _: job.cancelled.set())  # the client cancelled or its deadline passed
        return job

    def _prepare(self, request: pb.GenerateRequest, received_at: float) -> tuple[HostedModel, Job]:
        return self.daemon.prepare(messages.generate_params(request), received_at)

    async def Benchmark(self, request: pb.BenchmarkRequest, context):
        stop = threading.Event()
        context.add_done_callback(lambda _: stop.set())
        time_remaining = deadline_clock(context.time_remaining())
        params = messages.benchmark_params(request)
        events = await self._off_loop(self.daemon.benchmark, params, stop, time_remaining)
        while (event := await self._off_loop(next, events, None)) is not None:
            yield messages.benchmark_response(event)

    async def LoadModel(self, request: pb.LoadModelRequest, context) -> pb.LoadModelResponse:
        hosted = await self._off_loop(
            self.daemon.load_model, request.name, request.path, request.device, request.kernel
        )
        return pb.LoadModelResponse(model=messages.model(hosted))

    async def UnloadModel(self, request: pb.UnloadModelRequest, context) -> pb.UnloadModelResponse:
        await self._off_loop(self.daemon.unload_model, request.name)  # waits for the model's requests to end
        return pb.UnloadModelResponse()

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[messages.model(m) for m in self.daemon.hosted_models()])


def deadline_clock(remaining_s: float | None) -> Callable[[], float | None]:
    """Seconds left until the call's deadline (None: no deadline), readable from any thread."""
    if remaining_s is None:
        return lambda: None
    ends_at = time.monotonic() + remaining_s
    return lambda: ends_at - time.monotonic()
