"""Runs kernel candidates in a child process (awqd/kernels/worker.py), so that the daemon's own process and CUDA
context never run a kernel that has not passed there.

Every candidate goes through the child, awqd's own Triton kernels included: then no unvalidated kernel, Triton
compile or tuning run can poison the daemon's context, and there is one code path. The child is started with
`python -m` (never forked: forking after CUDA initialisation is undefined), with the daemon's sys.path, so it
imports the same awqd and the same plugins.

A step that crashes the child (a signal, an abort, a CUDA error that poisons its context, out of memory) or
stays silent for the step's time limit (the worker reports progress within long steps) raises StepFailed with
the reason in words; the child is killed and the next step starts a fresh one (with the tuning tables so far).
"""

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import structlog

log = structlog.get_logger("awqd.kernels")

DEFAULT_STEP_LIMIT_S = 30.0
STEP_LIMIT_ENV = "AWQD_CANDIDATE_TIME_LIMIT"  # seconds one isolated step may take; tests shorten it
STDERR_TAIL_CHARS = 400


class StepFailed(Exception):
    """The child died or hung during a step; str() is the reason, e.g. "killed by signal 6 (SIGABRT) during ..."."""


def step_limit_s() -> float:
    try:
        return float(os.environ.get(STEP_LIMIT_ENV, DEFAULT_STEP_LIMIT_S))
    except ValueError:
        return DEFAULT_STEP_LIMIT_S


class IsolatedDevice:
    """One device's worker process, started on first use and again after every crash."""

    def __init__(self, torch_device: str, plugin_specs: list[str], step_limit: float | None = None):
        self.torch_device = torch_device
        self.plugin_specs = list(plugin_specs)
        self.step_limit = step_limit if step_limit is not None else step_limit_s()
        self.tuning: dict[str, Any] = {}  # installed in every fresh child
        self.startups_s: list[float] = []
        self.process: subprocess.Popen | None = None
        self.where = ""

    def __enter__(self) -> "IsolatedDevice":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self.process is not None

    @property
    def restarts(self) -> int:
        return max(0, len(self.startups_s) - 1)

    def call(self, op: str, limit_s: float | None = None, **arguments: Any) -> dict[str, Any]:
        """Runs one step in the child; its reply, {"ok": False, "error": ...} for a step that raised there, or
        StepFailed when the child died or hung."""
        if self.process is None:
            self._start()
        return self._exchange({"op": op, **arguments}, limit_s or self.step_limit)

    def install_tuning(self, tuning: dict[str, Any]) -> None:
        self.tuning.update(tuning)
        if self.process is not None and tuning:
            self._exchange({"op": "install", "tuning": tuning}, self.step_limit)

    def close(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._kill(process)
        self._cleanup(process)

    def _start(self) -> None:
        started = time.perf_counter()
        read_fd, write_fd = os.pipe()
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the worker
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "awqd.kernels.worker", str(write_fd)],
                stdin=subprocess.PIPE,
                stdout=self._log,
                stderr=self._log,
                pass_fds=(write_fd,),
                env=env,
                text=True,
                start_new_session=True,  # its own process group: a kill also ends what it started (compilers)
            )
        finally:
            os.close(write_fd)
        self._results = os.fdopen(read_fd, "r")
        self._pending = ""
        self.where = "start-up"
        limit = max(self.step_limit, 60.0)  # importing torch and initialising CUDA on a loaded node
        reply = self._exchange({"op": "hello", "device": self.torch_device, "plugin_specs": self.plugin_specs}, limit)
        if not reply.get("ok"):
            raise StepFailed(f"the worker could not start: {reply.get('error')}")
        if self.tuning:
            self._exchange({"op": "install", "tuning": self.tuning}, self.step_limit)
        self.startups_s.append(time.perf_counter() - started)
        log.info("kernel_worker_started", device=self.torch_device, pid=self.process.pid, seconds=self.startups_s[-1])

    def _exchange(self, command: dict[str, Any], limit_s: float) -> dict[str, Any]:
        process = self.process
        assert process is not None
        self.where = command["op"]
        try:
            process.stdin.write(json.dumps(command) + "\n")
            process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died already; reading says how
        deadline = time.monotonic() + limit_s
        selector = selectors.DefaultSelector()
        selector.register(self._results, selectors.EVENT_READ)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reason = f"no answer in {limit_s:.0f} s during {self.where}"
                    self._abandon(kill=True)
                    raise StepFailed(reason)
                if not selector.select(timeout=remaining):
                    continue
                chunk = os.read(self._results.fileno(), 1 << 16).decode(errors="replace")
                if not chunk:
                    reason = self._death_reason()
                    self._abandon(kill=False)
                    raise StepFailed(reason)
                self._pending += chunk
                while "\n" in self._pending:
                    line, self._pending = self._pending.split("\n", 1)
                    record = json.loads(line)
                    if "at" in record:  # progress: the limit is on silence, so long honest steps go on
                        self.where = record["at"]
                        deadline = time.monotonic() + limit_s
                        continue
                    if record.get("poisoned"):
                        self._abandon(kill=False)
                    return record
        finally:
            selector.close()

    def _death_reason(self) -> str:
        process = self.process
        assert process is not None
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill(process)
            code = process.wait()
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else "?"
            what = f"killed by signal {-code} ({name})"
        else:
            what = f"exited with status {code}"
        tail = self._stderr_tail()
        return f"{what} during {self.where}" + (f"; its last output: {tail}" if tail else "")

    def _stderr_tail(self) -> str:
        try:
            self._log.seek(0)
            text = self._log.read()
        except (OSError, ValueError):
            return ""
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return " | ".join(lines[-3:])[-STDERR_TAIL_CHARS:]

    def _abandon(self, kill: bool) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if kill or process.poll() is None:
            self._kill(process)
        self._cleanup(process)

    @staticmethod
    def _kill(process: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)

    def _cleanup(self, process: subprocess.Popen) -> None:
        with contextlib.suppress(OSError):
            process.stdin.close()
        with contextlib.suppress(OSError):
            self._results.close()
        with contextlib.suppress(OSError):
            self._log.close()
