"""Domain errors. Each carries the status it maps to, by its gRPC name; the server's interceptor does the mapping,
so nothing below the server depends on grpc."""

from enum import Enum


class Status(Enum):
    """The gRPC status codes awqd's errors use, named as grpc.StatusCode names them."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class AwqdError(Exception):
    """Base of every error awqd reports to a caller."""

    code = Status.INTERNAL


class InvalidArgument(AwqdError):
    """A request field is malformed or out of range."""

    code = Status.INVALID_ARGUMENT

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(AwqdError):
    code = Status.NOT_FOUND


class AlreadyExists(AwqdError):
    code = Status.ALREADY_EXISTS


class Unauthenticated(AwqdError):
    """The call carries no credentials the daemon accepts."""

    code = Status.UNAUTHENTICATED


class PermissionDenied(AwqdError):
    code = Status.PERMISSION_DENIED


class FailedPrecondition(AwqdError):
    """The request is valid but the node's state or hardware does not allow it."""

    code = Status.FAILED_PRECONDITION


class RetryLater(AwqdError):
    """An error a caller may retry; retry_after_ms, when set, is sent as the `retry-after-ms` trailing metadata."""

    def __init__(self, message: str, retry_after_ms: int | None = None):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class ResourceExhausted(RetryLater):
    """Over a limit."""

    code = Status.RESOURCE_EXHAUSTED


class Unavailable(RetryLater):
    """Retrying later may succeed: a model still loading, a daemon shutting down."""

    code = Status.UNAVAILABLE


class Unimplemented(AwqdError):
    code = Status.UNIMPLEMENTED


class WarmupFailed(AwqdError):
    """A loaded model's warm-up failed (e.g. out of memory capturing a decode graph): it cannot serve here."""

    code = Status.FAILED_PRECONDITION

    def __init__(self, step: str):
        super().__init__(f"warm-up failed: {step}")


class CheckpointError(AwqdError):
    """A checkpoint on disk is missing, corrupt or unsupported; the message names the file or field."""

    code = Status.FAILED_PRECONDITION
