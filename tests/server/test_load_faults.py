"""Load and faults against a real daemon: many streams, SIGTERM mid-stream, cancellation, the stream cap, fuzzing.

Every loop is bounded in count and time; a stream that neither completes nor ends with a status is a failure.
Latencies are printed (pytest -s), never asserted.
"""

import math
import shutil
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from awqd.kernels.capability import FAMILIES
from awqd.kernels.registry import candidate_names
from awqd_client import AwqdClient, AwqdError
from awqd_client.v1 import awqd_pb2 as pb
from awqd_client.v1 import awqd_pb2_grpc

from daemon_process import DaemonProcess, wait_until

DEMO = "awqd-demo"
PROMPT = "The weather today"  # greedy on the demo model runs to the length limit from this prompt
LONG = 480  # fits the demo model's 512-token context with the prompt
JOIN_TIMEOUT = 120
FUZZ_ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
}


@dataclass
class StreamResult:
    """What one client saw: the arrival time of each message, then a Completion or the status that ended it."""

    sent_at: float = 0.0
    arrivals: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    completion: pb.Completion | None = None
    error: AwqdError | None = None

    @property
    def ended(self) -> bool:
        return self.completion is not None or self.error is not None


def consume(client: AwqdClient, result: StreamResult, max_new_tokens: int, **options) -> None:
    result.sent_at = time.perf_counter()
    try:
        for message in client.generate(DEMO, PROMPT, max_new_tokens=max_new_tokens, timeout=60, **options):
            result.arrivals.append(time.perf_counter())
            result.token_ids.extend(message.token_ids)
            if message.HasField("completion"):
                result.completion = message.completion
    except AwqdError as error:
        result.error = error


def start_threads(target, count: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(slot,), daemon=True) for slot in range(count)]
    for thread in threads:
        thread.start()
    return threads


