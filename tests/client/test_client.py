"""The awqd_client package and awqctl without a daemon: failure paths, rendering, and staying light.

Failure paths run against a closed port and a silent TCP peer. The tests that run `awqd serve` itself
(test_server.py, test_generate.py) check the client against the real daemon.
"""

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import json_format
from rich.console import Console

from awqd_client import AwqdClient, AwqdError
from awqd_client.cli import to_json
from awqd_client.render import print_describe
from awqd_client.v1 import awqd_pb2


def describe_response() -> awqd_pb2.DescribeResponse:
    response = awqd_pb2.DescribeResponse(
        node=awqd_pb2.Node(
            hostname="node-7",
            awqd_version="0.1.0",
            components=[
                awqd_pb2.Component(name="torch", version="2.13.0", available=True),
                awqd_pb2.Component(name="awq_ext", available=False, reason="[import] No module named 'awq_ext'"),
            ],
            gpu_discovery=awqd_pb2.GpuDiscovery(nvml_error="NVML Shared Library Not Found"),
        ),
        devices=[
            awqd_pb2.Device(
                index=0,
                kind=awqd_pb2.DEVICE_KIND_CPU,
                uuid="cpu",
                name="Intel Xeon",
                memory_total_bytes=16 * 1024**3,
                memory_free_bytes=3 * 1024**3 // 2,
                torch_device="cpu",
                kernels=[
                    awqd_pb2.KernelCandidate(
                        name="torch_reference",
                        family=awqd_pb2.KERNEL_FAMILY_REFERENCE,
                        supported=True,
                        reason="pure torch runs everywhere",
                        layout="unpacked",
                        correctness=awqd_pb2.CorrectnessCheck(passed=True, max_relative_error=1e-4, tolerance=5e-3),
                    ),
                    awqd_pb2.KernelCandidate(
                        name="autoawq_gemv_cuda",
                        family=awqd_pb2.KERNEL_FAMILY_GEMV,
                        supported=False,
                        reason="needs a CUDA device with capability >= 7.5",
                    ),
                ],
                decisions=[
                    awqd_pb2.KernelDecision(
                        batch_tokens=16,
                        kernel="torch_reference",
                        source=awqd_pb2.DECISION_SOURCE_MEASURED,
                        reason="fastest correct candidate",
                        timings=[
                            awqd_pb2.KernelTiming(kernel="torch_reference", median_ms=0.123),
                            awqd_pb2.KernelTiming(kernel="triton_gemm", median_ms=0.456),
                        ],
                    )
                ],
            )
        ],
        models=[
            awqd_pb2.Model(
                name="tiny-llama",
                path="/models/tiny",
                architecture="LlamaForCausalLM",
                quant_config=awqd_pb2.QuantConfig(
                    w_bit=4, group_size=128, zero_point=True, packing=awqd_pb2.QUANT_PACKING_GEMM
                ),
                device="cpu",
                weight_memory_bytes=1024**2,
                state=awqd_pb2.MODEL_STATE_READY,
                kv_cache_tokens=16384,
                kv_cache_slots=32,
                max_sequence_tokens=512,
                kv_cache_bytes=32 * 1024**2,
                kv_cache_blocks=1024,
                kv_cache_block_tokens=16,
                kv_cache_blocks_in_use=40,
            )
        ],
    )
    response.node.uptime.FromSeconds(3725)
    return response


@pytest.fixture
def closed_target() -> str:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"127.0.0.1:{port}"


@pytest.fixture
def silent_target() -> Iterator[str]:
    """A TCP listener that accepts and never speaks HTTP/2."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []

    def accept_forever() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept_forever, daemon=True).start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for connection in accepted:
        connection.close()


def awqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "awqd_client.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_cli_unreachable_daemon_prints_one_line(closed_target: str) -> None:
    result = awqctl("--target", closed_target, "describe")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"awqctl: error: UNAVAILABLE: cannot reach awqd at {closed_target} (")
    assert "Traceback" not in result.stderr


def test_cli_silent_peer_prints_deadline(silent_target: str) -> None:
    result = awqctl("--target", silent_target, "--timeout", "0.5", "describe", "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"awqctl: error: DEADLINE_EXCEEDED: {_no_answer(silent_target, 0.5)}\n"


def test_client_closed_port_raises_unavailable(closed_target: str) -> None:
    with AwqdClient(closed_target, timeout=5) as client:
        with pytest.raises(AwqdError) as unary:
            client.describe()
        with pytest.raises(AwqdError) as stream:
            next(client.generate("any", "hi"))
    for error in (unary.value, stream.value):
        assert error.code is grpc.StatusCode.UNAVAILABLE
        assert f"cannot reach awqd at {closed_target}" in str(error)
        assert "\n" not in str(error)


def test_client_silent_peer_hits_the_timeout(silent_target: str) -> None:
    with AwqdClient(silent_target, timeout=0.5) as client:
        calls = (client.describe, client.list_models, lambda: client.load_model("m", "/m"), client.health)
        for call in calls:
            started = time.monotonic()
            with pytest.raises(AwqdError) as raised:
                call()
            assert raised.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
            assert str(raised.value) == f"DEADLINE_EXCEEDED: {_no_answer(silent_target, 0.5)}"
            assert time.monotonic() - started < 10  # bounded by the 0.5 s timeout, not grpc's 20 s connect timeout
        with pytest.raises(AwqdError) as stream:
            next(client.generate("any", "hi"))
        assert stream.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def _no_answer(target: str, timeout: float) -> str:
    return (
        f"no answer from awqd at {target} within {timeout:g} s; "
        "the daemon may be busy or not running, or this is not its gRPC port"
    )


def test_render_describe_shows_key_fields() -> None:
    console = Console(record=True, width=200)
    print_describe(console, describe_response())
    text = console.export_text()
    expected = [
        "node-7",
        "awqd 0.1.0",
        "up 1h 02m 05s",
        "2.13.0",
        "[import] No module named 'awq_ext'",
        "NVML: unavailable (NVML Shared Library Not Found)",
        "Intel Xeon",
        "16.0 GiB",
        "1.5 GiB",
        "torch_reference",
        "reference",
        "pure torch runs everywhere",
        "passed, rel err 1.00e-04 <= 5e-03",
        "autoawq_gemv_cuda",
        "needs a CUDA device with capability >= 7.5",
        "kernels on device 0 (cpu, Intel Xeon)",
        "decisions on device 0 (cpu, Intel Xeon)",
        "0.123 ms",
        "measured",
        "triton_gemm 0.456 ms",
        "tiny-llama",
        "ready",
        "LlamaForCausalLM",
        "gemm w4 g128",
        "1.0 MiB",
        "16384 tokens (1024 blocks of 16, 40 in use, 32.0 MiB)",
    ]
    assert [field for field in expected if field not in text] == []


def test_json_output_round_trips() -> None:
    response = describe_response()
    text = to_json(response)
    assert '"awqd_version"' in text and '"awqdVersion"' not in text
    assert json_format.Parse(text, awqd_pb2.DescribeResponse()) == response


def test_client_never_imports_torch() -> None:
    probe = (
        "import sys, awqd_client, awqd_client.cli; print([m for m in ('torch', 'numpy', 'awqd') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout == "[]\n"
