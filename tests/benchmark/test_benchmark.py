"""The Benchmark RPC and `awqctl bench` against a real daemon hosting the AutoAWQ-quantized demo model."""

import json
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest
from google.protobuf import json_format

from awqd_client import AwqdClient, AwqdError
from awqd_client.v1 import awqd_pb2 as pb

from daemon_process import DaemonProcess, serving

DEMO = "awqd-demo"
DEMO_CONTEXT = 512
MAX_NEW_TOKENS_CAP = 64
FP16 = "fp16_cublas"
AWQCTL = [sys.executable, "-m", "awqd_client.cli"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KERNEL = pb.BENCHMARK_MODE_KERNEL
SINGLE_QUERY = pb.BENCHMARK_MODE_SINGLE_QUERY


@pytest.fixture(scope="module")
def daemon(demo_model_dir, awqd_cache_dir):
    with serving(awqd_cache_dir, "--selection-budget", "20", "--max-new-tokens", str(MAX_NEW_TOKENS_CAP)) as process:
        yield process


@pytest.fixture
def client(daemon):
    with AwqdClient(daemon.target, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def model_device(daemon) -> pb.Device:
    with AwqdClient(daemon.target, timeout=60) as client:
        described = client.describe()
    model = next(m for m in described.models if m.name == DEMO)
    return next(d for d in described.devices if d.torch_device == model.device)


def usable(device: pb.Device) -> list[str]:
    return [k.name for k in device.kernels if k.supported and k.correctness.passed]


def run(client: AwqdClient, **fields) -> tuple[list[pb.BenchmarkProgress], pb.BenchmarkReport]:
    messages = list(client.benchmark(pb.BenchmarkRequest(**fields)))
    assert messages and messages[-1].HasField("report"), "the last message must be the report"
    assert all(m.HasField("progress") for m in messages[:-1])
    return [m.progress for m in messages[:-1]], messages[-1].report


def wait_for_event(daemon: DaemonProcess, name: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(daemon.events(name)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} {name} events within {timeout} s"
        time.sleep(0.05)


def test_kernel_mode_times_every_usable_candidate_beside_fp16(client, model_device):
    progress, report = run(client, mode=KERNEL, model=DEMO, batch_sizes=[4, 1], iterations=3, warmup_iterations=1)
    assert [p.completed for p in progress] == sorted(p.completed for p in progress)
    assert progress[-1].completed == progress[-1].total
    assert report.mode == KERNEL
    assert report.device.name == model_device.name and report.device.torch_device == model_device.torch_device
    assert report.node.hostname and any(c.name == "torch" for c in report.node.components)
    assert len(report.shapes) == 7 and report.shapes[0] == "q_proj 256x256"
    assert report.roofline_bandwidth_gbps > 0 and report.roofline_source == "measured copy"
    rows = {(row.kernel, row.batch_tokens): row for row in report.kernel_latencies}
    assert set(rows) == {(kernel, batch) for kernel in [*usable(model_device), FP16] for batch in (1, 4)}
    for (_, batch), row in rows.items():
        assert 0 < row.p10_ms <= row.median_ms <= row.p90_ms
        assert row.effective_bandwidth_gbps > 0
        assert row.speedup_vs_fp16 == pytest.approx(rows[FP16, batch].median_ms / row.median_ms)
    fastest = {row.batch_tokens: row for row in report.verdict.fastest}
    assert set(fastest) == {1, 4}
    for batch, row in fastest.items():
        candidates = [r for (k, b), r in rows.items() if b == batch and k != FP16]
        assert row.kernel != FP16 and row.median_ms == min(r.median_ms for r in candidates)
    assert report.verdict.summary.startswith("Fastest on ")


def test_kernel_mode_on_a_named_architecture_times_only_the_named_kernels(client):
    _, report = run(
        client, mode=KERNEL, architecture="tiny", device_index=0, kernels=["reference"], batch_sizes=[2], iterations=2
    )
    assert report.device.index == 0
    assert {(row.kernel, row.batch_tokens) for row in report.kernel_latencies} == {("reference_torch", 2), (FP16, 2)}


def test_single_query_measures_each_family_or_says_why_not(client, daemon, model_device):
    finished_before = len(daemon.events("generation_finished"))
    _, report = run(client, mode=SINGLE_QUERY, model=DEMO, prompt_tokens=24, new_tokens=6, iterations=2)
    families = {k.name: k.family for k in model_device.kernels}
    rows = {row.kernel: row for row in report.single_query}
    assert list(rows) == ["gemm", "gemv", "auto"]
    for family, row in rows.items():
        enum = {"gemm": pb.KERNEL_FAMILY_GEMM, "gemv": pb.KERNEL_FAMILY_GEMV}.get(family)
        runnable = family == "auto" or any(families[name] == enum for name in usable(model_device))
        if not runnable:
            assert row.runs == 0
            assert f"kernel family {family} has no supported candidate" in report.verdict.summary
            continue
        assert row.runs == 2
        assert 0 < row.time_to_first_token_ms < row.total_ms
        assert 0 < row.ms_per_token_p50 <= row.ms_per_token_p90
        assert row.tokens_per_second > 0
    if rows["gemm"].runs and rows["gemv"].runs:
        assert report.verdict.gemv_over_gemm_speedup == pytest.approx(rows["gemm"].total_ms / rows["gemv"].total_ms)
    else:
        assert report.verdict.gemv_over_gemm_speedup == 0
        assert "no GEMV-over-GEMM speedup" in report.verdict.summary
    # Every run went through the model's worker, with a prompt of exactly 24 ids; the timed runs made 6 tokens.
    runs = daemon.events("generation_finished")[finished_before:]
    measured = sum(1 for row in rows.values() if row.runs)
    assert len(runs) >= measured * 3
    assert all(event["prompt_tokens"] == 24 for event in runs)
    assert [event["completion_tokens"] for event in runs[-2:]] == [6, 6]


def test_single_query_pins_each_named_kernel(client, daemon, model_device):
    names = usable(model_device)[:2]
    _, report = run(
        client, mode=SINGLE_QUERY, model=DEMO, kernels=[*names, "auto"], prompt_tokens=8, new_tokens=4, iterations=1
    )
    assert [(row.kernel, row.runs) for row in report.single_query] == [(name, 1) for name in [*names, "auto"]]


def test_batch_sweep_measures_each_concurrency_level(client, daemon):
    finished_before = len(daemon.events("generation_finished"))
    progress, report = run(
        client, mode=pb.BENCHMARK_MODE_BATCH_SWEEP, model=DEMO, batch_sizes=[4, 1], prompt_tokens=8, new_tokens=6
    )
    assert report.mode == pb.BENCHMARK_MODE_BATCH_SWEEP and progress
    assert [point.concurrent_sequences for point in report.batch_sweep] == [1, 4]
    for point in report.batch_sweep:
        assert point.tokens_per_second > 0 and 0 < point.inter_token_p50_ms <= point.inter_token_p99_ms
    assert "concurrent sequences reach" in report.verdict.summary
    # Per level: one warm-up round and one timed round, every sequence through the model's scheduler.
    assert len(daemon.events("generation_finished")) - finished_before == 2 * (1 + 4)


def unsupported_on_cpu(client: AwqdClient) -> str:
    cpu = client.describe().devices[0]
    return next(kernel.name for kernel in cpu.kernels if not kernel.supported)


BAD_REQUESTS = [
    ({}, grpc.StatusCode.INVALID_ARGUMENT, "mode"),
    (
        {"mode": pb.BENCHMARK_MODE_BATCH_SWEEP, "model": DEMO, "prompt_tokens": 8, "new_tokens": 4},
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch_sizes",
    ),
    (
        {
            "mode": pb.BENCHMARK_MODE_BATCH_SWEEP,
            "model": DEMO,
            "batch_sizes": [1000],
            "prompt_tokens": 8,
            "new_tokens": 4,
        },
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch_sizes",
    ),
    ({"mode": KERNEL}, grpc.StatusCode.INVALID_ARGUMENT, "model"),
    ({"mode": KERNEL, "model": DEMO, "architecture": "tiny"}, grpc.StatusCode.INVALID_ARGUMENT, "model"),
    ({"mode": KERNEL, "architecture": "llama-9"}, grpc.StatusCode.INVALID_ARGUMENT, "architecture"),
    ({"mode": KERNEL, "model": "nope"}, grpc.StatusCode.NOT_FOUND, "model 'nope'"),
    ({"mode": KERNEL, "architecture": "tiny", "batch_sizes": [1, 0]}, grpc.StatusCode.INVALID_ARGUMENT, "batch_sizes"),
    ({"mode": KERNEL, "architecture": "tiny", "batch_sizes": [4097]}, grpc.StatusCode.INVALID_ARGUMENT, "batch_sizes"),
    ({"mode": KERNEL, "architecture": "tiny", "iterations": 1001}, grpc.StatusCode.INVALID_ARGUMENT, "iterations"),
    (
        {"mode": KERNEL, "architecture": "tiny", "warmup_iterations": 101},
        grpc.StatusCode.INVALID_ARGUMENT,
        "warmup_iterations",
    ),
    ({"mode": KERNEL, "architecture": "tiny", "kernels": ["warp9"]}, grpc.StatusCode.INVALID_ARGUMENT, "kernels"),
    ({"mode": KERNEL, "architecture": "tiny", "kernels": ["auto"]}, grpc.StatusCode.INVALID_ARGUMENT, "kernels"),
    ({"mode": KERNEL, "architecture": "tiny", "device_index": 99}, grpc.StatusCode.INVALID_ARGUMENT, "device_index"),
    ({"mode": SINGLE_QUERY, "model": "nope", "prompt_tokens": 8, "new_tokens": 8}, grpc.StatusCode.NOT_FOUND, "model"),
    ({"mode": SINGLE_QUERY, "model": DEMO, "new_tokens": 8}, grpc.StatusCode.INVALID_ARGUMENT, "prompt_tokens"),
    (
        {"mode": SINGLE_QUERY, "model": DEMO, "prompt_tokens": DEMO_CONTEXT - 8, "new_tokens": 9},
        grpc.StatusCode.INVALID_ARGUMENT,
        "prompt_tokens",
    ),
    (
        {"mode": SINGLE_QUERY, "model": DEMO, "prompt_tokens": 8, "new_tokens": MAX_NEW_TOKENS_CAP + 1},
        grpc.StatusCode.INVALID_ARGUMENT,
        "new_tokens",
    ),
    (
        {"mode": SINGLE_QUERY, "model": DEMO, "prompt_tokens": 8, "new_tokens": 8, "batch_sizes": [2]},
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch_sizes",
    ),
    (
        {"mode": SINGLE_QUERY, "model": DEMO, "prompt_tokens": 8, "new_tokens": 8, "kernels": ["warp9"]},
        grpc.StatusCode.INVALID_ARGUMENT,
        "kernels",
    ),
]


@pytest.mark.parametrize(("fields", "code", "prefix"), BAD_REQUESTS)
def test_bad_requests_get_their_status_naming_the_field(client, fields, code, prefix):
    with pytest.raises(AwqdError) as raised:
        run(client, **fields)
    assert raised.value.code == code
    assert raised.value.message.startswith(prefix), raised.value.message


@pytest.mark.parametrize(("mode", "shown"), [(0, "BENCHMARK_MODE_UNSPECIFIED"), (9, "unknown mode 9")])
def test_a_missing_or_unknown_mode_names_the_values_on_the_wire(client, mode, shown):
    """An independent client reads the enum's wire names in the details, not awqd's own spelling of them."""
    with pytest.raises(AwqdError) as raised:
        run(client, mode=mode, architecture="tiny")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    values = [value.name for value in pb.BenchmarkMode.DESCRIPTOR.values if value.number]
    assert raised.value.message == f"mode: {shown}: must be one of {', '.join(values)}"


@pytest.mark.parametrize("mode", [KERNEL, SINGLE_QUERY])
def test_an_unsupported_kernel_is_a_failed_precondition(client, mode):
    fields = {"architecture": "tiny"} if mode == KERNEL else {"model": DEMO, "prompt_tokens": 8, "new_tokens": 8}
    if mode == SINGLE_QUERY and client.describe().models[0].device != "cpu":
        pytest.skip("the demo model runs on a GPU, where the CPU's unsupported kernels may run")
    with pytest.raises(AwqdError) as raised:
        run(client, mode=mode, device_index=0, kernels=[unsupported_on_cpu(client)], **fields)
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "supported:" in raised.value.message


def long_kernel_benchmark(client: AwqdClient, timeout: float | None = None):
    request = pb.BenchmarkRequest(
        mode=KERNEL, architecture="tiny", device_index=0, batch_sizes=[1, 2, 4, 8, 16, 32], iterations=1000
    )
    return client.benchmark(request, timeout=timeout)


def test_a_second_benchmark_on_the_same_device_is_unavailable(client, daemon):
    stopped_before = len(daemon.events("benchmark_stopped"))
    first = long_kernel_benchmark(client)
    assert next(first).HasField("progress")  # the first holds the device now
    with pytest.raises(AwqdError) as raised:
        run(client, mode=KERNEL, architecture="tiny", device_index=0, batch_sizes=[1], iterations=1)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert "a benchmark is already running on cpu" in raised.value.message
    first.close()  # cancels the call; the daemon stops between measurements and frees the device
    wait_for_event(daemon, "benchmark_stopped", stopped_before + 1)
    _, report = run(client, mode=KERNEL, architecture="tiny", device_index=0, batch_sizes=[1], iterations=1)
    assert report.kernel_latencies


def test_the_deadline_stops_a_benchmark(client, daemon):
    stopped_before = len(daemon.events("benchmark_stopped"))
    with pytest.raises(AwqdError) as raised:
        list(long_kernel_benchmark(client, timeout=1.5))
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for_event(daemon, "benchmark_stopped", stopped_before + 1)


def generate(client: AwqdClient) -> tuple[list[int], list[tuple[str, int, str, int]]]:
    ids, kernels = [], []
    for message in client.generate(DEMO, "The weather today", max_new_tokens=24):
        ids.extend(message.token_ids)
        if message.HasField("completion"):
            kernels = sorted((k.phase, k.batch_tokens, k.kernel, k.steps) for k in message.completion.kernels)
    return ids, kernels


def test_generate_during_a_single_query_benchmark_is_unaffected(client, model_device):
    expected = generate(client)
    reports, errors = [], []

    def benchmark() -> None:
        try:
            with AwqdClient(client.target, timeout=60) as other:
                reports.append(
                    run(
                        other,
                        mode=SINGLE_QUERY,
                        model=DEMO,
                        kernels=[*usable(model_device), "auto"],
                        prompt_tokens=32,
                        new_tokens=16,
                        iterations=3,
                    )[1]
                )
        except Exception as error:
            errors.append(error)

    thread = threading.Thread(target=benchmark)
    thread.start()
    during = []
    while thread.is_alive() and len(during) < 6:
        during.append(generate(client))
    thread.join(timeout=120)
    assert not errors and reports
    assert during and all(result == expected for result in during), "a pinned benchmark kernel leaked into Generate"
    assert all(row.runs == 3 for row in reports[0].single_query)


def awqctl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*AWQCTL, "--target", daemon.target, "bench", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(sys.path)},  # this code
    )


def test_awqctl_bench_json_and_plot(daemon, tmp_path):
    image = tmp_path / "kernels.png"
    result = awqctl(
        daemon, "--mode", "kernel", "--arch", "tiny", "--device-index", "0", "--batch", "1,2,4",
        "--iterations", "2", "--json", "--plot", str(image),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json_format.Parse(result.stdout, pb.BenchmarkReport())
    assert "kernel_latencies" in json.loads(result.stdout)  # proto field names
    assert {row.batch_tokens for row in report.kernel_latencies} == {1, 2, 4}
    data = image.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_awqctl_bench_prints_tables(daemon):
    kernel = awqctl(daemon, "--mode", "kernel", "--model", DEMO, "--batch", "1", "--iterations", "2")
    assert kernel.returncode == 0, kernel.stderr
    assert "kernel latency" in kernel.stdout and FP16 in kernel.stdout and "Fastest on" in kernel.stdout
    query = awqctl(daemon, "--mode", "single-query", "--prompt-tokens", "8", "--new-tokens", "4")  # the one model
    assert query.returncode == 0, query.stderr
    assert "single query" in query.stdout and "auto" in query.stdout
    sweep = awqctl(
        daemon, "--mode", "batch-sweep", "--model", DEMO, "--batch", "1,4", "--prompt-tokens", "8", "--new-tokens", "6"
    )
    assert sweep.returncode == 0, sweep.stderr
    assert "batch sweep" in sweep.stdout and "concurrent sequences reach" in sweep.stdout


def test_awqctl_bench_errors_are_one_line(daemon):
    unknown = awqctl(daemon, "--mode", "kernel", "--arch", "llama-9")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        "awqctl: error: INVALID_ARGUMENT: architecture: unknown architecture 'llama-9'; known: tiny, llama-2-7b, "
        "llama-3-8b, mistral-7b"
    ]
    sweep = awqctl(daemon, "--mode", "batch-sweep", "--model", DEMO)
    assert sweep.returncode == 2 and sweep.stderr.startswith("awqctl: error: INVALID_ARGUMENT: batch_sizes:")
    plot_query = awqctl(daemon, "--mode", "single-query", "--model", DEMO, "--plot", "x.png")
    assert plot_query.returncode == 2 and "--mode kernel" in plot_query.stderr


def test_awqctl_plot_without_matplotlib_is_a_clear_error(daemon, tmp_path):
    hide_matplotlib = (
        "import sys; sys.modules['matplotlib'] = None; from awqd_client.cli import main; main(sys.argv[1:])"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide_matplotlib, "--target", daemon.target, "bench", "--mode", "kernel",
         "--arch", "tiny", "--plot", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == "awqctl: error: --plot needs matplotlib: pip install 'awqd-client[plot]'"
    assert not (tmp_path / "x.png").exists()
