"""The engine's end of the frontend processes (--frontend-processes): it starts them, restarts one that dies, drains
them on shutdown, and runs the Generate calls they relay.

Why they exist: on one loop, hundreds of calls that arrive together wait to be accepted behind the running calls'
writes (76-449 ms at 256 streams on H200s), and grpc.aio spends 40-80 µs of that loop to end each call, all of a
wave's in the same decode step. The frontends accept, write and end calls on their own loops; the engine's loop
then does little per stream: it serializes each message and appends it to its frontend's next frame
(bench/results/h200-2026-12-04-frontends).

A relayed Generate runs through the StatusInterceptor's own rpc_scope and admitted, so it gets what a direct one gets:
authorization, the daemon-wide stream limit, the status code and retry hint, the `rpc` log line and the request
counter. Other calls reach the engine's gRPC server on its Unix socket and go through the interceptor itself.
"""

import asyncio
import contextlib
import socket
import sys
from pathlib import Path

import structlog

from awqd.config import ServeConfig
from awqd.metrics import FRONTEND_PROCESSES, FRONTEND_RESTARTS
from awqd.server.auth import Authorizer
from awqd.server.frames import Outbox, read_batch
from awqd.server.frontend import GENERATE, FrontendConfig
from awqd.server.interceptor import admitted, lenient, parsed, rpc_scope
from awqd.server.limits import StreamLimit
from awqd.server.servicer import AwqdServicer
from awqd_client.v1 import awqd_pb2 as pb

log = structlog.get_logger("awqd")

START_TIMEOUT_S = 60.0
# A frontend that exits is restarted after RESTART_DELAY_S. Each restart doubles the wait before the next one, up to
# MAX_RESTART_DELAY_S, so a frontend that cannot start (its port taken) or keeps crashing is retried without end but
# without a busy loop; one that served STEADY_S before it exited starts again from the first delay.
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
STEADY_S = 60.0


class Relay:
    """Serves the relay socket: one connection per frontend process, and the Generate calls on it."""

    def __init__(self, servicer: AwqdServicer, authorizer: Authorizer, streams: StreamLimit):
        self.servicer = servicer
        self.authorizer = authorizer
        self.streams = streams
        self.started: dict[int, asyncio.Future[str | None]] = {}  # frontend index -> None, or why it failed

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        outbox = Outbox(writer)
        calls: dict[int, asyncio.Task] = {}
        index = None
        try:
            while (batch := await read_batch(reader)) is not None:
                for record in batch:
                    kind = record[0]
                    if kind == "open":
                        _, call_id, request, metadata, peer = record
                        task = asyncio.create_task(self._generate(outbox, call_id, request, metadata, peer, index))
                        calls[call_id] = task
                        task.add_done_callback(lambda _, call_id=call_id: calls.pop(call_id, None))
                    elif kind == "cancel":
                        if (task := calls.get(record[1])) is not None:
                            task.cancel()
                    elif kind == "listening":
                        index = record[1]
                        self._report(index, None)
                    elif kind == "bind_failed":
                        self._report(record[1], record[2])
        finally:
            for task in list(calls.values()):
                task.cancel()  # the frontend is gone, and its calls' connections with it
            await outbox.close()

    def _report(self, index: int, error: str | None) -> None:
        started = self.started.get(index)
        if started is not None and not started.done():
            started.set_result(error)

    async def _generate(
        self, outbox: Outbox, call_id: int, request: bytes, metadata: tuple, peer: str, frontend: int | None
    ) -> None:
        call_ended: list = []  # the servicer's callbacks for the end of the call
        try:
            with (
                rpc_scope(GENERATE, peer, frontend=frontend) as call,
                admitted(GENERATE, metadata, self.authorizer, self.streams),
            ):
                generate_request = parsed(lenient(pb.GenerateRequest.FromString)(request))
                # Each message is appended to the frame in the bridge's wake-up that brings it. The wake-up's first
                # append schedules the frame's write ahead of the calls the wake-up ends, so when a wave's streams
                # all end in one step, their last messages leave before those calls' bookkeeping (log lines,
                # counters) runs.
                await self.servicer.generate_to(
                    generate_request,
                    call_ended.append,
                    lambda response: outbox.send(("message", call_id, response.SerializeToString())),
                )
                # A wave's completions can reach the loop in more than one wake-up (the engine thread's hand-over is
                # cut where the interpreter lock switches). Yield once, so that a wake-up already scheduled sends
                # its streams' last messages before this call's bookkeeping, ~30 µs a call, runs.
                await asyncio.sleep(0)
        finally:  # a cancelled call (its frontend's client cancelled) ends here: it is over, nothing is sent
            for callback in call_ended:
                callback(None)
        outbox.send(("end", call_id, call.code.name, call.details, call.trailing))


