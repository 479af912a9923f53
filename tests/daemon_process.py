"""Runs a real `awqd serve` subprocess on a free loopback port for the tests."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families


class DaemonProcess:
    def __init__(self, cache_dir: Path, *args: str, env: dict[str, str] | None = None):
        command = [sys.executable, "-m", "awqd", "serve", "--listen", "127.0.0.1:0", "--cache-dir", str(cache_dir)]
        command += ["--metrics-listen", "off"]  # tests that scrape metrics pass their own port after this
        self.process = subprocess.Popen(
            [*command, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.log_lines: list[str] = []
        self._port: int | None = None
        self._port_known = threading.Event()
        threading.Thread(target=self._read_logs, daemon=True).start()
        if not self._port_known.wait(timeout=120) or self._port is None:
            self.stop()
            raise RuntimeError("awqd did not report its port:\n" + "\n".join(self.log_lines))
        self.target = f"127.0.0.1:{self._port}"

    def _read_logs(self) -> None:
        for line in self.process.stderr:
            self.log_lines.append(line.rstrip("\n"))
            event = self.parse(line)
            if event.get("event") == "listening":
                self._port = event["port"]
                self._port_known.set()
        self._port_known.set()

    @staticmethod
    def parse(line: str) -> dict:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return {}
        return event if isinstance(event, dict) else {}

    def events(self, name: str) -> list[dict]:
        return [e for e in map(self.parse, list(self.log_lines)) if e.get("event") == name]

    def health(self, service: str = "") -> int:
        with grpc.insecure_channel(self.target) as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status

    def wait_serving(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("awqd exited during boot:\n" + "\n".join(self.log_lines))
            try:
                if self.health() == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise TimeoutError("awqd did not become SERVING:\n" + "\n".join(self.log_lines[-50:]))

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample on the daemon's /metrics, by (name, labels) (it must run with --metrics-listen 127.0.0.1:0)."""
        port = self.events("metrics_listening")[-1]["port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of the first sample named `name` whose labels include `labels`; None if none is exported."""
        wanted = labels.items()
        return next((v for (n, ls), v in self.scrape().items() if n == name and wanted <= dict(ls).items()), None)

    def streams_in_flight(self) -> float:
        value = self.metric("awqd_streams_in_flight")
        assert value is not None, "awqd_streams_in_flight is not exported"
        return value

    def terminate(self, timeout: float) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@contextmanager
def serving(cache_dir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[DaemonProcess]:
    """A daemon that has reached SERVING; killed when the block ends, however it ends."""
    process = DaemonProcess(cache_dir, *args, env=env)
    try:
        process.wait_serving()
        yield process
    finally:
        process.stop()


def wait_until(condition, timeout: float, what: str) -> None:
    """Polls condition() until it is true; fails the test after `timeout` seconds, naming what it waited for."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)