def join_all(threads: list[threading.Thread], timeout: float = JOIN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = sum(thread.is_alive() for thread in threads)
    assert hung == 0, f"{hung} client threads still running after {timeout} s"


def assert_complete(result: StreamResult, max_new_tokens: int) -> None:
    """A finished stream ran to its length limit and its summary counts what was streamed."""
    assert result.error is None, f"stream failed: {result.error}"
    assert result.completion is not None, "stream ended without a Completion"
    assert result.completion.finish_reason == pb.FINISH_REASON_LENGTH
    assert result.completion.usage.completion_tokens == len(result.token_ids) == max_new_tokens


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def serving_daemon(cache_dir, model_root, *args: str) -> DaemonProcess:
    process = DaemonProcess(
        cache_dir, "--model-root", str(model_root), "--selection-budget", "3", "--metrics-listen", "127.0.0.1:0", *args
    )
    try:
        process.wait_serving()
    except BaseException:
        process.stop()
        raise
    return process


@pytest.fixture(scope="module")
def daemon(demo_model_dir, awqd_cache_dir, tmp_path_factory):
    process = serving_daemon(
        awqd_cache_dir, tmp_path_factory.mktemp("models"), "--max-concurrent-streams", "40", "--max-workers", "48"
    )
    try:
        yield process
    finally:
        process.stop()


def test_32_concurrent_clients_all_complete(daemon):
    clients, requests_each, new_tokens = 32, 3, 16
    results = [[StreamResult() for _ in range(requests_each)] for _ in range(clients)]

    def client_loop(slot: int) -> None:
        with AwqdClient(daemon.target, timeout=30) as own:
            for result in results[slot]:
                consume(own, result, new_tokens)

    join_all(start_threads(client_loop, clients))
    flat = [result for per_client in results for result in per_client]
    lost = [result for result in flat if not result.ended]
    assert not lost, f"{len(lost)} of {len(flat)} streams ended with neither a Completion nor a status"
    # 32 streams stay below --max-concurrent-streams 40, so none may be refused: every one must complete.
    for result in flat:
        assert_complete(result, new_tokens)
    ttft_ms = [result.completion.timings.time_to_first_token_ms for result in flat]
    inter_token_ms = [(later - earlier) * 1000 for r in flat for earlier, later in pairwise(r.arrivals)]
    print(
        f"\nload: {len(flat)} streams x {new_tokens} tokens from {clients} clients; "
        f"TTFT p50 {statistics.median(ttft_ms):.1f} ms p99 {percentile(ttft_ms, 0.99):.1f} ms; "
        f"inter-token p50 {statistics.median(inter_token_ms):.2f} ms p99 {percentile(inter_token_ms, 0.99):.2f} ms"
    )
    assert daemon.health() == 1


def test_cancellation_storm_leaves_the_rest_complete_and_frees_capacity(daemon):
    clients, new_tokens = 16, 24
    finished_before = len(daemon.events("generation_finished"))
    results = [StreamResult() for _ in range(clients)]

    def client(slot: int) -> None:
        with AwqdClient(daemon.target, timeout=30) as own:
            if slot % 2 == 0:
                consume(own, results[slot], new_tokens)
                return
            stream = own.generate(DEMO, PROMPT, max_new_tokens=LONG, timeout=60)
            try:
                for _ in range(2):
                    results[slot].token_ids.extend(next(stream).token_ids)
            finally:
                stream.close()  # cancels the call mid-stream

    join_all(start_threads(client, clients))
    for result in results[0::2]:
        assert_complete(result, new_tokens)
    # A stream that falls behind gets its pending tokens coalesced, so two messages carry two tokens or more.
    assert all(2 <= len(result.token_ids) < LONG for result in results[1::2])

    def all_jobs_finished() -> bool:
        return len(daemon.events("generation_finished")) - finished_before >= clients

    wait_until(all_jobs_finished, 60, "every job of the storm to finish on the daemon")
    reasons = [event["finish_reason"] for event in daemon.events("generation_finished")[finished_before:]]
    assert sorted(reasons) == sorted(["length"] * (clients // 2) + ["cancelled"] * (clients // 2))
    fresh = StreamResult()
    with AwqdClient(daemon.target, timeout=30) as own:
        consume(own, fresh, 4)
    assert_complete(fresh, 4)


def test_over_capacity_is_refused_at_once_with_a_retry_hint_then_recovers(demo_model_dir, awqd_cache_dir, tmp_path):
    # One KV slot and one queue place: the first stream runs, the second waits, the third is over capacity.
    daemon = serving_daemon(awqd_cache_dir, tmp_path, "--max-batch-size", "1", "--max-queued-requests", "1")
    try:
        with AwqdClient(daemon.target, timeout=30) as first, AwqdClient(daemon.target, timeout=30) as second:
            held = [
                first.generate(DEMO, PROMPT, max_new_tokens=LONG, timeout=60),
                second.generate(DEMO, PROMPT, max_new_tokens=LONG, timeout=60),
            ]
            next(held[0])  # the only slot is taken: the second stream waits in the model's queue
            held_open = threading.Thread(target=next, args=(held[1],), daemon=True)
            held_open.start()
            wait_until(lambda: daemon.streams_in_flight() == 2, 10, "both streams to be in flight")
            with grpc.insecure_channel(daemon.target) as channel, pytest.raises(grpc.RpcError) as refused:
                request = pb.GenerateRequest(model=DEMO, prompt=PROMPT, max_new_tokens=4)
                list(awqd_pb2_grpc.AwqdServiceStub(channel).Generate(request, timeout=10))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
            assert "--max-queued-requests 1" in refused.value.details()
            assert "retry after about" in refused.value.details()
            retry_after = dict(refused.value.trailing_metadata() or ())["retry-after-ms"]
            assert int(retry_after) >= 50
            assert daemon.streams_in_flight() == 2, "the refused call must not take or leak a slot"
            held_open.join(timeout=JOIN_TIMEOUT)  # the second stream's first token: the first one has finished
            assert not held_open.is_alive()
            for stream in held:
                stream.close()
        wait_until(lambda: daemon.streams_in_flight() == 0, 30, "the cancelled streams to give their slots back")
        fresh = StreamResult()
        with AwqdClient(daemon.target, timeout=30) as own:
            consume(own, fresh, 4)
        assert_complete(fresh, 4)
    finally:
        daemon.stop()


def test_warm_before_serving_then_a_burst_up_to_the_queue_limit_is_admitted(
    demo_model_dir, nan_model_dir, awqd_cache_dir, tmp_path
):
    # One KV slot and three queue places, so "up to the limit" is exact: the burst never holds more than three
    # waiting requests, whether or not the scheduler has admitted one yet. A second model fails its warm-up.
    slots, queue, burst_tokens = 1, 3, 48
    shutil.copytree(demo_model_dir, tmp_path / "demo")
    shutil.copytree(nan_model_dir, tmp_path / "nan")
    daemon = serving_daemon(
        awqd_cache_dir, tmp_path, "--model", f"{DEMO}=demo", "--model", "broken=nan",
        "--max-batch-size", str(slots), "--max-queued-requests", str(queue),
        "--max-concurrent-streams", "20", "--queue-timeout", "120",
    )  # fmt: skip
    try:
        serving_at = time.time()
        results = [StreamResult() for _ in range(queue)]

        def client(slot: int) -> None:
            with AwqdClient(daemon.target, timeout=60) as own:
                consume(own, results[slot], burst_tokens)

        threads = start_threads(client, queue)  # the moment health said SERVING
        with AwqdClient(daemon.target, timeout=30) as own:
            model, broken = own.describe().models  # by name
        # A model failing warm-up is listed as failed, with the reason, and did not keep boot from SERVING.
        assert broken.name == "broken" and broken.state == pb.MODEL_STATE_FAILED
        assert "warm-up failed" in broken.error and "non-finite logits" in broken.error
        assert not broken.HasField("warmed_up_at") and not broken.kv_cache_slots
        # Ready means warm: warm-up finished, and was logged, before the daemon reported ready.
        assert model.name == DEMO and model.state == pb.MODEL_STATE_READY and model.HasField("warmed_up_at")
        assert model.warmed_up_at.ToNanoseconds() / 1e9 <= serving_at
        assert model.warmup_duration.ToTimedelta().total_seconds() > 0
        assert model.load_duration.ToTimedelta() >= model.warmup_duration.ToTimedelta()
        names = [DaemonProcess.parse(line).get("event") for line in daemon.log_lines]
        assert names.index("model_warmed_up") < names.index("model_ready") < names.index("ready")
        (warmed,) = daemon.events("model_warmed_up")  # the broken model logs model_failed instead
        assert warmed["decode_batches"] == [1] and warmed["prefill_tokens"][0] == 1

        wait_until(lambda: any(result.arrivals for result in results), 30, "one burst request to be running")
        # Beyond the limit: with the slot held, extra requests fill the queue again, and the next is refused.
        with grpc.insecure_channel(daemon.target) as channel:
            stub = awqd_pb2_grpc.AwqdServiceStub(channel)
            request = pb.GenerateRequest(model=DEMO, prompt=PROMPT, max_new_tokens=4)
            extras = [stub.Generate(request, timeout=30) for _ in range(queue + 2)]
            wait_until(lambda: sum(call.done() for call in extras) >= 2, 10, "the over-limit requests to be refused")
            for call in extras:
                call.cancel()
            codes = Counter(call.code() for call in extras)
            refusals = [call.details() for call in extras if call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] >= 2, codes
        assert all(f"and {queue} queued (--max-queued-requests {queue})" in details for details in refusals)
        join_all(threads)
        for result in results:  # the burst itself: nothing refused, every stream complete
            assert_complete(result, burst_tokens)
    finally:
        daemon.stop()


def test_sigterm_drains_in_flight_streams_refuses_new_ones_and_exits_zero(demo_model_dir, awqd_cache_dir, tmp_path):
    streams = 6
    daemon = serving_daemon(awqd_cache_dir, tmp_path, "--grace-period", "3")
    try:
        results = [StreamResult() for _ in range(streams)]

        def client(slot: int) -> None:
            with AwqdClient(daemon.target, timeout=30) as own:
                consume(own, results[slot], 400)

        threads = start_threads(client, streams)
        wait_until(lambda: daemon.streams_in_flight() == streams, 30, "every stream to be in flight")
        daemon.process.terminate()  # SIGTERM
        wait_until(lambda: daemon.events("draining"), 10, "the daemon to start draining")
        time.sleep(0.2)  # "draining" is logged just before the server stops taking calls
        with grpc.insecure_channel(daemon.target) as channel, pytest.raises(grpc.RpcError) as refused:
            request = pb.GenerateRequest(model=DEMO, prompt=PROMPT, max_new_tokens=4)
            list(awqd_pb2_grpc.AwqdServiceStub(channel).Generate(request, timeout=5))
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), refused.value
        assert daemon.process.wait(timeout=30) == 0
        join_all(threads, timeout=30)
        for result in results:
            assert result.ended, "a stream ended silently"
            if result.error is not None:
                assert result.error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), result.error
            else:
                assert result.completion.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_EOS)
                assert result.completion.usage.completion_tokens == len(result.token_ids)
        completed = sum(result.completion is not None for result in results)
        print(f"\nsigterm: {completed} of {streams} in-flight streams completed within the grace period")
        assert daemon.events("stopped")
    finally:
        daemon.stop()


