"""Many streams on one asyncio loop: the engine-to-loop bridge, and 500 concurrent Generate streams through gRPC."""

import asyncio
import threading
import time
from collections import Counter

import grpc
import pytest
from prometheus_client import REGISTRY

from awqd.engine.request import GenerateParams
from awqd.engine.sequence import Finished, Job, TokenDelta
from awqd.errors import ResourceExhausted
from awqd.server.events import EventBridge, Message
from awqd_client.v1 import awqd_pb2 as pb
from awqd_client.v1 import awqd_pb2_grpc

from daemon_process import serving

DEMO = "awqd-demo"


def job() -> Job:
    params = GenerateParams(
        model=DEMO, prompt="hi", prompt_token_ids=(), max_new_tokens=3, temperature=0.0, top_p=None, top_k=0,
        seed=None, stop=(), kernel="",
    )  # fmt: skip
    return Job(params=params, prompt_ids=[1], pinned=None)


def finished(tokens: int) -> Finished:
    return Finished("length", 1, tokens, 0.0, 0.0, 0.0, 0.0, ())


def test_events_put_before_and_after_listening_arrive_once_in_order():
    events = job().events
    events.put(TokenDelta("a", (1,)))
    seen = []
    events.listen(seen.append)
    events.put(TokenDelta("b", (2,)))
    assert [event.text for event in seen] == ["a", "b"]


def test_a_blocking_reader_still_gets_the_events():
    blocking = job()
    for event in (TokenDelta("a", (1,)), finished(1)):
        blocking.events.put(event)
    assert [type(event) for event in blocking.results()] == [TokenDelta, Finished]


@pytest.mark.parametrize("form", ["pull", "push"])
def test_bridge_streams_from_engine_threads_and_wakes_the_loop_once_per_burst(form):
    async def scenario() -> tuple[list[list[str]], int]:
        loop = asyncio.get_running_loop()
        bridge = EventBridge(loop)
        wakeups = 0
        schedule = loop.call_soon_threadsafe

        def counting(callback, *args):
            nonlocal wakeups
            wakeups += 1
            return schedule(callback, *args)

        loop.call_soon_threadsafe = counting
        jobs = [job() for _ in range(50)]

        async def pull(running: Job) -> list[str]:
            return [rendered(message) async for message in bridge.stream(running)]

        async def push(running: Job) -> list[str]:
            sent = []
            await bridge.deliver(running, lambda message: sent.append(rendered(message)))
            return sent

        def engine_step() -> None:  # one decode step's tokens for every stream, then each one's summary
            for token in (1, 2):
                for each in jobs:
                    each.events.put(TokenDelta(str(token), (token,)))
            for each in jobs:
                each.events.put(finished(2))

        readers = asyncio.gather(*((pull if form == "pull" else push)(each) for each in jobs))
        await asyncio.sleep(0)  # every reader is listening
        thread = threading.Thread(target=engine_step)
        thread.start()
        thread.join()  # the loop is held meanwhile, so the whole burst is pending before it runs: deterministic
        texts = await asyncio.wait_for(readers, timeout=10)
        return texts, wakeups

    counted_before = {message: delivery_lags(message) for message in ("first", "last")}
    texts, wakeups = asyncio.run(scenario())
    # Each stream's two tokens and its completion came in one burst: one message for all three.
    assert texts == [["12 end"]] * 50
    assert wakeups == 1, f"{wakeups} loop wake-ups for one burst of 150 events"
    for message, (count, total) in counted_before.items():  # each stream's first token and completion, once each
        assert delivery_lags(message)[0] == count + 50
        assert delivery_lags(message)[1] > total


def rendered(message: Message) -> str:
    parts = [message.delta.text] if message.delta is not None else []
    return " ".join(parts + (["end"] if message.finished is not None else []))