class Frontends:
    """The frontend processes: each runs awqd.server.frontend on --listen's port."""

    def __init__(self, config: ServeConfig, count: int, relay: Relay, listen: str, run_dir: Path):
        self.config = config
        self.count = count
        self.relay = relay
        self.listen = listen
        self.run_dir = run_dir
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.exits: dict[int, asyncio.Future] = {}  # per frontend: its process's exit code, once it has exited
        self.listening_since: dict[int, float] = {}  # per frontend: when its current process began to listen
        self._supervisors: list[asyncio.Task] = []

    def frontend_config(self, index: int) -> FrontendConfig:
        config = self.config
        return FrontendConfig(
            index=index,
            listen=self.listen,
            relay_path=str(self.run_dir / "relay.sock"),
            engine_target=f"unix:{self.run_dir / 'engine.sock'}",
            grace_period_s=config.grace_period_s,
            max_message_bytes=config.max_message_bytes,
            tls_cert=str(config.tls_cert) if config.tls_cert else None,
            tls_key=str(config.tls_key) if config.tls_key else None,
            tls_client_ca=str(config.tls_client_ca) if config.tls_client_ca else None,
            log_level=config.log_level,
            log_format=config.log_format,
        )

    async def _spawn(self, index: int) -> str | None:
        """Starts frontend `index`; None once it is listening, else why it is not (and its process has ended)."""
        loop = asyncio.get_running_loop()
        started = self.relay.started[index] = loop.create_future()
        command = [sys.executable, "-m", "awqd.server.frontend", self.frontend_config(index).to_json()]
        process = self.processes[index] = await asyncio.create_subprocess_exec(*command)
        exited = self.exits[index] = asyncio.ensure_future(process.wait())
        await asyncio.wait((started, exited), timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if started.done() and started.result() is None:
            self.listening_since[index] = loop.time()
            FRONTEND_PROCESSES.inc()
            exited.add_done_callback(lambda _: FRONTEND_PROCESSES.dec())
            return None
        if started.done():
            error = started.result()  # it could not bind
        elif exited.done():
            error = f"exited with code {process.returncode} before it was listening"
        else:
            error = f"not listening after {START_TIMEOUT_S:.0f} s"
        if not exited.done():  # a frontend that failed is not left running, however it failed
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await exited
        return error

    async def start(self) -> str | None:
        """Starts every frontend; None once all listen, else why one does not (the others are stopped)."""
        errors = await asyncio.gather(*(self._spawn(index) for index in range(self.count)))
        failed = [f"frontend {index}: {error}" for index, error in enumerate(errors) if error is not None]
        if failed:
            await self.stop(0)
            return "; ".join(failed)
        self._supervisors = [asyncio.create_task(self._keep_running(index)) for index in range(self.count)]
        return None

    async def _keep_running(self, index: int) -> None:
        """Restarts frontend `index` each time it exits while the daemon serves: its calls have ended, new ones must
        not fail. A restart that fails is retried, each wait twice the last (up to MAX_RESTART_DELAY_S)."""
        loop = asyncio.get_running_loop()
        delay = RESTART_DELAY_S
        while True:
            code = await self.exits[index]
            if loop.time() - self.listening_since[index] >= STEADY_S:
                delay = RESTART_DELAY_S
            log.error("frontend_exited", frontend=index, code=code, action="restarting", restart_in_s=delay)
            while True:
                await asyncio.sleep(delay)
                error = await self._spawn(index)
                delay = min(2 * delay, MAX_RESTART_DELAY_S)
                if error is None:
                    break
                FRONTEND_RESTARTS.labels("failed").inc()
                log.error("frontend_restart_failed", frontend=index, error=error, retry_in_s=delay)
            FRONTEND_RESTARTS.labels("restarted").inc()
            log.info("frontend_restarted", frontend=index, pid=self.processes[index].pid)

    async def stop(self, grace_s: float) -> None:
        """Drains every frontend (their calls in flight get grace_s), and kills one that outlives it."""
        for supervisor in self._supervisors:  # first, so that no restart starts a process after the ones stopped below
            supervisor.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.terminate()  # SIGTERM: the frontend drains
        waiting = list(self.exits.values())
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=grace_s + 5)
            if late:
                for process in self.processes.values():
                    if process.returncode is None:
                        log.error("frontend_killed", pid=process.pid, reason="still running after the grace period")
                        process.kill()
                await asyncio.wait(late)


def reserve_port(listen: str) -> tuple[str, socket.socket | None]:
    """--listen with its port fixed. For port 0, a port the frontends can share, held by a socket that binds it
    with SO_REUSEPORT but never listens, so it takes no connections; the caller keeps it until the daemon stops, so
    a restarted frontend finds its port free."""
    host, _, port = listen.rpartition(":")
    if port != "0":
        return listen, None
    family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host.strip("[]"), 0))
    return f"{host}:{holder.getsockname()[1]}", holder