# Branches weight the choices: close to a tenth of the requests are valid, so generation is fuzzed too; the
# rest are invalid or generate at most 4 tokens, so 1100 examples stay fast.
token_ids = st.lists(st.one_of(st.integers(0, 300), st.integers(0, 2**32 - 1)), min_size=1, max_size=8)
requests = st.one_of(
    st.tuples(st.text(min_size=1, max_size=40), st.just([])),
    st.tuples(st.just(""), token_ids),
    st.tuples(st.text(max_size=40), st.one_of(st.just([]), token_ids)),
).flatmap(
    lambda prompt: st.builds(
        dict,
        prompt=st.just(prompt[0]),
        prompt_token_ids=st.just(prompt[1]),
        model=st.one_of(st.just(DEMO), st.just(DEMO), st.just(DEMO), st.text(max_size=20), st.just("")),
        max_new_tokens=st.one_of(st.integers(0, 4), st.integers(1, 4), st.integers(0, 5000)),
        # Tiny positive temperatures overflow logits / temperature; huge ones flatten the distribution.
        temperature=st.one_of(st.sampled_from([0.0, 1e-45, 1e-40, 1e-30, 0.7, 1e30, 3e38]), st.floats(width=32)),
        top_p=st.one_of(st.none(), st.none(), st.sampled_from([0.0, 1e-45, 0.5, 1.0, 1.5]), st.floats(width=32)),
        top_k=st.one_of(st.just(0), st.integers(0, 2**32 - 1)),
        seed=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
        stop=st.one_of(
            st.lists(st.text(min_size=1, max_size=5), max_size=3), st.lists(st.text(max_size=5), max_size=3)
        ),
        kernel=st.one_of(
            st.sampled_from(["", "auto"]), st.sampled_from([*FAMILIES, *candidate_names()]), st.text(max_size=12)
        ),
    )
)


