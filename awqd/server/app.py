"""The server's life cycle: bind, serve health and reflection, boot, drain on SIGTERM/SIGINT."""

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
from awqd.server.interceptor import StatusInterceptor
from awqd.server.servicer import AwqdServicer
from awqd_client.v1 import awqd_pb2, awqd_pb2_grpc

log = structlog.get_logger("awqd")

SERVICE_NAME = awqd_pb2.DESCRIPTOR.services_by_name["AwqdService"].full_name
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def serve(config: ServeConfig) -> int:
    """Runs until SIGTERM or SIGINT; returns the process exit code."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: _request_stop(stop, received))

    daemon = Daemon(config)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc"),
        interceptors=[StatusInterceptor()],
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    awqd_pb2_grpc.add_AwqdServiceServicer_to_server(AwqdServicer(daemon), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )

    try:
        port = server.add_insecure_port(config.listen)
    except RuntimeError as error:
        log.error("bind_failed", listen=config.listen, error=str(error))
        return 2
    server.start()
    host = config.listen.rsplit(":", 1)[0]
    log.info("listening", address=f"{host}:{port}", port=port)

    def boot() -> None:
        daemon.boot()
        if not stop.is_set():
            for service in ("", SERVICE_NAME):
                health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)

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


def _request_stop(stop: threading.Event, signum: int) -> None:
    log.info("signal_received", signal=signal.Signals(signum).name)
    stop.set()
