"""The Prometheus endpoint of a real daemon hosting the demo model, scraped on loopback during and after Generate."""

import time

import grpc
import pytest

from awqd_client import AwqdClient, AwqdError
from awqd_client.v1 import awqd_pb2 as pb
from awqd_client.v1 import awqd_pb2_grpc

from daemon_process import serving

DEMO = "awqd-demo"
GENERATE = "/awq.v1.AwqdService/Generate"
SOURCES = {"measured", "cache_validated", "capability_rule", "forced"}


@pytest.fixture(scope="module")
def daemon(demo_model_dir, awqd_cache_dir):
    # One decode row, so a second concurrent Generate waits in the queue and the queue-depth gauge shows it.
    with serving(
        awqd_cache_dir, "--selection-budget", "3", "--metrics-listen", "127.0.0.1:0", "--max-batch-size", "1"
    ) as process:
        yield process


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def value(samples: Samples, name: str, /, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for sample_name, labels in samples if sample_name == name]


def test_metrics_during_and_after_generate(daemon):
    before = daemon.scrape()
    request = pb.GenerateRequest(model=DEMO, prompt="The weather today", max_new_tokens=300)
    with grpc.insecure_channel(daemon.target) as channel:
        stub = awqd_pb2_grpc.AwqdServiceStub(channel)
        calls = [stub.Generate(request) for _ in range(2)]  # the second waits in the model's queue
        deadline = time.monotonic() + 30
        # A scrape reads each gauge at its own instant, and the loop can take the second call, or end the first one,
        # in between: so poll until one scrape sees both streams, the second one queued and the first one's blocks.
        during = daemon.scrape()
        while not (
            value(during, "awqd_queue_depth", model=DEMO, device="cpu") == 1
            and value(during, "awqd_streams_in_flight") == 2
            and value(during, "awqd_kv_cache_blocks_in_use", model=DEMO, device="cpu") > 0
        ):
            assert time.monotonic() < deadline, "no scrape saw one Generate running, with its blocks, and one queued"
            during = daemon.scrape()
        completions = [list(call)[-1].completion for call in calls]
    after = daemon.scrape()

    def grew(name: str, /, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("awqd_rpc_requests_total", method=GENERATE, code="OK") == 2
    generated = sum(c.usage.completion_tokens for c in completions)
    assert generated > 0
    assert grew("awqd_generated_tokens_total", model=DEMO, device="cpu") == generated
    assert grew("awqd_time_to_first_token_seconds_count", model=DEMO, device="cpu") == 2
    # One gap between consecutive sampled tokens; an end-of-sequence token is sampled but not streamed.
    gaps = sum(c.usage.completion_tokens - 1 + (c.finish_reason == pb.FINISH_REASON_EOS) for c in completions)
    assert grew("awqd_inter_token_latency_seconds_count", model=DEMO, device="cpu") == gaps
    # The histograms hold exactly the times each completion reports.
    ttft_ms = sum(c.timings.time_to_first_token_ms for c in completions)
    ttft_s = grew("awqd_time_to_first_token_seconds_sum", model=DEMO, device="cpu")
    assert ttft_s * 1000 == pytest.approx(ttft_ms, rel=1e-6)
    decode_ms = sum(c.timings.ms_per_output_token * (c.usage.completion_tokens - 1) for c in completions)
    if all(c.finish_reason == pb.FINISH_REASON_LENGTH for c in completions):
        decode_s = grew("awqd_inter_token_latency_seconds_sum", model=DEMO, device="cpu")
        assert decode_s * 1000 == pytest.approx(decode_ms, rel=1e-6)
    for message in ("first", "last"):  # each stream's first token and its completion, through the real server loop
        assert grew("awqd_stream_delivery_lag_seconds_count", model=DEMO, message=message) == 2
    assert value(after, "awqd_queue_depth", model=DEMO, device="cpu") == 0
    # The default CPU budget, 16384 tokens in 16-token blocks, all free again.
    assert value(after, "awqd_kv_cache_tokens", model=DEMO, device="cpu") == 16384
    assert value(after, "awqd_kv_cache_blocks", model=DEMO, device="cpu") == 1024
    assert value(after, "awqd_kv_cache_blocks_in_use", model=DEMO, device="cpu") == 0
    assert value(after, "awqd_streams_in_flight") == 0


def test_decisions_memory_and_model_state(daemon):
    samples = daemon.scrape()
    with AwqdClient(daemon.target) as client:
        cpu = client.describe().devices[0]
    decisions = [labels for labels in series(samples, "awqd_kernel_decision_info") if labels["device_uuid"] == "cpu"]
    assert {int(d["bucket"]): d["kernel"] for d in decisions} == {d.batch_tokens: d.kernel for d in cpu.decisions}
    assert all(d["device"] == "cpu" and d["source"] in SOURCES for d in decisions)
    (logged,) = [e for e in daemon.events("kernels_selected") if e["device"] == "cpu"]
    assert logged["kernels"] == {str(d.batch_tokens): d.kernel for d in cpu.decisions}

    cpu_labels = {"device_uuid": "cpu", "device": "cpu", "name": cpu.name}
    total = value(samples, "awqd_device_memory_total_bytes", **cpu_labels)
    free = value(samples, "awqd_device_memory_free_bytes", **cpu_labels)
    assert total == cpu.memory_total_bytes and 0 < free <= total

    states = {
        labels["state"]: value(samples, "awqd_model_state", **labels)
        for labels in series(samples, "awqd_model_state")
        if labels["model"] == DEMO
    }
    assert states == {"loading": 0, "ready": 1, "failed": 0}


def test_refused_calls_are_counted_with_their_code(daemon):
    before = value(daemon.scrape(), "awqd_rpc_requests_total", method=GENERATE, code="NOT_FOUND")
    with AwqdClient(daemon.target) as client, pytest.raises(AwqdError):
        list(client.generate("no-such-model", "hello"))
    after = value(daemon.scrape(), "awqd_rpc_requests_total", method=GENERATE, code="NOT_FOUND")
    assert after == before + 1


def test_metrics_off_serves_no_endpoint(tmp_path):
    with serving(tmp_path, "--no-demo-model", "--selection-budget", "1", "--metrics-listen", "off") as process:
        assert process.events("metrics_disabled") and not process.events("metrics_listening")