def delivery_lags(message: str) -> tuple[float, float]:
    """awqd_stream_delivery_lag_seconds' count and sum for the test streams' model and this message."""
    labels = {"model": DEMO, "message": message}
    sample = REGISTRY.get_sample_value
    count = sample("awqd_stream_delivery_lag_seconds_count", labels) or 0.0
    return count, sample("awqd_stream_delivery_lag_seconds_sum", labels) or 0.0


def test_bridge_merges_only_what_a_stream_has_fallen_behind_on():
    async def scenario() -> list[tuple[str, tuple[int, ...], bool]]:
        bridge = EventBridge(asyncio.get_running_loop())
        running = job()
        stream = bridge.stream(running)
        seen = []
        running.events.put(TokenDelta("a", (1,)))
        seen.append(await anext(stream))  # kept up: one message per token
        for event in (TokenDelta("b", (2,)), TokenDelta("", ()), TokenDelta("c", (3,)), finished(3)):
            running.events.put(event)
        seen += [message async for message in stream]
        return [(m.delta.text, m.delta.token_ids, m.finished is not None) for m in seen]

    # The deltas it fell behind on merge into one, and the completion rides on the last of them.
    assert asyncio.run(scenario()) == [("a", (1,), False), ("bc", (2, 3), True)]


def test_a_completion_read_alone_is_a_message_of_its_own():
    async def scenario() -> list[str]:
        bridge = EventBridge(asyncio.get_running_loop())
        running = job()
        stream = bridge.stream(running)
        running.events.put(TokenDelta("a", (1,)))
        seen = [await anext(stream)]  # the stream caught up before the completion came
        running.events.put(finished(1))
        seen += [message async for message in stream]
        return [rendered(message) for message in seen]

    assert asyncio.run(scenario()) == ["a", "end"]


def test_bridge_raises_the_error_that_ended_a_job():
    async def scenario() -> None:
        bridge = EventBridge(asyncio.get_running_loop())
        failing = job()
        stream = bridge.stream(failing)
        failing.events.put(TokenDelta("a", (1,)))
        failing.events.put(ResourceExhausted("queue full", retry_after_ms=70))
        assert (await anext(stream)).delta.text == "a"
        with pytest.raises(ResourceExhausted):
            await anext(stream)

    asyncio.run(scenario())


def test_push_sends_each_wake_up_as_it_comes_and_ends_after_the_last():
    async def scenario() -> tuple[list[str], bool]:
        bridge = EventBridge(asyncio.get_running_loop())
        running = job()
        sent = []
        done = bridge.deliver(running, lambda message: sent.append(rendered(message)))
        running.events.put(TokenDelta("a", (1,)))
        await asyncio.sleep(0)  # the wake-up runs
        running.events.put(TokenDelta("b", (2,)))
        await asyncio.sleep(0)
        before_the_end = done.done()
        running.events.put(finished(2))
        await asyncio.wait_for(done, timeout=10)
        return sent, before_the_end

    assert asyncio.run(scenario()) == (["a", "b", "end"], False)


def test_push_fails_only_the_stream_whose_send_raised():
    async def scenario() -> tuple[list[str], BaseException | None]:
        bridge = EventBridge(asyncio.get_running_loop())
        broken, healthy = job(), job()
        sent = []

        def refuse(message: Message) -> None:
            raise ValueError("cannot serialize")

        failed = bridge.deliver(broken, refuse)
        fine = bridge.deliver(healthy, lambda message: sent.append(rendered(message)))
        for running in (broken, healthy):  # one burst: the broken stream's send runs first
            running.events.put(TokenDelta("a", (1,)))
            running.events.put(finished(1))
        await asyncio.wait_for(fine, timeout=10)
        await asyncio.wait((failed,), timeout=10)
        return sent, failed.exception()

    sent, error = asyncio.run(scenario())
    assert sent == ["a end"]
    assert isinstance(error, ValueError)


