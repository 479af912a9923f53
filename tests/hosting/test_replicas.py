"""Replicas: a model placed on several devices runs one real engine per device, and Generate goes to the least
loaded. The devices are the host CPU listed several times (--cpu-devices, tests only): the engines, scheduler
threads, KV caches, routing, failure and unload are all real; only the device count is simulated.

The in-process tests drive the model manager on the demo model; the daemon test runs `awqd serve` over gRPC.
"""

import threading
import time

import grpc
import pytest

from awqd.config import EngineSettings, ModelSpec
from awqd.engine.request import GenerateParams
from awqd.engine.sequence import Finished, Job
from awqd.errors import InvalidArgument, NotFound, Unavailable
from awqd.hosting.manager import ModelManager
from awqd.hosting.replicas import ModelState, resolve_placement
from awqd.kernels.base import Dispatch
from awqd.kernels.candidates.reference_torch import ReferenceTorch
from awqd.kernels.selection import select_kernels
from awqd.models.demo import DEMO_NAME
from awqd.node.devices import DeviceInfo, discover
from awqd_client.v1 import awqd_pb2 as pb
from awqd_client.v1 import awqd_pb2_grpc

from daemon_process import serving


def device(index: int, kind: str, torch_device: str) -> DeviceInfo:
    return DeviceInfo(index, kind, f"{kind}-{index}", "test device", None, 0, torch_device, None)


NODE = (device(0, "cpu", "cpu"), device(1, "cuda", "cuda:0"), device(2, "cuda", "cuda:1"), device(3, "cuda", ""))


def test_placement_names_devices_or_all_and_errors_name_the_field():
    assert resolve_placement("", NODE, "cuda:0") == ["cuda:0"]
    assert resolve_placement("all", NODE, "cuda:0") == ["cuda:0", "cuda:1"]  # every GPU torch can use
    assert resolve_placement("cuda:1,cpu", NODE, "cuda:0") == ["cuda:1", "cpu"]
    assert resolve_placement("cuda", NODE, "cuda:0") == ["cuda:0"]
    assert resolve_placement("all", NODE[:1], "cpu") == ["cpu"]  # no GPU: every CPU device
    for text, words in (
        ("cuda:2", "cuda:2 is not a device of this node"),
        ("cuda:0,,cuda:1", "empty device"),
        ("all,cuda:0", "'all' stands alone"),
        ("cuda:0,cuda:0", "names a device twice"),
        ("cuda,cuda:0", "names a device twice"),
    ):
        with pytest.raises(InvalidArgument, match=words) as caught:
            resolve_placement(text, NODE, "cuda:0")
        assert caught.value.field == "device"
    assert ModelSpec.parse("m=path@cuda:0,cuda:2").device == "cuda:0,cuda:2"
    with pytest.raises(InvalidArgument, match="stands alone") as caught:
        ModelSpec.parse("m=path@all,cuda:0")
    assert caught.value.field == "--model m"


def test_an_identical_device_revalidates_the_shared_measurement(tmp_path):
    first, second = discover(2).devices[:2]
    shapes = [(128, 128), (64, 128), (128, 64)]
    measured = select_kernels(first, shapes, 64, tmp_path, budget_s=30.0, buckets=(1, 512))
    assert measured.source == "measured" and any(note.startswith("saved to") for note in measured.notes)
    shared = select_kernels(second, shapes, 64, tmp_path, budget_s=30.0, buckets=(1, 512), shared_from=first.uuid)
    assert "re-validating the decisions measured on cpu-0 (same fingerprint)" in shared.notes
    assert shared.fingerprint == measured.fingerprint and shared.device_uuid == "cpu-1"
    if shared.source == "cache_validated":  # a loaded CI host may re-time the ordering differently and re-measure
        assert [d.kernel for d in shared.decisions] == [d.kernel for d in measured.decisions]
    else:
        assert any(note.startswith("re-measuring") for note in shared.notes), shared.notes


