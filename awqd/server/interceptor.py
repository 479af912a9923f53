"""The one place where exceptions become gRPC statuses, and where every RPC gets its log line and its count.

Authorization and the stream limit run inside the same wrapper, so a refused call is logged and counted with
its status code like any other.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext

import grpc
import structlog

from awqd.errors import AwqdError
from awqd.metrics import RPC_REQUESTS
from awqd.server.auth import Authorizer
from awqd.server.limits import StreamLimit

log = structlog.get_logger("awqd.rpc")


class StatusInterceptor(grpc.ServerInterceptor):
    """Maps AwqdError to its status code, anything else to INTERNAL, and logs one line per RPC."""

    def __init__(self, authorizer: Authorizer | None = None, streams: StreamLimit | None = None):
        self.authorizer = authorizer or Authorizer()
        self.streams = streams

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return handler._replace(unary_unary=self._wrap_unary(method, handler.unary_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._wrap_stream(method, handler.unary_stream))
        return handler

    def _wrap_unary(self, method: str, behavior: Callable) -> Callable:
        def wrapped(request, context: grpc.ServicerContext):
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                self.authorizer.check(method, context.invocation_metadata())
                return behavior(request, context)
            except Exception as error:
                code, message = _status_for(method, error)
                _abort(context, code, message, error)
            finally:
                _log_rpc(method, code, started, context)

        return wrapped

    def _wrap_stream(self, method: str, behavior: Callable) -> Callable:
        def wrapped(request, context: grpc.ServicerContext) -> Iterator:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                self.authorizer.check(method, context.invocation_metadata())
                with self.streams.slot(method) if self.streams else nullcontext():
                    yield from behavior(request, context)
            except GeneratorExit:
                # grpc closes the generator when the client has cancelled or the deadline has passed.
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                code, message = _status_for(method, error)
                _abort(context, code, message, error)
            finally:
                if code is grpc.StatusCode.OK and not context.is_active():
                    code = grpc.StatusCode.CANCELLED
                _log_rpc(method, code, started, context)

        return wrapped


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str, error: Exception):
    """Ends the call; a retry hint (ResourceExhausted.retry_after_ms) travels as `retry-after-ms` trailing metadata."""
    retry_after_ms = getattr(error, "retry_after_ms", None)
    if retry_after_ms is not None:
        context.set_trailing_metadata((("retry-after-ms", str(retry_after_ms)),))
    context.abort(code, message)


def _status_for(method: str, error: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, AwqdError):
        return error.code, str(error)
    log.error("rpc_failed", method=method, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}"


def _log_rpc(method: str, code: grpc.StatusCode, started: float, context: grpc.ServicerContext) -> None:
    RPC_REQUESTS.labels(method, code.name).inc()
    log.info(
        "rpc",
        method=method,
        code=code.name,
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
        peer=context.peer(),
    )