def test_push_sends_what_came_before_the_error_that_ended_a_job_then_raises_it():
    async def scenario() -> list[str]:
        bridge = EventBridge(asyncio.get_running_loop())
        failing = job()
        sent = []
        done = bridge.deliver(failing, lambda message: sent.append(rendered(message)))
        failing.events.put(TokenDelta("a", (1,)))
        failing.events.put(ResourceExhausted("queue full", retry_after_ms=70))
        with pytest.raises(ResourceExhausted):
            await asyncio.wait_for(done, timeout=10)
        return sent

    assert asyncio.run(scenario()) == ["a"]


@pytest.mark.parametrize("form", ["pull", "push"])
def test_a_stream_whose_reader_went_away_drops_its_later_events(form):
    async def scenario() -> tuple[list[str], list[dict]]:
        loop = asyncio.get_running_loop()
        errors = []  # what the loop's callbacks raised: a dropped event must raise nothing there
        loop.set_exception_handler(lambda _, context: errors.append(context))
        bridge = EventBridge(loop)
        running = job()
        sent = []
        if form == "push":
            bridge.deliver(running, lambda message: sent.append(rendered(message))).cancel()
        else:
            stream = bridge.stream(running)
            running.events.put(TokenDelta("a", (1,)))
            sent.append(rendered(await anext(stream)))
            await stream.aclose()
        running.events.put(TokenDelta("b", (2,)))
        running.events.put(finished(2))
        await asyncio.sleep(0.01)
        return sent, errors

    assert asyncio.run(scenario()) == ([] if form == "push" else ["a"], [])


STREAMS = 500
NEW_TOKENS = 4
CONNECTIONS = 4  # the kernel deals connections, not calls, to frontend processes
BOUND_S = 150  # two slow cores take ~20 s; the bound is for a hung stream, not for speed


@pytest.mark.parametrize("frontends", [0, 2], ids=["engine-loop", "2-frontend-processes"])
def test_500_concurrent_streams_all_complete_or_end_with_a_status(demo_model_dir, awqd_cache_dir, tmp_path, frontends):
    with serving(
        awqd_cache_dir, "--model-root", str(tmp_path), "--selection-budget", "3",
        "--frontend-processes", str(frontends),
    ) as daemon:  # fmt: skip

        async def one(stub, index: int) -> tuple[str, int, pb.Completion | None]:
            request = pb.GenerateRequest(
                model=DEMO, prompt_token_ids=[100 + index % 1000, 7, 42], max_new_tokens=NEW_TOKENS
            )
            tokens, completion = 0, None
            try:
                async for message in stub.Generate(request, timeout=BOUND_S - 30):
                    tokens += len(message.token_ids)
                    if message.HasField("completion"):
                        completion = message.completion
            except grpc.aio.AioRpcError as error:
                return error.code().name, tokens, None
            return "OK", tokens, completion

        async def storm() -> list[tuple[str, int, pb.Completion | None]]:
            channels = [grpc.aio.insecure_channel(daemon.target) for _ in range(CONNECTIONS)]
            try:
                stubs = [awqd_pb2_grpc.AwqdServiceStub(channel) for channel in channels]
                calls = (one(stubs[i % CONNECTIONS], i) for i in range(STREAMS))
                return await asyncio.wait_for(asyncio.gather(*calls), BOUND_S)
            finally:
                for channel in channels:
                    await channel.close()

        started = time.monotonic()
        outcomes = asyncio.run(storm())
        elapsed = time.monotonic() - started
        codes = Counter(code for code, _, _ in outcomes)
        print(f"\n{STREAMS} streams in {elapsed:.1f} s: {dict(codes)}")
        assert len(outcomes) == STREAMS
        # An explicit refusal is allowed (a slow machine may run past --queue-timeout); nothing else is.
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
        for code, tokens, completion in outcomes:
            if code == "OK":
                assert completion is not None, "a stream ended OK without its Completion"
                assert completion.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_EOS)
                assert completion.usage.completion_tokens == tokens
        assert codes["OK"] >= STREAMS // 2, codes
        assert daemon.health() == 1
