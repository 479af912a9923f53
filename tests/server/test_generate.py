"""Generate and model management through a real daemon hosting the AutoAWQ-quantized demo model."""

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from awqd_client import AwqdClient, AwqdError
from awqd_client.v1 import awqd_pb2 as pb

from daemon_process import DaemonProcess, serving

AWQCTL = str(Path(sys.executable).parent / "awqctl")
DEMO = "awqd-demo"
MAX_NEW_TOKENS_CAP = 256


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def daemon(demo_model_dir, awqd_cache_dir, model_root):
    # The daemon finds the session's demo model already built in the shared cache directory.
    with serving(
        awqd_cache_dir,
        "--model-root", str(model_root),
        "--selection-budget", "20",
        "--max-new-tokens", str(MAX_NEW_TOKENS_CAP),
    ) as process:  # fmt: skip
        yield process


@pytest.fixture
def client(daemon):
    with AwqdClient(daemon.target, timeout=60) as client:
        yield client


def run(client: AwqdClient, prompt="The weather today", **options) -> tuple[str, list[int], pb.Completion]:
    text, ids, completion = "", [], None
    for message in client.generate(DEMO, prompt, **options):
        text += message.text
        ids.extend(message.token_ids)
        if message.HasField("completion"):
            completion = message.completion
    return text, ids, completion


def wait_for_event(daemon: DaemonProcess, name: str, predicate, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        matches = [event for event in daemon.events(name) if predicate(event)]
        if matches:
            return matches[-1]
        time.sleep(0.05)
    raise AssertionError(f"no {name} event matched within {timeout} s")


def test_demo_model_streams_tokens_then_a_summary(client):
    messages = list(client.generate(DEMO, "hello", max_new_tokens=12))
    deltas, final = messages[:-1], messages[-1]
    assert final.HasField("completion") and not any(m.HasField("completion") for m in deltas)
    completion = final.completion
    generated = [token for m in messages for token in m.token_ids]
    assert completion.usage.completion_tokens == len(generated)
    assert completion.usage.prompt_tokens > 0
    assert completion.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_EOS)
    if completion.finish_reason == pb.FINISH_REASON_LENGTH:
        assert len(generated) == 12
    assert completion.timings.time_to_first_token_ms > 0 and completion.timings.total_ms > 0
    phases = {use.phase: use for use in completion.kernels}
    assert phases["prefill"].steps == 1 and phases["prefill"].kernel
    assert sum(use.steps for use in completion.kernels if use.phase == "decode") == len(generated) - 1


def test_greedy_generation_is_deterministic(client):
    assert run(client, max_new_tokens=16)[1] == run(client, max_new_tokens=16)[1]


