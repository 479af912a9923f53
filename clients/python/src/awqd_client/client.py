"""AwqdClient: a typed wrapper over the generated AwqdService stub that raises AwqdError for every failure."""

from collections.abc import Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from awqd_client.errors import from_rpc_error
from awqd_client.v1 import awqd_pb2, awqd_pb2_grpc

# Describe and benchmark reports stay far below this; the default 4 MiB would cap a node with many GPUs and models.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
)

Response = TypeVar("Response")


class AwqdClient:
    """One channel to one awqd daemon.

    `timeout` is the deadline of the quick calls (describe, list_models, unload_model, health) and bounds how
    long the long calls wait to connect; load_model, generate and benchmark then run without a deadline
    unless their own `timeout` is given, since loading a model or generating may take minutes.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 10.0,
        metadata: Sequence[tuple[str, str]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        server_name: str | None = None,
    ):
        """`credentials` (e.g. grpc.ssl_channel_credentials()) makes the channel TLS; `token` is sent as
        `authorization: Bearer <token>` on every call; `server_name` overrides the name the server's certificate
        must carry (for addresses the certificate does not list)."""
        self.target = target
        self.timeout = timeout
        self.metadata = (*metadata, ("authorization", f"Bearer {token}")) if token else tuple(metadata)
        options = _CHANNEL_OPTIONS
        if server_name:
            options = (*options, ("grpc.ssl_target_name_override", server_name))
        self._channel = (
            grpc.secure_channel(target, credentials, options=options)
            if credentials
            else grpc.insecure_channel(target, options=options)
        )
        self._stub = awqd_pb2_grpc.AwqdServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> "AwqdClient":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def describe(self) -> awqd_pb2.DescribeResponse:
        return self._unary(self._stub.Describe, awqd_pb2.DescribeRequest(), self.timeout)

    def list_models(self) -> list[awqd_pb2.Model]:
        return list(self._unary(self._stub.ListModels, awqd_pb2.ListModelsRequest(), self.timeout).models)

    def load_model(
        self, name: str, path: str, device: str = "", kernel: str = "", *, timeout: float | None = None
    ) -> awqd_pb2.Model:
        """Load a checkpoint directory (inside the daemon's model root) and return the READY model."""
        request = awqd_pb2.LoadModelRequest(name=name, path=path, device=device, kernel=kernel)
        self._await_connection()
        return self._unary(self._stub.LoadModel, request, timeout).model

    def unload_model(self, name: str) -> None:
        self._unary(self._stub.UnloadModel, awqd_pb2.UnloadModelRequest(name=name), self.timeout)

    def generate(
        self,
        model: str,
        prompt: str | None = None,
        *,
        prompt_token_ids: Sequence[int] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float | None = None,
        top_k: int = 0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        kernel: str = "",
        cache_salt: str = "",
        timeout: float | None = None,
    ) -> Generator[awqd_pb2.GenerateResponse, None, None]:
        """Stream the generation: text deltas, the last message carrying the completion summary.

        Closing the iterator early cancels the call, which stops the generation on the daemon.
        The daemon validates the request; set exactly one of `prompt` and `prompt_token_ids`.
        """
        request = awqd_pb2.GenerateRequest(
            model=model,
            prompt=prompt or "",
            prompt_token_ids=prompt_token_ids or (),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop,
            kernel=kernel,
            cache_salt=cache_salt,
        )
        return self._stream(self._stub.Generate, request, timeout)

    def benchmark(
        self, request: awqd_pb2.BenchmarkRequest, *, timeout: float | None = None
    ) -> Generator[awqd_pb2.BenchmarkResponse, None, None]:
        """Stream benchmark progress, then the report; closing the iterator early cancels the run."""
        return self._stream(self._stub.Benchmark, request, timeout)

    def health(self, service: str = "") -> str:
        """The grpc.health.v1 status name, e.g. "SERVING"; "" asks about the whole daemon."""
        response = self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service), self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def _unary(self, method: Callable[..., Response], request: object, timeout: float | None) -> Response:
        try:
            return method(request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target, timeout) from error

    def _stream(
        self, method: Callable[..., Iterable[Response]], request: object, timeout: float | None
    ) -> Generator[Response, None, None]:
        self._await_connection()
        call = method(request, timeout=timeout, metadata=self.metadata)
        try:
            yield from call
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target, timeout) from error
        finally:
            call.cancel()  # a no-op once the stream has ended; stops the daemon's work when the caller stopped early

    def _await_connection(self) -> None:
        """Bound the wait for the daemon by `timeout`, since the long calls may carry no deadline.

        A health check is the cheapest real round trip: a silent peer runs into the timeout, a refused port
        fails at once, and a reachable daemon answers whatever its readiness.
        """
        if self.timeout is not None:
            self._unary(self._health.Check, health_pb2.HealthCheckRequest(), self.timeout)