class ReferencePlanner:
    """Kernel selection's answer for the demo model on the CPU, without running selection."""

    def plan(self, torch_device: str, kernel: str):
        return Dispatch.single(ReferenceTorch()), []

    def resolve(self, torch_device: str, kernel: str):
        raise AssertionError("no test pins a kernel")


@pytest.fixture
def manager(demo_model_dir):
    """The demo model on two simulated CPU devices, one real engine each."""
    settings = EngineSettings(kv_cache_tokens=2048, max_batch_size=4)
    models = ModelManager(demo_model_dir.parent, "cpu:0", ReferencePlanner(), settings, discover(2).devices)
    models.load(DEMO_NAME, demo_model_dir, "all")
    yield models
    models.close()


def job(max_new_tokens: int) -> Job:
    params = GenerateParams(DEMO_NAME, "", (1, 2, 3), max_new_tokens, 0.0, None, 0, None, (), "")
    return Job(params=params, prompt_ids=[1, 2, 3], pinned=None)


class EngineCrash(BaseException):
    """What kills a scheduler thread: an error its step handler does not catch."""


def crash(*args, **kwargs):
    raise EngineCrash("the device is gone")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_routing_goes_to_the_least_loaded_and_a_failed_replica_leaves_it(manager):
    hosted = manager.ready(DEMO_NAME)
    first, second = hosted.replicas
    assert (first.device, second.device) == ("cpu:0", "cpu:1")
    assert hosted.state == ModelState.READY and hosted.device == "cpu:0"

    # cpu:1's engine dies at its first decode step, with a request in flight.
    second.scheduler.runner.decode = crash
    survivor, doomed = job(500), job(8)
    assert manager.submit(hosted, survivor) is first  # both idle: placement order
    assert manager.submit(hosted, doomed) is second  # cpu:0 now has up to 503 tokens to process
    with pytest.raises(Unavailable, match=f"replica {DEMO_NAME}@cpu:1 failed") as caught:
        list(doomed.results())
    assert "other ready replicas keep serving" in str(caught.value)
    assert second.state == ModelState.FAILED and "scheduler thread ended" in second.error

    # The model stays ready on its other replica, and routing skips the failed one.
    assert manager.ready(DEMO_NAME) is hosted and hosted.state == ModelState.READY
    later = job(4)
    assert manager.submit(hosted, later) is first
    assert isinstance(list(later.results())[-1], Finished)
    finished = list(survivor.results())[-1]
    assert isinstance(finished, Finished) and finished.completion_tokens > 0
    assert (first.routed, second.routed) == (2, 1)

    # The failed replica can be unloaded by name; the last one takes the model with it.
    manager.unload(f"{DEMO_NAME}@cpu:1")
    assert hosted.devices == ["cpu:0"]
    with pytest.raises(NotFound, match="no replica on 'cpu:1'"):
        manager.unload(f"{DEMO_NAME}@cpu:1")
    manager.unload(f"{DEMO_NAME}@cpu:0")
    assert manager.list() == []


def test_unloading_a_replica_under_load_finishes_its_requests(manager):
    hosted = manager.ready(DEMO_NAME)
    jobs = [job(400) for _ in range(4)]
    routed = [manager.submit(hosted, j).device for j in jobs]
    assert sorted(routed) == ["cpu:0", "cpu:0", "cpu:1", "cpu:1"]
    leaving = hosted.replicas[0]
    manager.unload(f"{DEMO_NAME}@cpu:0")  # returns once its requests have finished
    assert leaving.scheduler.load().tokens == 0
    for j in jobs:
        finished = list(j.results())[-1]
        assert isinstance(finished, Finished) and finished.finish_reason in ("length", "eos")
    assert hosted.devices == ["cpu:1"]
    assert manager.submit(hosted, job(2)).device == "cpu:1"


