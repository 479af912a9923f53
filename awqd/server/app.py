"""The server's life cycle: bind (TLS or plaintext, on this process or its frontend processes), serve health,
reflection and metrics, boot, drain on SIGTERM."""

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from awqd.config import ServeConfig
from awqd.daemon import Daemon
from awqd.errors import AwqdError
from awqd.server import SERVICE_NAME
from awqd.server.auth import Authorizer
from awqd.server.events import EventBridge
from awqd.server.interceptor import StatusInterceptor
from awqd.server.limits import StreamLimit
from awqd.server.metrics import serve_metrics
from awqd.server.relay import Frontends, Relay, reserve_port
from awqd.server.servicer import AwqdServicer
from awqd.server.tls import server_credentials
from awqd_client.v1 import awqd_pb2_grpc

log = structlog.get_logger("awqd")


def serve(config: ServeConfig) -> int:
    """Runs until SIGTERM or SIGINT; returns the process exit code."""
    credentials = None
    if config.tls_cert is not None and config.tls_key is not None:
        try:
            credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
        except AwqdError as error:
            log.error("tls_failed", error=str(error))
            return 2
    authorizer = Authorizer(config.auth_token, config.admin_token)
    if authorizer.enabled and credentials is None:
        log.warning("tokens_without_tls", reason="bearer tokens travel in plaintext; serve TLS with --tls-cert")

    daemon = Daemon(config)
    code = asyncio.run(_serve(config, daemon, credentials, authorizer))
    if code == 0 and not daemon.ready.is_set():
        # Boot is abandonable work (kernel timing, model loading); a torch op still running in it would abort
        # the interpreter's shutdown, so leave without waiting for it.
        log.info("stopped", boot="abandoned")
        sys.stderr.flush()
        os._exit(0)
    if code == 0:
        log.info("stopped")
    return code


async def _serve(
    config: ServeConfig,
    daemon: Daemon,
    credentials: grpc.ServerCredentials | None,
    authorizer: Authorizer,
) -> int:
    """The gRPC server on this thread's asyncio loop, with no thread per stream. With frontend processes, it serves
    them on Unix sockets, and they serve --listen."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _request_stop, stop, signum)

    # Daemon calls that block (LoadModel, UnloadModel, Describe, a benchmark's steps) run here, never on the loop.
    blocking = ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc")
    streams = StreamLimit(config.max_concurrent_streams)
    frontend_count = config.frontend_count(any(device.kind == "cuda" for device in daemon.discovery.devices))
    run_dir = None
    if frontend_count:
        try:
            run_dir = Path(tempfile.mkdtemp(prefix="awqd-"))  # mode 0700: the frontends' sockets
        except OSError as error:
            log.warning("frontends_disabled", reason=f"no private directory for their sockets: {error}")
            frontend_count = 0
    server = grpc.aio.server(
        interceptors=[StatusInterceptor(authorizer, streams, frontends=frontend_count > 0)],
        options=[
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
        ],
    )
    servicer = AwqdServicer(daemon, EventBridge(loop), blocking)
    awqd_pb2_grpc.add_AwqdServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME, *device_services(daemon)):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    if config.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )

    async with contextlib.AsyncExitStack() as resources:
        frontends = None
        try:
            if run_dir is not None:
                # The frontends listen on --listen; the engine serves them on Unix sockets in a private directory.
                resources.callback(shutil.rmtree, run_dir, ignore_errors=True)
                listen, port_holder = reserve_port(config.listen)
                if port_holder is not None:
                    resources.callback(port_holder.close)
                server.add_insecure_port(f"unix:{run_dir / 'engine.sock'}")
                relay = Relay(servicer, authorizer, streams)
                relay_server = await asyncio.start_unix_server(relay.connection, path=run_dir / "relay.sock")
                resources.push_async_callback(_close_server, relay_server)
                frontends = Frontends(config, frontend_count, relay, listen, run_dir)
                port = int(listen.rpartition(":")[2])
            elif credentials:
                port = server.add_secure_port(config.listen, credentials)
            else:
                port = server.add_insecure_port(config.listen)
        except (RuntimeError, OSError) as error:
            log.error("bind_failed", listen=config.listen, error=str(error))
            return 2
        serve_metrics(config.metrics_listen, daemon)
        await server.start()
        if frontends is not None and (error := await frontends.start()) is not None:
            log.error("bind_failed", listen=config.listen, error=error)
            await server.stop(0)
            return 2
        host = config.listen.rsplit(":", 1)[0]
        log.info(
            "listening",
            address=f"{host}:{port}",
            port=port,
            tls="mutual" if config.tls_client_ca else "server" if credentials else "off",
            auth="tokens" if authorizer.enabled else "off",
            reflection=config.reflection,
            max_concurrent_streams=config.max_concurrent_streams,
            frontend_processes=frontend_count,
        )

        # Boot runs on its own thread, which the daemon may leave behind on SIGTERM (see serve).
        booted = loop.run_in_executor(ThreadPoolExecutor(max_workers=1, thread_name_prefix="boot"), daemon.boot)
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((booted, stopping), return_when=asyncio.FIRST_COMPLETED)
        if booted.done():
            await _report_serving(health_servicer, daemon)
        await stopping

        log.info("draining", grace_period_s=config.grace_period_s)
        await health_servicer.enter_graceful_shutdown()
        if frontends is not None:
            # The frontends' calls in flight come through the engine's server and the relay, so both stay up
            # until the frontends have drained.
            await frontends.stop(config.grace_period_s)
        await server.stop(config.grace_period_s)
    blocking.shutdown(wait=False, cancel_futures=True)
    await asyncio.to_thread(daemon.close)  # the loop runs on, so the models' last events still reach the bridge
    return 0


async def _close_server(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


async def _report_serving(health_servicer: health.aio.HealthServicer, daemon: Daemon) -> None:
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    for service, torch_device in device_services(daemon).items():
        decisions = daemon.decisions.get(torch_device)
        serving = decisions is not None and not decisions.degraded
        await health_servicer.set(
            service, health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )


def device_services(daemon: Daemon) -> dict[str, str]:
    """Health service name -> torch device: "awq.v1.AwqdService/cuda:0" is NOT_SERVING while that device is
    degraded (no kernel passed its checks) or undecided."""
    return {f"{SERVICE_NAME}/{d.torch_device}": d.torch_device for d in daemon.discovery.devices if d.torch_device}


def _request_stop(stop: asyncio.Event, signum: int) -> None:
    log.info("signal_received", signal=signal.Signals(signum).name)
    stop.set()
