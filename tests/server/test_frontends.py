"""--frontend-processes: real frontend processes on the daemon's port, relaying to the engine process.

Every call below reaches the daemon through a frontend: with frontends, the engine process does not listen on
--listen at all. Calls are made on fresh channels (new connections), which the kernel deals to the frontends.
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from awqd.config import AUTO_FRONTENDS_WITH_GPU, ServeConfig
from awqd.errors import InvalidArgument
from awqd.server import frames
from awqd.server.frames import PEER_KEY
from awqd_client.v1 import awqd_pb2 as pb
from awqd_client.v1 import awqd_pb2_grpc

from daemon_process import DaemonProcess, serving, wait_until

DEMO = "awqd-demo"
PROMPT = "The weather today"  # greedy on the demo model runs to the length limit from this prompt
LONG = 480  # fits the demo model's 512-token context with the prompt
TOKEN = "frontend-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
FRONTENDS = 2


@pytest.fixture(scope="module")
def daemon(demo_model_dir, awqd_cache_dir, tmp_path_factory):
    # One KV slot and one queue place, so that a third stream is over capacity and gets the retry hint.
    with serving(
        awqd_cache_dir,
        "--model-root", str(tmp_path_factory.mktemp("models")),
        "--selection-budget", "3",
        "--frontend-processes", str(FRONTENDS),
        "--max-batch-size", "1",
        "--max-queued-requests", "1",
        "--metrics-listen", "127.0.0.1:0",
        "--auth-token", TOKEN,
    ) as process:  # fmt: skip
        yield process


def frontend_pids(daemon: DaemonProcess) -> set[int]:
    """The daemon's child processes that run awqd.server.frontend, from /proc."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == daemon.process.pid and b"awqd.server.frontend" in command:
            pids.add(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


def generate(target: str, max_new_tokens: int = 8, metadata=AUTH, **fields) -> tuple[list[int], pb.Completion]:
    """One Generate on a fresh channel and connection: its tokens and its Completion. (Channels share grpc's global
    subchannel pool unless told not to, so calls on fresh channels could still reuse one connection, and so reach one
    frontend.)"""
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        request = pb.GenerateRequest(model=DEMO, prompt=PROMPT, max_new_tokens=max_new_tokens, **fields)
        tokens, completion = [], None
        for message in awqd_pb2_grpc.AwqdServiceStub(channel).Generate(request, metadata=metadata, timeout=60):
            tokens += message.token_ids
            if message.HasField("completion"):
                completion = message.completion
    assert completion is not None, "the stream ended OK without its Completion"
    return tokens, completion


def generate_rpcs(daemon: DaemonProcess, since: int = 0) -> list[dict]:
    return [e for e in daemon.events("rpc")[since:] if e["method"] == "/awq.v1.AwqdService/Generate"]


def test_every_frontend_relays_generate_and_forwards_the_other_calls(daemon):
    assert len(frontend_pids(daemon)) == FRONTENDS
    before = len(daemon.events("rpc"))
    outputs = [generate(daemon.target) for _ in range(16)]  # 16 connections: both frontends get some
    assert len({tuple(tokens) for tokens, _ in outputs}) == 1, "greedy tokens differ between calls"
    for tokens, completion in outputs:
        assert len(tokens) == completion.usage.completion_tokens == 8
    with grpc.insecure_channel(daemon.target) as channel:
        posing = (*AUTH, (PEER_KEY, "ipv4:192.0.2.1:1"))  # a client naming another peer: the frontend replaces it
        described = awqd_pb2_grpc.AwqdServiceStub(channel).Describe(pb.DescribeRequest(), metadata=posing, timeout=30)
    assert [model.name for model in described.models] == [DEMO]

    relayed = generate_rpcs(daemon, before)
    assert Counter(e["code"] for e in relayed) == {"OK": 16}
    assert {e["frontend"] for e in relayed} == set(range(FRONTENDS)), "a frontend relayed no call"
    # Both the relayed and the forwarded calls are logged with the client's address, not the frontend's socket.
    logged = daemon.events("rpc")[before:]
    assert any(e["method"] == "/awq.v1.AwqdService/Describe" for e in logged)
    assert all(e["peer"].startswith("ipv4:127.0.0.1:") for e in logged), {e["peer"] for e in logged}


def test_streaming_calls_are_forwarded_both_ways(daemon):
    # Health's Watch streams from the engine; reflection is a bidirectional stream.
    with grpc.insecure_channel(daemon.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "awq.v1.AwqdService" in services and "grpc.health.v1.Health" in services


def test_statuses_through_a_frontend_are_the_engines(daemon):
    with grpc.insecure_channel(daemon.target) as channel:
        stub = awqd_pb2_grpc.AwqdServiceStub(channel)
        with pytest.raises(grpc.RpcError) as missing_token:
            list(stub.Generate(pb.GenerateRequest(model=DEMO, prompt=PROMPT, max_new_tokens=4), timeout=30))
        assert missing_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization" in missing_token.value.details()
        with pytest.raises(grpc.RpcError) as forwarded:
            stub.Describe(pb.DescribeRequest(), timeout=30)  # forwarded, not relayed: the engine's interceptor
        assert forwarded.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as too_long:
            request = pb.GenerateRequest(model=DEMO, prompt=PROMPT, max_new_tokens=100_000)
            list(stub.Generate(request, metadata=AUTH, timeout=30))
        assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert too_long.value.details().startswith("max_new_tokens:")
        with pytest.raises(grpc.RpcError) as unknown:
            request = pb.GenerateRequest(model="nope", prompt=PROMPT, max_new_tokens=4)
            list(stub.Generate(request, metadata=AUTH, timeout=30))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        corrupt = b"\x0a\xff\xff\xff\xff\x0f"  # a length-delimited field that runs past the end
        for method in ("Generate", "ListModels"):  # relayed, then forwarded
            with pytest.raises(grpc.RpcError) as unparsed:
                if method == "Generate":
                    list(channel.unary_stream(f"/awq.v1.AwqdService/{method}")(corrupt, metadata=AUTH, timeout=30))
                else:
                    channel.unary_unary(f"/awq.v1.AwqdService/{method}")(corrupt, metadata=AUTH, timeout=30)
            assert unparsed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert unparsed.value.details().startswith("request: cannot be parsed"), method


def test_over_capacity_through_frontends_gets_the_retry_hint_and_cancelling_frees_the_slots(daemon):
    before = len(daemon.events("rpc"))
    finished_before = len(daemon.events("generation_finished"))
    channels = [grpc.insecure_channel(daemon.target) for _ in range(3)]
    try:
        stubs = [awqd_pb2_grpc.AwqdServiceStub(channel) for channel in channels]
        request = pb.GenerateRequest(model=DEMO, prompt=PROMPT, max_new_tokens=LONG)
        running = stubs[0].Generate(request, metadata=AUTH, timeout=60)
        next(running)  # it holds the only slot
        queued = stubs[1].Generate(request, metadata=AUTH, timeout=60)
        wait_until(lambda: daemon.streams_in_flight() == 2, 30, "both streams to be in flight")
        with pytest.raises(grpc.RpcError) as refused:
            list(stubs[2].Generate(pb.GenerateRequest(model=DEMO, prompt=PROMPT, max_new_tokens=4), metadata=AUTH))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        assert "--max-queued-requests 1" in refused.value.details()
        assert int(dict(refused.value.trailing_metadata() or ())["retry-after-ms"]) >= 50
        running.cancel()
        queued.cancel()
        wait_until(lambda: daemon.streams_in_flight() == 0, 30, "the cancelled streams to give their slots back")
        # The engine ends a cancelled job at its next step boundary, after the stream's slot is back.
        wait_until(
            lambda: (
                [e["finish_reason"] for e in daemon.events("generation_finished")[finished_before:]]
                == ["cancelled", "cancelled"]
            ),
            30,
            "the engine to end both jobs",
        )
    finally:
        for channel in channels:
            channel.close()
    codes = Counter(e["code"] for e in generate_rpcs(daemon, before))
    assert codes == {"CANCELLED": 2, "RESOURCE_EXHAUSTED": 1}, codes
    tokens, _ = generate(daemon.target)
    assert len(tokens) == 8


def test_a_killed_frontend_is_restarted_and_calls_go_on(daemon):
    victim = min(frontend_pids(daemon))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: daemon.events("frontend_restarted"), 30, "the frontend to be restarted")
    (exited,) = daemon.events("frontend_exited")
    assert exited["code"] == -signal.SIGKILL
    assert victim not in frontend_pids(daemon) and len(frontend_pids(daemon)) == FRONTENDS
    outputs = [generate(daemon.target) for _ in range(8)]
    assert all(len(tokens) == 8 for tokens, _ in outputs)
    assert daemon.streams_in_flight() == 0
    assert daemon.metric("awqd_frontend_processes") == FRONTENDS
    assert daemon.metric("awqd_frontend_restarts_total", outcome="restarted") == 1


def test_a_restart_that_cannot_bind_is_retried_until_it_can(demo_model_dir, awqd_cache_dir, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with serving(
        awqd_cache_dir, "--model-root", str(tmp_path), "--selection-budget", "3", "--frontend-processes", "1",
        "--listen", f"127.0.0.1:{port}", "--metrics-listen", "127.0.0.1:0",
    ) as process:  # fmt: skip
        (frontend,) = frontend_pids(process)
        with socket.socket() as squatter:  # without SO_REUSEPORT: while it listens, no frontend can bind the port
            os.kill(frontend, signal.SIGKILL)
            wait_until(lambda: bound(squatter, port), 5, "the killed frontend's port to be free")
            squatter.listen()
            wait_until(lambda: process.events("frontend_restart_failed"), 30, "a restart to fail")
            assert process.metric("awqd_frontend_processes") == 0
            assert process.metric("awqd_frontend_restarts_total", outcome="failed") >= 1
        (exited,) = process.events("frontend_exited")
        failures = process.events("frontend_restart_failed")
        assert exited["restart_in_s"] == 1.0 and failures[0]["retry_in_s"] == 2.0  # the wait doubles per restart
        assert "Failed to bind" in failures[0]["error"], failures[0]
        wait_until(lambda: process.events("frontend_restarted"), 60, "the restart to be retried once the port is free")
        tokens, _ = generate(process.target, metadata=())
        assert len(tokens) == 8
        assert process.metric("awqd_frontend_processes") == 1


def bound(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


# The stream takes ~1 s alone on 2 cores, but 12-20 s with three busy processes beside it: the grace period and the
# deadline leave room for a loaded host. With 30 s, one loaded run saw the stream cancelled by the drain, most likely
# because the grace ran out.
DRAIN_GRACE_S = 120


def test_sigterm_drains_a_relayed_stream_then_everything_exits(demo_model_dir, awqd_cache_dir, tmp_path):
    process = DaemonProcess(
        awqd_cache_dir, "--model-root", str(tmp_path), "--selection-budget", "3",
        "--frontend-processes", "1", "--grace-period", str(DRAIN_GRACE_S),
    )  # fmt: skip
    try:
        process.wait_serving()
        (frontend,) = frontend_pids(process)
        with grpc.insecure_channel(process.target) as channel:
            request = pb.GenerateRequest(model=DEMO, prompt=PROMPT, max_new_tokens=LONG)
            stream = awqd_pb2_grpc.AwqdServiceStub(channel).Generate(request, timeout=DRAIN_GRACE_S)
            tokens = list(next(stream).token_ids)
            process.process.send_signal(signal.SIGTERM)
            for message in stream:  # the stream in flight completes
                tokens += message.token_ids
                completion = message.completion if message.HasField("completion") else None
        assert completion is not None and completion.usage.completion_tokens == len(tokens)
        assert process.process.wait(timeout=60) == 0
        wait_until(lambda: not alive(frontend), 10, "the frontend to exit")
    finally:
        process.stop()


def test_frontends_exit_when_the_engine_process_dies(demo_model_dir, awqd_cache_dir, tmp_path):
    with serving(
        awqd_cache_dir, "--model-root", str(tmp_path), "--selection-budget", "3", "--frontend-processes", "2"
    ) as process:  # fmt: skip
        frontends = frontend_pids(process)
        assert len(frontends) == 2
        process.process.kill()
        process.process.wait(timeout=30)
        wait_until(lambda: not any(alive(pid) for pid in frontends), 30, "the orphaned frontends to exit")


def test_a_port_the_frontends_cannot_bind_is_a_clean_error(tmp_path):
    with socket.socket() as taken:  # listening without SO_REUSEPORT: no frontend may share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable, "-m", "awqd", "serve", "--listen", f"127.0.0.1:{port}", "--cache-dir", str(tmp_path),
                "--no-demo-model", "--metrics-listen", "off", "--frontend-processes", "2",
            ],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 2
    (failed,) = [DaemonProcess.parse(line) for line in result.stderr.splitlines() if "bind_failed" in line]
    assert "frontend 0" in failed["error"] and "frontend 1" in failed["error"]
    assert "Traceback" not in result.stderr


def test_frontends_cannot_share_a_unix_socket(tmp_path):
    result = subprocess.run(
        [
            sys.executable, "-m", "awqd", "serve", "--listen", f"unix:{tmp_path}/awqd.sock", "--cache-dir",
            str(tmp_path), "--frontend-processes", "2",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--frontend-processes" in result.stderr


def test_a_frontend_count_that_is_not_a_number_is_refused_naming_the_flag(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "awqd", "serve", "--cache-dir", str(tmp_path), "--frontend-processes", "many"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--frontend-processes" in result.stderr and "number of processes or auto" in result.stderr


def test_auto_gives_frontends_to_a_node_with_a_gpu_only():
    assert ServeConfig().frontend_count(node_has_gpu=True) == AUTO_FRONTENDS_WITH_GPU > 0
    assert ServeConfig().frontend_count(node_has_gpu=False) == 0
    assert ServeConfig(listen="unix:/run/awqd.sock").frontend_count(node_has_gpu=True) == 0
    assert ServeConfig(frontend_processes=0).frontend_count(node_has_gpu=True) == 0
    assert ServeConfig(frontend_processes=3).frontend_count(node_has_gpu=False) == 3
    with pytest.raises(InvalidArgument, match="--frontend-processes"):
        ServeConfig(frontend_processes=65)


def test_frames_carry_records_and_a_reader_that_stops_reading_is_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(frames, "MAX_UNREAD_BYTES", 1 << 20)

    async def scenario() -> None:
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()
        server = await asyncio.start_unix_server(lambda r, w: accepted.set_result((r, w)), path=tmp_path / "relay")
        _, writer = await asyncio.open_unix_connection(tmp_path / "relay")
        peer_reader, peer_writer = await accepted
        outbox = frames.Outbox(writer)
        records = [("open", 1, b"request", (("authorization", "Bearer t"),), "ipv4:127.0.0.1:1"), ("cancel", 1)]
        for record in records:
            outbox.send(record)
        assert await frames.read_batch(peer_reader) == records  # both in one frame
        for call_id in range(200):  # 12.5 MiB that nobody reads
            outbox.send(("message", call_id, b"x" * 65536))
            await asyncio.sleep(0)
        assert writer.transport.is_closing(), "the outbox kept buffering for a peer that does not read"
        peer_writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