def test_daemon_serves_a_model_on_every_device(awqd_cache_dir, demo_model_dir):
    args = ("--cpu-devices", "3", "--model", f"{DEMO_NAME}={demo_model_dir.name}@all", "--selection-budget", "3")
    with serving(awqd_cache_dir, *args) as process, grpc.insecure_channel(process.target) as channel:
        stub = awqd_pb2_grpc.AwqdServiceStub(channel)
        described = stub.Describe(pb.DescribeRequest())
        assert [d.torch_device for d in described.devices] == ["cpu:0", "cpu:1", "cpu:2"]
        leader, *followers = (d.selection for d in described.devices)
        if any(note.startswith("saved to") for note in leader.notes):  # a short budget may leave it uncached
            for follower in followers:
                assert any("measured on cpu-0 (same fingerprint)" in note for note in follower.notes)
        (model,) = described.models
        assert model.state == pb.MODEL_STATE_READY and model.device == "cpu:0,cpu:1,cpu:2"
        assert [(r.device, r.device_uuid, r.state) for r in model.replicas] == [
            (f"cpu:{i}", f"cpu-{i}", pb.MODEL_STATE_READY) for i in range(3)
        ]
        assert all(r.kv_cache_blocks > 0 and r.warmup_duration.ToNanoseconds() > 0 for r in model.replicas)

        results: dict[int, object] = {}

        def generate(index: int) -> None:
            request = pb.GenerateRequest(model=DEMO_NAME, prompt="The weather today", max_new_tokens=300)
            try:
                results[index] = list(stub.Generate(request, timeout=120))[-1].completion
            except grpc.RpcError as error:
                results[index] = error

        streams = [threading.Thread(target=generate, args=(i,)) for i in range(6)]
        for stream in streams:
            stream.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            replicas = stub.Describe(pb.DescribeRequest()).models[0].replicas
            if replicas[2].running_requests and sum(r.requests_routed for r in replicas) == 6:
                break
            time.sleep(0.05)
        assert all(r.requests_routed >= 1 for r in replicas), replicas  # spread over every replica
        busy = [r for r in replicas if r.running_requests]
        assert all(r.load_tokens > 0 and r.kv_cache_blocks_in_use > 0 for r in busy)
        stub.UnloadModel(pb.UnloadModelRequest(name=f"{DEMO_NAME}@cpu:2"))  # under load
        for stream in streams:
            stream.join()
        assert all(isinstance(r, pb.Completion) and r.usage.completion_tokens > 0 for r in results.values()), results
        assert [r.device for r in stub.Describe(pb.DescribeRequest()).models[0].replicas] == ["cpu:0", "cpu:1"]

        with pytest.raises(grpc.RpcError) as caught:
            stub.LoadModel(pb.LoadModelRequest(name="other", path=demo_model_dir.name, device="cpu:0,cpu:9"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("device: cpu:9 is not a device of this node")


def test_a_device_hosting_nothing_is_selected_when_a_model_is_loaded_onto_it(awqd_cache_dir, demo_model_dir):
    """As the host CPU of a GPU node: selection waits for a model placed on the device, then runs on its shapes."""
    args = ("--cpu-devices", "2", "--model", f"{DEMO_NAME}={demo_model_dir.name}@cpu:0", "--selection-budget", "3")
    with serving(awqd_cache_dir, *args) as process, grpc.insecure_channel(process.target) as channel:
        stub = awqd_pb2_grpc.AwqdServiceStub(channel)
        first, idle = stub.Describe(pb.DescribeRequest()).devices
        assert first.HasField("selection") and first.decisions
        assert not idle.HasField("selection") and not idle.decisions
        assert idle.health_reason.startswith("kernel selection deferred: no model is placed on this device")

        loaded = stub.LoadModel(pb.LoadModelRequest(name="second", path=demo_model_dir.name, device="cpu:1"))
        assert loaded.model.state == pb.MODEL_STATE_READY and loaded.model.device == "cpu:1"
        idle = stub.Describe(pb.DescribeRequest()).devices[1]
        assert idle.HasField("selection") and idle.decisions and not idle.health_reason
        completion = list(stub.Generate(pb.GenerateRequest(model="second", prompt="Rivers", max_new_tokens=4)))[-1]
        assert completion.completion.usage.completion_tokens > 0
