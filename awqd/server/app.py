"""The server's life cycle: bind (TLS or plaintext), serve health, reflection and metrics, boot, drain on SIGTERM."""

import os
import signal
import sys
import threading
from concurrent import futures

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from awqd.config import ServeConfig
from awqd.daemon import Daemon
from awqd.errors import AwqdError
from awqd.server import SERVICE_NAME
from awqd.server.auth import Authorizer
from awqd.server.interceptor import StatusInterceptor
from awqd.server.limits import StreamLimit
from awqd.server.metrics import serve_metrics
from awqd.server.servicer import AwqdServicer
from awqd.server.tls import server_credentials
from awqd_client.v1 import awqd_pb2_grpc

log = structlog.get_logger("awqd")


def serve(config: ServeConfig) -> int:
    """Runs until SIGTERM or SIGINT; returns the process exit code."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: _request_stop(stop, received))

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
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc"),
        interceptors=[StatusInterceptor(authorizer, StreamLimit(config.max_concurrent_streams))],
        options=[
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
        ],
    )
    awqd_pb2_grpc.add_AwqdServiceServicer_to_server(AwqdServicer(daemon), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME, *device_services(daemon)):
        health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    if config.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )

    try:
        port = (
            server.add_secure_port(config.listen, credentials)
            if credentials
            else server.add_insecure_port(config.listen)
        )
    except RuntimeError as error:
        log.error("bind_failed", listen=config.listen, error=str(error))
        return 2
    serve_metrics(config.metrics_listen, daemon)
    server.start()
    host = config.listen.rsplit(":", 1)[0]
    log.info(
        "listening",
        address=f"{host}:{port}",
        port=port,
        tls="mutual" if config.tls_client_ca else "server" if credentials else "off",
        auth="tokens" if authorizer.enabled else "off",
        reflection=config.reflection,
    )

    def boot() -> None:
        daemon.boot()
        if not stop.is_set():
            for service in ("", SERVICE_NAME):
                health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
            for service, torch_device in device_services(daemon).items():
                decisions = daemon.decisions.get(torch_device)
                serving = decisions is not None and not decisions.degraded
                health_servicer.set(
                    service,
                    health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING,
                )

    boot_thread = threading.Thread(target=boot, name="boot", daemon=True)
    boot_thread.start()
    # A signal may be delivered to any thread, and Python runs its handler only when the main thread runs
    # bytecode: an untimed wait could sleep through SIGTERM, so wake up regularly.
    while not stop.wait(timeout=0.2):
        pass

    log.info("draining", grace_period_s=config.grace_period_s)
    health_servicer.enter_graceful_shutdown()
    server.stop(config.grace_period_s).wait()
    daemon.close()
    if boot_thread.is_alive():
        # Boot is abandonable work (kernel timing, model loading); a torch op still running in it would abort
        # the interpreter's shutdown, so leave without waiting for it.
        log.info("stopped", boot="abandoned")
        sys.stderr.flush()
        os._exit(0)
    log.info("stopped")
    return 0


def device_services(daemon: Daemon) -> dict[str, str]:
    """Health service name -> torch device: "awq.v1.AwqdService/cuda:0" is NOT_SERVING while that device is
    degraded (no kernel passed its checks) or undecided."""
    return {f"{SERVICE_NAME}/{d.torch_device}": d.torch_device for d in daemon.discovery.devices if d.torch_device}


def _request_stop(stop: threading.Event, signum: int) -> None:
    log.info("signal_received", signal=signal.Signals(signum).name)
    stop.set()
