"""The daemon as a real process on loopback: Describe, health, reflection, logs, shutdown."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from awqd_client import AwqdClient, AwqdError
from awqd_client.v1 import awqd_pb2 as pb

from daemon_process import DaemonProcess, serving

AWQCTL = str(Path(sys.executable).parent / "awqctl")
BOOT_ARGS = ("--no-demo-model", "--selection-budget", "5")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("cache"), *BOOT_ARGS) as process:
        yield process


def test_health_reports_serving(daemon):
    assert daemon.health() == health_pb2.HealthCheckResponse.SERVING
    assert daemon.health("awq.v1.AwqdService") == health_pb2.HealthCheckResponse.SERVING


def test_describe_through_client(daemon):
    with AwqdClient(daemon.target) as client:
        response = client.describe()
    node = response.node
    assert node.hostname == socket.gethostname()
    assert node.awqd_version
    assert node.uptime.ToNanoseconds() > 0
    components = {c.name: c for c in node.components}
    for name in ("nvidia_driver", "cuda_runtime", "torch", "triton", "transformers", "autoawq", "awq_ext"):
        assert name in components, name
        assert components[name].version or components[name].reason, name
    assert components["torch"].available and components["torch"].version

    cpu = response.devices[0]
    assert cpu.kind == pb.DEVICE_KIND_CPU and cpu.index == 0 and cpu.uuid == "cpu"
    assert cpu.memory_total_bytes >= cpu.memory_free_bytes > 0
    kernels = {k.name: k for k in cpu.kernels}
    assert kernels["reference_torch"].supported
    assert all(k.reason for k in cpu.kernels)
    assert not kernels["autoawq_gemv_cuda"].supported

    gpus = response.devices[1:]
    assert len(gpus) == node.gpu_discovery.nvml_device_count
    if not gpus:
        assert node.gpu_discovery.nvml_error
    for gpu in gpus:
        assert gpu.kind == pb.DEVICE_KIND_CUDA and gpu.uuid.startswith("GPU-") and gpu.compute_capability


def test_describe_through_awqctl_json(daemon):
    result = subprocess.run(
        [AWQCTL, "--target", daemon.target, "describe", "--json"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    assert described["devices"][0]["kind"] == "DEVICE_KIND_CPU"
    assert "memory_total_bytes" in described["devices"][0]  # proto field names, not camelCase
    assert described["node"]["awqd_version"]


def test_awqctl_describe_is_readable(daemon):
    result = subprocess.run([AWQCTL, "--target", daemon.target, "describe"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "reference_torch" in result.stdout
    assert socket.gethostname() in result.stdout


def test_reflection_lists_the_service(daemon):
    with grpc.insecure_channel(daemon.target) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "awq.v1.AwqdService" in services
    assert "grpc.health.v1.Health" in services


def test_one_log_line_per_rpc(daemon):
    # The peer a frontend process would name is not believed from a client: this daemon has no frontends.
    with AwqdClient(daemon.target, metadata=(("x-awqd-peer", "ipv4:192.0.2.1:1"),)) as client:
        client.describe()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [e for e in daemon.events("rpc") if e.get("method") == "/awq.v1.AwqdService/Describe"]
        if lines:
            break
        time.sleep(0.1)
    assert lines
    line = lines[-1]
    assert line["code"] == "OK"
    assert line["duration_ms"] >= 0
    assert line["peer"].startswith("ipv4:127.0.0.1")
    assert line["level"] == "info" and "timestamp" in line


@pytest.mark.parametrize(("method", "streams"), [("ListModels", False), ("Generate", True)])
def test_a_request_that_does_not_parse_is_invalid_argument_and_logged(daemon, method, streams):
    full_name = f"/awq.v1.AwqdService/{method}"
    corrupt = b"\x0a\xff\xff\xff\xff\x0f"  # a length-delimited field that runs past the end
    with grpc.insecure_channel(daemon.target) as channel, pytest.raises(grpc.RpcError) as raised:
        if streams:
            list(channel.unary_stream(full_name)(corrupt, timeout=10))
        else:
            channel.unary_unary(full_name)(corrupt, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("request: cannot be parsed")
    deadline = time.monotonic() + 5
    while not (lines := [e for e in daemon.events("rpc") if e.get("method") == full_name]):
        assert time.monotonic() < deadline, f"no rpc line for {full_name}"
        time.sleep(0.1)
    assert lines[-1]["code"] == "INVALID_ARGUMENT"


def test_sigterm_exits_zero_within_grace_period(tmp_path):
    process = DaemonProcess(tmp_path, *BOOT_ARGS, "--grace-period", "5")
    try:
        process.wait_serving()
        started = time.monotonic()
        assert process.terminate(timeout=15) == 0
        assert time.monotonic() - started < 10
        assert process.events("stopped")
    finally:
        process.stop()


def test_port_in_use_is_a_clean_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "awqd",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--cache-dir",
                str(tmp_path),
                *BOOT_ARGS,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2
    assert "bind_failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_model_flag_is_rejected(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "awqd", "serve", "--cache-dir", str(tmp_path), "--model", "no-equals-sign"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "NAME=PATH" in result.stderr


def test_requests_during_boot_get_unavailable(demo_model_dir, awqd_cache_dir, tmp_path):
    process = DaemonProcess(awqd_cache_dir, "--model-root", str(tmp_path))
    try:
        with AwqdClient(process.target, timeout=30) as client:
            # Kernel selection runs before any model loads, so the demo model is still loading here.
            assert client.health() == "NOT_SERVING"
            with pytest.raises(AwqdError) as raised:
                list(client.generate("awqd-demo", "hello", max_new_tokens=2))
            assert raised.value.code == grpc.StatusCode.UNAVAILABLE and "loading" in raised.value.message
            process.wait_serving()
            assert [m.state for m in client.list_models()] == [pb.MODEL_STATE_READY]
    finally:
        process.stop()


def test_unwritable_cache_dir_leaves_the_daemon_serving(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be")
    process = DaemonProcess(blocker / "cache", "--selection-budget", "5", "--model-root", str(tmp_path))
    try:
        process.wait_serving()
        with AwqdClient(process.target) as client:
            response = client.describe()
        (demo,) = response.models
        assert demo.state == pb.MODEL_STATE_FAILED and "not-a-directory" in demo.error
        assert response.devices[0].decisions  # decisions were made, just not cached
    finally:
        process.stop()
