"""A frontend process (--frontend-processes): it accepts calls on --listen's port and hands them to the engine.

Run by the engine process as `python -m awqd.server.frontend CONFIG_JSON`, never by hand. Several frontends share
the port (SO_REUSEPORT: the kernel deals each new connection to one of them), so the work of writing messages and
ending calls is spread over their loops. A frontend holds no model and imports no torch:
- Generate goes over the relay (awqd.server.frames): the engine runs it and sends its messages back, batched;
- every other call (Describe, model management, Benchmark, health, reflection) is forwarded as it is to the
  engine's gRPC server on a Unix socket, with its metadata and deadline, and its status comes back unchanged.
Authorization, the stream limit, status codes, logs and metrics all stay in the engine.

SIGTERM or SIGINT (from the engine as it drains, or with it from a terminal) drains it: no new calls, and the calls
in flight get the grace period. If the engine goes away, the frontend ends its calls with UNAVAILABLE and exits.
"""

import asyncio
import functools
import itertools
import json
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import structlog

from awqd.log import configure_logging
from awqd.server import SERVICE_NAME
from awqd.server.frames import PEER_KEY, Outbox, Record, read_batch
from awqd.server.tls import server_credentials

log = structlog.get_logger("awqd.frontend")

GENERATE = f"/{SERVICE_NAME}/Generate"


@dataclass(frozen=True)
class FrontendConfig:
    index: int
    listen: str  # --listen, with the port the engine chose when it asked for port 0
    relay_path: str
    engine_target: str  # "unix:<path>": the engine's gRPC server, for the calls that are forwarded
    grace_period_s: float
    max_message_bytes: int
    tls_cert: str | None
    tls_key: str | None
    tls_client_ca: str | None
    log_level: str
    log_format: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class Frontend(grpc.GenericRpcHandler):
    def __init__(self, outbox: Outbox, engine: grpc.aio.Channel):
        self.outbox = outbox
        self.engine = engine
        self.calls: dict[int, asyncio.Queue[Record]] = {}
        self._call_ids = itertools.count()

    def service(self, handler_call_details):
        method = handler_call_details.method
        if method == GENERATE:
            return grpc.unary_stream_rpc_method_handler(self.generate)
        # Bytes in, bytes out, whatever the method's shape: a stream-stream handler carries all four on the wire.
        return grpc.stream_stream_rpc_method_handler(functools.partial(self.forward, method))

    async def generate(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        call_id = next(self._call_ids)
        inbox: asyncio.Queue[Record] = asyncio.Queue()
        self.calls[call_id] = inbox
        metadata = tuple((key, value) for key, value in context.invocation_metadata() or ())
        self.outbox.send(("open", call_id, request, metadata, context.peer()))
        ended = False
        try:
            while True:
                record = await inbox.get()
                if record[0] == "message":
                    yield record[2]
                    continue
                ended = True
                _, _, code, details, trailing = record
                if code != "OK":
                    context.set_trailing_metadata(trailing)
                    await context.abort(grpc.StatusCode[code], details)
                return
        finally:
            del self.calls[call_id]
            if not ended:
                self.outbox.send(("cancel", call_id))

    async def forward(self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext):
        metadata = [(k, v) for k, v in context.invocation_metadata() or () if k != PEER_KEY]
        call = self.engine.stream_stream(method)(
            requests, metadata=(*metadata, (PEER_KEY, context.peer())), timeout=context.time_remaining()
        )
        try:
            async for response in call:
                yield response
            context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))
        except grpc.aio.AioRpcError as error:
            context.set_trailing_metadata(tuple(error.trailing_metadata() or ()))
            await context.abort(error.code(), error.details() or "")
        finally:
            call.cancel()  # a no-op once the call has ended; otherwise this call was cancelled

    def deliver(self, record: Record) -> None:
        inbox = self.calls.get(record[1])
        if inbox is not None:  # else the call was cancelled here and its cancel record is on its way
            inbox.put_nowait(record)

    def end_all(self, details: str) -> None:
        for call_id, inbox in list(self.calls.items()):
            inbox.put_nowait(("end", call_id, "UNAVAILABLE", details, ()))


async def _serve(config: FrontendConfig) -> int:
    reader, writer = await asyncio.open_unix_connection(config.relay_path)
    outbox = Outbox(writer)
    options = [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
    ]
    engine = grpc.aio.insecure_channel(config.engine_target, options=options)
    frontend = Frontend(outbox, engine)
    server = grpc.aio.server(options=[*options, ("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((frontend,))
    try:
        if config.tls_cert and config.tls_key:
            client_ca = Path(config.tls_client_ca) if config.tls_client_ca else None
            credentials = server_credentials(Path(config.tls_cert), Path(config.tls_key), client_ca)
            server.add_secure_port(config.listen, credentials)
        else:
            server.add_insecure_port(config.listen)
    except Exception as error:  # grpc raises RuntimeError; TLS files raise InvalidArgument. The engine reports it.
        outbox.send(("bind_failed", config.index, f"{type(error).__name__}: {error}"))
        await outbox.close()
        return 2
    await server.start()
    outbox.send(("listening", config.index))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    engine_gone = asyncio.Event()

    async def read_relay() -> None:
        while (batch := await read_batch(reader)) is not None:
            for record in batch:
                frontend.deliver(record)
        engine_gone.set()
        stop.set()

    reading = asyncio.create_task(read_relay())
    await stop.wait()
    if engine_gone.is_set():
        log.error("frontend_engine_gone", frontend=config.index)
        frontend.end_all("the engine process is gone")
        await server.stop(1.0)
        return 1
    await server.stop(config.grace_period_s)
    reading.cancel()
    await outbox.close()
    await engine.close()
    return 0


def main() -> int:
    config = FrontendConfig(**json.loads(sys.argv[1]))
    configure_logging(config.log_level, config.log_format)
    return asyncio.run(_serve(config))


if __name__ == "__main__":
    sys.exit(main())
