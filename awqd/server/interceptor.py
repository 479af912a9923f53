"""The one place where exceptions become gRPC statuses, and where every RPC gets its log line and its count.

Authorization and the stream limit run inside the same wrapper, so a refused call is logged and counted with
its status code like any other.
"""

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable
from contextlib import nullcontext

import grpc
import structlog

from awqd.errors import AwqdError, RetryLater
from awqd.metrics import RPC_REQUESTS
from awqd.server.auth import Authorizer
from awqd.server.frames import PEER_KEY
from awqd.server.limits import StreamLimit

log = structlog.get_logger("awqd.rpc")


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
        if handler.unary_unary:
            return handler._replace(unary_unary=self._wrap_call(method, handler.unary_unary))
        if handler.unary_stream:
            # A stream is an async generator (awq.v1's), or a coroutine that writes its messages (health's Watch).
            behavior = handler.unary_stream
            wrap = self._wrap_stream if inspect.isasyncgenfunction(behavior) else self._wrap_call
            return handler._replace(unary_stream=wrap(method, behavior))
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
            started, peer = time.perf_counter(), self._peer(context)  # read while the call is alive (below)
            code = grpc.StatusCode.OK
            try:
                self.authorizer.check(method, context.invocation_metadata())
                return await behavior(request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN  # the handler ended the call itself
                raise
            except Exception as error:
                code, message = status_for(method, error)
                await _abort(context, code, message, error)
            finally:
                log_rpc(method, code, started, peer)

        return wrapped

    def _wrap_stream(self, method: str, behavior: Callable) -> Callable:
        async def wrapped(request, context: grpc.aio.ServicerContext) -> AsyncIterator:
            started, peer = time.perf_counter(), self._peer(context)  # read while the call is alive (below)
            code = grpc.StatusCode.OK
            try:
                self.authorizer.check(method, context.invocation_metadata())
                with self.streams.slot(method) if self.streams else nullcontext():
                    async for response in behavior(request, context):
                        yield response
            except (asyncio.CancelledError, GeneratorExit):
                # The client cancelled or its deadline passed: grpc cancels the call's task, or closes the generator.
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                code, message = status_for(method, error)
                await _abort(context, code, message, error)
            finally:
                if code is grpc.StatusCode.OK and context.cancelled():
                    code = grpc.StatusCode.CANCELLED
                log_rpc(method, code, started, peer)

        return wrapped


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, error: Exception):
    if hint := retry_hint(error):
        context.set_trailing_metadata(hint)
    await context.abort(code, message)


def retry_hint(error: Exception) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of a retryable error: RetryLater.retry_after_ms as `retry-after-ms`."""
    if isinstance(error, RetryLater) and error.retry_after_ms is not None:
        return (("retry-after-ms", str(error.retry_after_ms)),)
    return ()


def status_for(method: str, error: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, AwqdError):
        return grpc.StatusCode[error.code.name], str(error)
    log.error("rpc_failed", method=method, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}"


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