@pytest.fixture(scope="module")
def stub(daemon):
    with grpc.insecure_channel(daemon.target) as channel:
        yield awqd_pb2_grpc.AwqdServiceStub(channel)


def test_fuzzed_generate_requests_get_a_completion_or_a_clean_status(daemon, stub):
    examples = 0
    outcomes: Counter[str] = Counter()

    @settings(max_examples=1100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(fields=requests)
    def check(fields: dict) -> None:
        nonlocal examples
        examples += 1
        if examples % 100 == 0:
            assert daemon.health() == 1, f"daemon not SERVING after {examples} examples"
        request = pb.GenerateRequest(**fields)
        try:
            # Generous: a valid request may ask for ~500 tokens, and a loaded 2-core CI machine decodes slowly.
            messages = list(stub.Generate(request, timeout=120))
        except grpc.RpcError as error:
            assert error.code() in FUZZ_ALLOWED, f"{error.code().name}: {error.details()} for {request}"
            outcomes[error.code().name] += 1
            return
        assert messages and messages[-1].HasField("completion"), f"no Completion for {request}"
        streamed = sum(len(message.token_ids) for message in messages)
        assert messages[-1].completion.usage.completion_tokens == streamed
        outcomes["completed"] += 1

    check()
    print(f"\nfuzz: {examples} requests: {dict(outcomes)}")
    assert examples >= 1000
    assert outcomes["completed"] >= 50, f"too few valid requests to fuzz the generation path: {dict(outcomes)}"
    assert daemon.health() == 1
