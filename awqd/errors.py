"""Domain errors. Each carries the gRPC status it maps to; the server's interceptor does the mapping."""

import grpc


class AwqdError(Exception):
    """Base of every error awqd reports to a caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(AwqdError):
    """A request field is malformed or out of range."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(AwqdError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AwqdError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(AwqdError):
    """The call carries no credentials the daemon accepts."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AwqdError):
    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(AwqdError):
    """The request is valid but the node's state or hardware does not allow it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(AwqdError):
    """Over a limit; retry_after_ms, when set, is sent as the `retry-after-ms` trailing metadata."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_ms: int | None = None):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Unavailable(AwqdError):
    """Retrying later may succeed: a model still loading, a daemon shutting down. retry_after_ms as for
    ResourceExhausted."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after_ms: int | None = None):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Unimplemented(AwqdError):
    code = grpc.StatusCode.UNIMPLEMENTED


class WarmupFailed(AwqdError):
    """A loaded model's warm-up failed (e.g. out of memory capturing a decode graph): it cannot serve here."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, step: str):
        super().__init__(f"warm-up failed: {step}")


class CheckpointError(AwqdError):
    """A checkpoint on disk is missing, corrupt or unsupported; the message names the file or field."""

    code = grpc.StatusCode.FAILED_PRECONDITION
