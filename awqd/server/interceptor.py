"""The one place where exceptions become gRPC statuses, and where every RPC gets its log line and its count.

Authorization and the stream limit run inside the same wrapper, so a refused call is logged and counted with
its status code like any other.
"""

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import grpc
import structlog

from awqd.errors import AwqdError, InvalidArgument, RetryLater
from awqd.metrics import RPC_REQUESTS
from awqd.server.auth import Authorizer
from awqd.server.frames import PEER_KEY
from awqd.server.limits import StreamLimit

log = structlog.get_logger("awqd.rpc")

MAX_DETAILS_BYTES = 2048  # at most 3x that once percent-encoded: under grpc's 8 KiB default metadata limit


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Maps AwqdError to its status code, anything else to INTERNAL, and logs one line per RPC."""

    def __init__(
        self, authorizer: Authorizer | None = None, streams: StreamLimit | None = None, frontends: bool = False
    ):
        self.authorizer = authorizer or Authorizer()
        self.streams = streams
        self.frontends = frontends  # frontend processes forward calls here: believe the peer they name

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        parse = lenient(handler.request_deserializer)
        if handler.unary_unary:
            behavior = handler.unary_unary
            return handler._replace(request_deserializer=parse, unary_unary=self._wrap_call(method, behavior))
        if handler.unary_stream:
            # A stream is an async generator (awq.v1's), or a coroutine that writes its messages (health's Watch).
            behavior = handler.unary_stream
            wrap = self._wrap_stream if inspect.isasyncgenfunction(behavior) else self._wrap_call
            return handler._replace(request_deserializer=parse, unary_stream=wrap(method, behavior))
        return handler

    def _peer(self, context: grpc.aio.ServicerContext) -> str:
        """The client's address; for a call a frontend process forwarded over the engine's Unix socket, the address
        the frontend saw. Only that socket's peers are believed, so a TCP client cannot pose as another."""
        peer = context.peer()
        if self.frontends and peer.startswith("unix:"):
            for key, value in context.invocation_metadata() or ():
                if key == PEER_KEY and isinstance(value, str):
                    return value
        return peer

    def _wrap_call(self, method: str, behavior: Callable) -> Callable:
        async def wrapped(request, context: grpc.aio.ServicerContext):
            metadata = context.invocation_metadata()
            with (
                rpc_scope(method, self._peer(context), context) as call,  # the peer read while the call is alive
                admitted(method, metadata, self.authorizer, None),
            ):
                return await behavior(parsed(request), context)
            await _abort(context, call)  # reached only when the call failed: rpc_scope kept its status

        return wrapped

    def _wrap_stream(self, method: str, behavior: Callable) -> Callable:
        async def wrapped(request, context: grpc.aio.ServicerContext) -> AsyncIterator:
            metadata = context.invocation_metadata()
            with (
                rpc_scope(method, self._peer(context), context) as call,  # the peer read while the call is alive
                admitted(method, metadata, self.authorizer, self.streams),
            ):
                async for response in behavior(parsed(request), context):
                    yield response
            if call.failed:
                await _abort(context, call)

        return wrapped


@dataclass
class Malformed:
    """A request whose bytes did not parse. grpc would answer UNKNOWN before the interceptor saw the call; the
    wrapper answers INVALID_ARGUMENT instead, after authorization, and the call is logged and counted like any
    other."""

    error: Exception


def lenient(deserialize: Callable | None) -> Callable | None:
    if deserialize is None:  # a generic handler takes the bytes as they came
        return None

    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception as error:  # protobuf's DecodeError, or another error on some inputs
            return Malformed(error)

    return parse


def parsed(request):
    if isinstance(request, Malformed):
        raise InvalidArgument("request", f"cannot be parsed: {request.error}")
    return request


@dataclass
class Call:
    """How an RPC ended: its status code; for a call that failed, the details and trailing metadata to send."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    failed: bool = False  # an exception ended it, and its status is still to be sent
    details: str = ""
    trailing: tuple[tuple[str, str], ...] = ()


@contextmanager
def rpc_scope(method: str, peer: str, context: grpc.aio.ServicerContext | None = None, **log_fields) -> Iterator[Call]:
    """One RPC's end as every call gets it, relayed Generate calls included: the status an exception maps to (kept
    in the Call, not raised: the caller sends it its way), and the `rpc` log line and count. Cancellation passes
    through, counted as CANCELLED. With the call's context, a call the handler aborted keeps the handler's code, and
    a call that ends OK after its client went away counts as CANCELLED."""
    started, call = time.perf_counter(), Call()
    try:
        yield call
    except (asyncio.CancelledError, GeneratorExit):
        # The client cancelled or its deadline passed: grpc cancels the call's task, or closes the generator.
        call.code = grpc.StatusCode.CANCELLED
        raise
    except grpc.aio.AbortError:
        call.code = context.code() or grpc.StatusCode.UNKNOWN  # the handler ended the call itself
        raise
    except Exception as error:
        call.code, call.details = status_for(method, error)
        call.failed, call.trailing = True, retry_hint(error)
    finally:
        if call.code is grpc.StatusCode.OK and context is not None and context.cancelled():
            call.code = grpc.StatusCode.CANCELLED
        log_rpc(method, call.code, started, peer, **log_fields)


@contextmanager
def admitted(method: str, metadata, authorizer: Authorizer, streams: StreamLimit | None) -> Iterator[None]:
    """The call's authorization, then its stream slot, held until the call ends. Entered inside rpc_scope, so that a
    refused call is logged and counted with its status code like any other."""
    authorizer.check(method, metadata)
    with streams.slot(method) if streams else nullcontext():
        yield


async def _abort(context: grpc.aio.ServicerContext, call: Call):
    if call.trailing:
        context.set_trailing_metadata(call.trailing)
    await context.abort(call.code, call.details)


def retry_hint(error: Exception) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of a retryable error: RetryLater.retry_after_ms as `retry-after-ms`."""
    if isinstance(error, RetryLater) and error.retry_after_ms is not None:
        return (("retry-after-ms", str(error.retry_after_ms)),)
    return ()


def status_for(method: str, error: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, AwqdError):
        return grpc.StatusCode[error.code.name], bounded(str(error))
    log.error("rpc_failed", method=method, exc_info=error)
    return grpc.StatusCode.INTERNAL, bounded(f"internal error: {type(error).__name__}: {error}")


def bounded(details: str) -> str:
    """Details cut to MAX_DETAILS_BYTES. They travel percent-encoded in a trailer, and a client refuses a trailer
    past its metadata limit (8 KiB by default in grpc) with RESOURCE_EXHAUSTED, which would hide the real status
    of a request that echoes a long field back."""
    encoded = details.encode()
    if len(encoded) <= MAX_DETAILS_BYTES:
        return details
    kept = encoded[:MAX_DETAILS_BYTES].decode(errors="ignore")
    return f"{kept}... ({len(encoded) - len(kept.encode())} more bytes)"


def log_rpc(method: str, code: grpc.StatusCode, started: float, peer: str, **fields) -> None:
    RPC_REQUESTS.labels(method, code.name).inc()
    log.info(
        "rpc",
        method=method,
        code=code.name,
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
        peer=peer,
        **fields,
    )