def test_seeded_sampling_is_reproducible(client):
    first = run(client, max_new_tokens=16, temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    again = run(client, max_new_tokens=16, temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    assert first[1] == again[1]


def test_stop_sequence_cuts_the_text(client):
    text, _, completion = run(client, max_new_tokens=40)
    assert completion.finish_reason == pb.FINISH_REASON_LENGTH, "the demo model should not stop early on greedy"
    stripped = text.strip()
    assert len(stripped) >= 6, f"need some text to pick a stop sequence from, got {text!r}"
    stop = stripped[len(stripped) // 2 : len(stripped) // 2 + 3]
    stopped_text, _, stopped = run(client, max_new_tokens=40, stop=[stop])
    assert stopped.finish_reason == pb.FINISH_REASON_STOP
    assert stop not in stopped_text
    assert stopped_text == text[: text.index(stop)]


def test_token_id_prompt_matches_text_prompt(client):
    _, ids, _ = run(client, "hello there", max_new_tokens=8)
    described = client.describe()
    assert described.models[0].name == DEMO
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(described.models[0].path)
    prompt_ids = tokenizer("hello there")["input_ids"]
    by_ids = [t for m in client.generate(DEMO, prompt_token_ids=prompt_ids, max_new_tokens=8) for t in m.token_ids]
    assert by_ids == ids


def test_the_streamed_text_is_the_decode_of_the_streamed_ids(client, demo_model_dir):
    """Hot sampling ends some streams inside a multi-byte character: its bytes come out as the tokenizer decodes
    them (U+FFFD), not dropped, so a client's text and ids agree."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    unfinished = 0
    for seed in range(10):
        text, ids, _ = run(client, "😀 héllo wörld", max_new_tokens=60, temperature=1.5, seed=seed)
        assert text == decode(ids), f"seed {seed}"
        # The same seed, alone again, gives the same ids: stopped where they end inside a character, it ends there.
        cut = next((length for length in range(1, len(ids)) if decode(ids[:length]).endswith("\ufffd")), None)
        if cut is not None:
            text, cut_ids, _ = run(client, "😀 héllo wörld", max_new_tokens=cut, temperature=1.5, seed=seed)
            assert cut_ids == ids[:cut] and text == decode(cut_ids) and text.endswith("\ufffd"), f"seed {seed}"
            unfinished += 1
    assert unfinished >= 3, f"only {unfinished} streams ended inside a character: the case is barely exercised"


def test_cancelling_mid_stream_frees_the_worker(client, daemon):
    stream = client.generate(DEMO, "a long story", max_new_tokens=MAX_NEW_TOKENS_CAP)
    next(stream)
    next(stream)
    stream.close()  # cancels the call
    cancelled = wait_for_event(daemon, "generation_finished", lambda e: e["finish_reason"] == "cancelled")
    assert cancelled["completion_tokens"] < MAX_NEW_TOKENS_CAP
    _, ids, completion = run(client, max_new_tokens=4)
    assert completion.usage.completion_tokens == len(ids)


def test_deadline_stops_the_generation(client, daemon):
    before = len(daemon.events("generation_finished"))
    with pytest.raises(AwqdError) as raised:
        # The tiny demo model makes ~1 token per ms on an idle machine: the deadline must cut well before the cap.
        run(client, max_new_tokens=MAX_NEW_TOKENS_CAP, timeout=0.05)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    event = wait_for_event(
        daemon,
        "generation_finished",
        lambda e: e["finish_reason"] == "cancelled" and len(daemon.events("generation_finished")) > before,
    )
    assert event["completion_tokens"] < MAX_NEW_TOKENS_CAP


def test_many_expired_deadlines_leave_the_daemon_serving(client, daemon):
    """A call that its deadline ended has no context left to read: reading it (its peer, for the log line) once
    crashed the whole process within a few such calls."""
    for _ in range(40):
        with pytest.raises(AwqdError) as raised:
            run(client, max_new_tokens=MAX_NEW_TOKENS_CAP, timeout=0.02)
        assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert daemon.process.poll() is None
    assert run(client, max_new_tokens=4)[2].usage.completion_tokens > 0


def test_concurrent_streams_on_one_model_all_complete(daemon):
    results: list[list[int]] = [[] for _ in range(4)]

    def stream(slot: int) -> None:
        with AwqdClient(daemon.target, timeout=60) as own:
            results[slot] = run(own, max_new_tokens=10)[1]

    threads = [threading.Thread(target=stream, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(results) and all(r == results[0] for r in results)  # greedy: the same prompt gives the same tokens


@pytest.mark.parametrize(
    ("options", "code", "field"),
    [
        ({"model": "no-such-model"}, grpc.StatusCode.NOT_FOUND, "no-such-model"),
        ({"prompt": ""}, grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
        ({"max_new_tokens": 0}, grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens"),
        ({"max_new_tokens": MAX_NEW_TOKENS_CAP + 1}, grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens"),
        ({"temperature": -0.5}, grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        ({"top_p": 0.0}, grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
        ({"top_p": 1.5}, grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
        ({"prompt": None, "prompt_token_ids": [5] * 600}, grpc.StatusCode.INVALID_ARGUMENT, "context window"),
        ({"prompt": None, "prompt_token_ids": [10**6]}, grpc.StatusCode.INVALID_ARGUMENT, "prompt_token_ids"),
        ({"stop": [""]}, grpc.StatusCode.INVALID_ARGUMENT, "stop"),
        ({"cache_salt": "é" * 129}, grpc.StatusCode.INVALID_ARGUMENT, "cache_salt"),
        ({"kernel": "no_such_kernel"}, grpc.StatusCode.INVALID_ARGUMENT, "kernel"),
        ({"kernel": "autoawq_gemv_cuda"}, grpc.StatusCode.FAILED_PRECONDITION, "supported:"),
        # Echoed back at full length, these would pass grpc's 8 KiB trailer limit: the client would see
        # RESOURCE_EXHAUSTED instead of the status.
        ({"model": "m" * 20000}, grpc.StatusCode.NOT_FOUND, "more bytes"),
        # Refused by its size, before it is tokenized (about a second per megabyte).
        ({"prompt": "hello " * 1_000_000}, grpc.StatusCode.INVALID_ARGUMENT, "bytes of text cannot fit"),
        ({"kernel": "k" * 20000}, grpc.StatusCode.INVALID_ARGUMENT, "kernel: unknown kernel"),
    ],
)
def test_bad_generate_requests_get_their_status(client, daemon, options, code, field):
    request = {"model": DEMO, "prompt": "hello", "max_new_tokens": 4, **options}
    model, prompt = request.pop("model"), request.pop("prompt")
    with pytest.raises(AwqdError) as raised:
        list(client.generate(model, prompt, **request))
    assert raised.value.code == code
    assert field in raised.value.message
    assert daemon.health() == 1  # still SERVING


def test_forcing_a_supported_kernel_uses_it(client):
    described = client.describe()
    usable = [k.name for k in described.devices[0].kernels if k.supported and k.correctness.passed]
    for kernel in usable:
        completion = run(client, max_new_tokens=4, kernel=kernel)[2]
        assert {use.kernel for use in completion.kernels} == {kernel}


def test_describe_lists_the_model(client):
    (model,) = [m for m in client.describe().models if m.name == DEMO]
    assert model.state == pb.MODEL_STATE_READY
    assert model.architecture == "LlamaForCausalLM"
    assert model.quant_config.w_bit == 4 and model.quant_config.packing == pb.QUANT_PACKING_GEMM
    assert model.device == "cpu" and model.weight_memory_bytes > 0 and model.context_length == 512
    # The default CPU KV budget (--kv-cache-tokens 16384) in 16-token blocks; up to 256 sequences per decode step.
    assert (model.kv_cache_slots, model.max_sequence_tokens, model.kv_cache_tokens) == (256, 512, 16384)
    assert (model.kv_cache_blocks, model.kv_cache_block_tokens, model.kv_cache_blocks_in_use) == (1024, 16, 0)
    assert model.kv_cache_bytes > 0
    assert Path(model.path).is_dir()
    assert model.HasField("warmed_up_at") and model.HasField("warmup_duration")


def test_a_prompt_that_starts_like_an_earlier_one_reports_its_cached_tokens(client):
    start = list(range(200, 245))  # 45 ids: two full blocks, then the rest
    first = [m for m in client.generate(DEMO, prompt_token_ids=start, max_new_tokens=4)][-1].completion
    again = [m for m in client.generate(DEMO, prompt_token_ids=[*start, 7, 8], max_new_tokens=4)][-1].completion
    assert (first.usage.prompt_tokens, first.usage.cached_prompt_tokens) == (45, 0)
    assert (again.usage.prompt_tokens, again.usage.cached_prompt_tokens) == (47, 32)
    (model,) = [m for m in client.describe().models if m.name == DEMO]
    assert model.prefix_caching and model.kv_cache_blocks_cached >= 2
    assert model.replicas[0].kv_cache_blocks_cached == model.kv_cache_blocks_cached


def test_prompts_share_cached_blocks_only_within_one_cache_salt(client):
    start = list(range(400, 445))

    def cached(salt: str) -> int:
        messages = client.generate(DEMO, prompt_token_ids=[*start, 9], max_new_tokens=2, cache_salt=salt)
        return list(messages)[-1].completion.usage.cached_prompt_tokens

    assert (cached("tenant-a"), cached("tenant-b"), cached(""), cached("tenant-a")) == (0, 0, 0, 32)


@pytest.mark.parametrize("path", ["../outside", "/etc", "nested/../../outside"])
def test_paths_outside_the_model_root_are_refused(client, path):
    with pytest.raises(AwqdError) as raised:
        client.load_model("escape", path)
    assert raised.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_a_missing_checkpoint_directory_is_not_found_and_leaves_no_model(client):
    with pytest.raises(AwqdError) as raised:
        client.load_model("typo", "no-such-checkpoint")
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert raised.value.message.startswith("path: 'no-such-checkpoint' is not a directory")
    assert "typo" not in [m.name for m in client.list_models()]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda client: client.load_model("é" * 10000, "copy"), "name"),
        (lambda client: client.unload_model(""), "name"),
        (lambda client: client.unload_model("@cpu"), "name"),
    ],
    ids=["long-load-name", "empty-unload-name", "replica-without-model"],
)
def test_bad_model_management_requests_name_the_field(client, daemon, call, field):
    with pytest.raises(AwqdError) as raised:
        call(client)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message.startswith(f"{field}: ")
    assert daemon.health() == 1


def test_load_generate_unload(client, daemon, demo_model_dir, model_root):
    shutil.copytree(demo_model_dir, model_root / "copy", dirs_exist_ok=True)
    model = client.load_model("copy", "copy")
    assert model.state == pb.MODEL_STATE_READY
    # Loaded at run time, it was warmed the same way before it turned ready.
    (described,) = [m for m in client.describe().models if m.name == "copy"]
    assert described.HasField("warmed_up_at") and described.warmed_up_at == model.warmed_up_at
    assert 0 < described.warmup_duration.ToNanoseconds() <= described.load_duration.ToNanoseconds()
    assert described.warmup_graphs == 0 and described.warmup_graph_memory_bytes == 0  # the CPU captures no graphs
    (warmed,) = [e for e in daemon.events("model_warmed_up") if e["model"] == "copy"]
    assert warmed["decode_batches"] == [1, 2, 4, 8, 16, 32, 64, 128, 256]  # every bucket up to --max-batch-size
    copy_ids = [t for m in client.generate("copy", "The weather today", max_new_tokens=8) for t in m.token_ids]
    assert copy_ids == run(client, max_new_tokens=8)[1]
    client.unload_model("copy")
    assert "copy" not in [m.name for m in client.list_models()]
    with pytest.raises(AwqdError) as raised:
        list(client.generate("copy", "hello", max_new_tokens=2))
    assert raised.value.code == grpc.StatusCode.NOT_FOUND


def test_corrupt_checkpoint_fails_alone(client, demo_model_dir, model_root):
    corrupt = model_root / "corrupt"
    shutil.copytree(demo_model_dir, corrupt, dirs_exist_ok=True)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(AwqdError) as raised:
        client.load_model("corrupt", "corrupt")
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "model.safetensors" in raised.value.message
    (listed,) = [m for m in client.list_models() if m.name == "corrupt"]
    assert listed.state == pb.MODEL_STATE_FAILED and "model.safetensors" in listed.error
    assert run(client, max_new_tokens=3)[2].usage.completion_tokens > 0  # the demo model still serves


def test_awqctl_generate_streams_text(daemon):
    result = subprocess.run(
        [AWQCTL, "--target", daemon.target, "generate", "--max-new-tokens", "6", "hello"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "tokens" in result.stderr  # the summary line


def test_awqctl_generate_json_is_one_message_per_line(daemon):
    result = subprocess.run(
        [AWQCTL, "--target", daemon.target, "generate", "--json", "--max-new-tokens", "5", "--model", DEMO, "hi"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line) for line in result.stdout.splitlines()]
    assert "completion" in messages[-1] and all("completion" not in m for m in messages[:-1])
    assert messages[-1]["completion"]["usage"]["completion_tokens"] == sum(
        len(m.get("token_ids", [])) for m in messages
    )


def test_awqctl_generate_error_is_one_line(daemon):
    result = subprocess.run(
        [AWQCTL, "--target", daemon.target, "generate", "--model", "missing", "hi"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "NOT_FOUND" in result.stderr


def test_sigterm_with_a_stream_in_flight_drains_and_exits_zero(demo_model_dir, awqd_cache_dir, tmp_path):
    process = DaemonProcess(awqd_cache_dir, "--model-root", str(tmp_path), "--grace-period", "3")
    try:
        process.wait_serving()
        outcome: list[object] = []

        def stream() -> None:
            with AwqdClient(process.target, timeout=30) as own:
                try:
                    messages = list(own.generate(DEMO, "once upon a time", max_new_tokens=500))
                    outcome.append(messages[-1].completion)
                except AwqdError as error:
                    outcome.append(error)

        thread = threading.Thread(target=stream)
        thread.start()
        wait_for_event(process, "rpc", lambda e: e.get("method") == "/grpc.health.v1.Health/Check")
        time.sleep(0.5)  # let the generation start
        started = time.monotonic()
        assert process.terminate(timeout=20) == 0
        assert time.monotonic() - started < 10
        thread.join(timeout=20)
        (result,) = outcome  # the stream ended with a completion or an explicit status, never silently
        if isinstance(result, AwqdError):
            assert result.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        else:
            assert result.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_EOS)
        assert process.events("signal_received") and process.events("stopped")
    finally:
        process.stop()
