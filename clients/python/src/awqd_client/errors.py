"""The one exception the client raises, with gRPC's transport failures put in words an operator can act on."""

import grpc

# grpc-core's own details when no connection could be made at all.
_UNREACHABLE_PREFIXES = ("failed to connect to all addresses", "errors resolving", "DNS resolution failed")
# grpc-core's own details when an established connection broke mid-call.
_CONNECTION_LOST_MARKERS = ("Socket closed", "Connection reset", "Broken pipe", "GOAWAY")


class AwqdError(Exception):
    """A failed call to awqd: the gRPC status code and a one-line message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        self.code = code
        self.message = " ".join(message.split())  # one line, whatever the server sent
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def no_answer_message(target: str, timeout: float | None) -> str:
    return (
        f"no answer from awqd at {target} within {timeout:g} s; "
        "the daemon may be busy or not running, or this is not its gRPC port"
    )


def from_rpc_error(error: grpc.RpcError, target: str, timeout: float | None) -> AwqdError:
    """Translate a grpc.RpcError; statuses the daemon sent keep its own message."""
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]  # every RpcError raised by a call is a grpc.Call
    details: str = error.details() or ""  # type: ignore[attr-defined]
    if code is grpc.StatusCode.UNAVAILABLE and details.startswith(_UNREACHABLE_PREFIXES):
        return AwqdError(code, f"cannot reach awqd at {target} ({_last_reason(details)}); is the daemon running?")
    if code is grpc.StatusCode.UNAVAILABLE and any(marker in details for marker in _CONNECTION_LOST_MARKERS):
        return AwqdError(code, f"lost the connection to awqd at {target} ({details}); the daemon may have stopped")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED and details == "Deadline Exceeded":
        return AwqdError(code, no_answer_message(target, timeout))
    return AwqdError(code, details or f"awqd at {target} returned no message")


def _last_reason(details: str) -> str:
    """'... ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused' -> 'connection refused'."""
    reason = details.rstrip("]").rsplit(": ", 1)[-1].strip()
    return reason[:1].lower() + reason[1:]
