"""Per-step kernel dispatch on a real quantized model, and the single-layout option."""

from datetime import UTC, datetime

import grpc
import torch

from awqd.config import EngineSettings
from awqd.daemon import single_layout_dispatch
from awqd.engine.build import build_engine
from awqd.engine.request import GenerateParams
from awqd.engine.sequence import Finished, Job
from awqd.kernels.base import Dispatch
from awqd.kernels.candidates.dequant_matmul_cpu import DequantMatmulCpu
from awqd.kernels.candidates.reference_torch import ReferenceTorch
from awqd.kernels.linear import KernelRouter
from awqd.kernels.measure import KernelTiming
from awqd.kernels.selection import DeviceDecisions, KernelDecision
from awqd.models.loader import load_model
from awqd_client import AwqdClient, AwqdError
from awqd_client.v1 import awqd_pb2

from daemon_process import serving


def params(max_new_tokens: int) -> GenerateParams:
    return GenerateParams("demo", "", (), max_new_tokens, 0.0, None, 0, 0, (), "")


def test_prefill_and_decode_run_the_kernels_the_table_names(demo_model_dir):
    # Decode (1 token) on the reference, prefill (2-512 tokens) on the int4-packed CPU kernel.
    router = KernelRouter(Dispatch(buckets=(1, 512), candidates=(ReferenceTorch(), DequantMatmulCpu())))
    loaded = load_model(demo_model_dir, torch.device("cpu"), router, fuse=True)
    assert loaded.layouts == ("canonical", "gemm")
    prompt = list(range(10, 30))
    scheduler = build_engine("demo", loaded, router, EngineSettings(kv_cache_tokens=1024))
    try:
        job = Job(params(6), prompt, pinned=None)
        scheduler.submit(job)
        finished = list(job.results())[-1]
    finally:
        scheduler.close()
    assert isinstance(finished, Finished)
    used = {(k.phase, k.batch_tokens, k.kernel): k.steps for k in finished.kernels}
    decode_steps = finished.completion_tokens - 1 + (finished.finish_reason == "eos")
    assert used == {("prefill", 512, "dequant_matmul_cpu"): 1, ("decode", 1, "reference_torch"): decode_steps}


def decision(tokens: int, *fastest_first: tuple[str, float]) -> KernelDecision:
    timings = [KernelTiming(kernel, ms, ms, ms, False) for kernel, ms in fastest_first]
    return KernelDecision(tokens, fastest_first[0][0], "measured", "fastest", timings)


def test_single_layout_keeps_the_decode_layout_everywhere():
    decisions = DeviceDecisions(
        device_uuid="cpu",
        device_label="cpu",
        candidates=[],
        decisions=[
            decision(1, ("reference_torch", 1.0), ("dequant_matmul_cpu", 1.2)),
            decision(512, ("dequant_matmul_cpu", 30.0), ("reference_torch", 40.0)),
        ],
        source="measured",
        measured_at=datetime.now(UTC),
        duration_s=1.0,
        fingerprint="test",
    )
    assert [c.name for c in decisions.dispatch().candidates] == ["reference_torch", "dequant_matmul_cpu"]
    single = single_layout_dispatch(decisions)
    assert [c.name for c in single.candidates] == ["reference_torch", "reference_torch"]
    assert single.layouts == ("canonical",)


def test_single_layout_daemon_refuses_a_kernel_whose_layout_it_does_not_hold(demo_model_dir, awqd_cache_dir, tmp_path):
    with (
        serving(awqd_cache_dir, "--model-root", str(tmp_path), "--single-layout") as process,
        AwqdClient(process.target, timeout=60) as client,
    ):
        (model,) = client.list_models()
        assert model.extra_layout_memory_bytes == 0
        held = {k.name for k in client.describe().devices[0].kernels if k.supported}
        outcomes = {}
        for kernel in sorted(held):
            try:
                list(client.generate(model.name, "hello", max_new_tokens=2, kernel=kernel))
                outcomes[kernel] = "ok"
            except AwqdError as error:
                assert error.code == grpc.StatusCode.FAILED_PRECONDITION and "layout" in error.message
                outcomes[kernel] = "refused"
    assert sorted(outcomes.values()) == ["ok"] + ["refused"] * (len(held) - 1), outcomes  # one layout held


def test_batch_invariant_daemon_without_awqd_triton_kernels_fails_the_model_and_keeps_serving(
    demo_model_dir, awqd_cache_dir, tmp_path
):
    """On the CPU awqd's Triton GEMM cannot run, so --batch-invariant cannot be honoured: the model is listed as
    failed with the reason, not silently served with per-bucket kernels, and the daemon stays up."""
    with (
        serving(awqd_cache_dir, "--model-root", str(tmp_path), "--batch-invariant") as process,
        AwqdClient(process.target, timeout=60) as client,
    ):
        (model,) = client.list_models()
        assert model.state == awqd_pb2.MODEL_STATE_FAILED
        assert "awqd_triton_gemm" in model.error and "not supported" in model.error
        assert client.describe().node.hostname
