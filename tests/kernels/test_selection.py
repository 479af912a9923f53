"""Selection on the CPU with real candidates: correctness checks, timings, budget, overrides and the Dispatch.

Also the measuring helpers, the layer shapes, and the candidate layouts against AutoAWQ's own packing code.
"""

import pytest
import structlog
import torch

from awqd.config import EngineSettings
from awqd.errors import FailedPrecondition, InvalidArgument
from awqd.kernels import registry
from awqd.kernels.base import DeferredNorm
from awqd.kernels.candidates.dequant_cublas import dequantize_gemm_layout
from awqd.kernels.candidates.dequant_matmul_cpu import DequantMatmulCpu
from awqd.kernels.candidates.layouts import pack_gemm_layout, pack_gemv_fast_layout
from awqd.kernels.measure import (
    check_correctness,
    deferred_input,
    measure_copy_bandwidth_gbps,
    random_weight,
    rotation_copies,
    summarize,
    time_dense_baseline,
    tolerance_for,
)
from awqd.kernels.selection import (
    DEFAULT_BUCKETS,
    GPU_PREFILL_BUCKETS,
    CandidateReport,
    DeviceDecisions,
    KernelDecision,
    default_buckets,
    resolve_forced,
    select_kernels,
    tuning_share,
)
from awqd.kernels.shapes import (
    LLAMA_2_7B,
    decoder_layer_shapes,
    default_shapes,
    engine_layer_shapes,
    shapes_from_config,
)
from awqd.node.devices import DeviceInfo
from awqd.quant.reference import dequantize

CPU = DeviceInfo(0, "cpu", "cpu", "test CPU", None, 1 << 34, "cpu", None)
SHAPES = [(256, 128), (64, 128), (64, 128), (128, 128), (192, 128), (192, 128), (128, 192)]  # a tiny GQA layer
GROUP_SIZE = 64
CPU_CANDIDATES = {"reference_torch", "torch_int4_cpu", "dequant_matmul_cpu"}


@pytest.fixture(scope="module")
def decisions() -> DeviceDecisions:
    return select_kernels(CPU, SHAPES, GROUP_SIZE, cache_dir=None, budget_s=60.0)


def test_gpus_also_decide_the_large_prefill_steps_and_the_cpu_does_not():
    gpu = DeviceInfo(1, "cuda", "GPU-0", "test GPU", (9, 0), 1 << 37, "cuda:0", 0)
    assert default_buckets(gpu) == (*DEFAULT_BUCKETS, *GPU_PREFILL_BUCKETS)
    assert max(default_buckets(gpu)) >= EngineSettings.prefill_tokens_per_step
    assert default_buckets(CPU) == DEFAULT_BUCKETS


def test_boot_selection_measures_every_bucket(decisions):
    assert decisions.source == "measured"
    assert [d.batch_tokens for d in decisions.decisions] == list(DEFAULT_BUCKETS)
    assert decisions.measured_at is not None and decisions.duration_s > 0
    for decision in decisions.decisions:
        assert decision.source == "measured"
        assert {t.kernel for t in decision.timings} == CPU_CANDIDATES
        assert all(0 < t.p10_ms <= t.median_ms <= t.p90_ms for t in decision.timings)
        assert not any(t.cuda_graph for t in decision.timings)
        medians = [t.median_ms for t in decision.timings]
        assert medians == sorted(medians) and decision.kernel == decision.timings[0].kernel
        assert decision.kernel in decision.reason and "runner-up" in decision.reason


def test_every_candidate_is_explained(decisions):
    reports = {report.name: report for report in decisions.candidates}
    assert {name for name, report in reports.items() if report.supported} == CPU_CANDIDATES
    for report in reports.values():
        assert report.reason
        if report.supported:
            tolerance = tolerance_for(registry.build(report.name).precision or torch.float32)
            assert report.correctness.passed and report.correctness.tolerance == tolerance
            assert 0 <= report.correctness.max_relative_error <= tolerance
        else:
            assert report.correctness is None and "CUDA" in report.reason


def test_budget_exhausted_falls_back_to_capability_rules():
    with structlog.testing.capture_logs() as logs:
        result = select_kernels(CPU, SHAPES, GROUP_SIZE, cache_dir=None, budget_s=0.0, buckets=(1, 16))
    (warning,) = [entry for entry in logs if entry["event"] == "selection_budget_ran_out"]
    assert warning["log_level"] == "warning" and warning["buckets"] == [1, 16]
    assert "--selection-budget" in warning["action"]
    assert result.source == "capability_rule"
    for decision in result.decisions:
        assert decision.source == "capability_rule" and decision.kernel == "reference_torch"
        assert "time budget ran out" in decision.reason and "capability rule" in decision.reason
        assert decision.timings == []
    assert all(r.correctness is not None for r in result.candidates if r.supported)  # correctness is never skipped


def test_tuning_time_is_shared_among_the_candidates_that_tune_launches():
    # awqd's four Triton kernels tune tiles at boot and gemlite autotunes; the others have nothing to tune and get no
    # share.
    tunable = {name for name in registry.candidate_names() if registry.tunes_launches(name)}
    triton = {"awqd_triton_gemm", "awqd_triton_gemv", "awqd_triton_skinny", "awqd_triton_dequant_cublas"}
    assert tunable == triton | {"gemlite_w4a16"}
    # Equal parts of what is left: the first of four gets a quarter, and what it leaves unused goes to the rest.
    assert tuning_share(40.0, 4) == 10.0
    assert tuning_share(40.0 - 2.0, 3) > 10.0
    assert tuning_share(-1.0, 2) == 0.0


def test_forcing_an_unsupported_kernel_fails_with_the_alternatives(decisions):
    with pytest.raises(FailedPrecondition) as error:
        resolve_forced(decisions, "autoawq_gemv_cuda")
    message = str(error.value)
    assert message.startswith("kernel autoawq_gemv_cuda is not supported on the host CPU (test CPU)")
    assert "runs only on NVIDIA GPUs" in message
    assert message.endswith("supported: reference_torch, torch_int4_cpu, dequant_matmul_cpu")
    with pytest.raises(FailedPrecondition, match="kernel family gemv has no supported candidate"):
        resolve_forced(decisions, "gemv")
    with pytest.raises(InvalidArgument, match="unknown kernel 'marlin'"):
        resolve_forced(decisions, "marlin")
    assert resolve_forced(decisions, "dequant_matmul").name == "dequant_matmul_cpu"
    assert resolve_forced(decisions, "reference_torch").name == "reference_torch"


def test_forced_kernel_at_boot():
    forced = select_kernels(CPU, SHAPES, GROUP_SIZE, None, budget_s=0.0, buckets=(1, 16), forced="dequant_matmul_cpu")
    assert forced.source == "forced" and forced.forced == "dequant_matmul_cpu"
    assert all(d.kernel == "dequant_matmul_cpu" and d.source == "forced" for d in forced.decisions)

    refused = select_kernels(CPU, SHAPES, GROUP_SIZE, None, budget_s=0.0, buckets=(1, 16), forced="autoawq_gemm_cuda")
    assert refused.source == "capability_rule"
    assert any("forced kernel 'autoawq_gemm_cuda' not applied" in note for note in refused.notes)
    with pytest.raises(FailedPrecondition, match="supported: reference_torch, torch_int4_cpu, dequant_matmul_cpu"):
        resolve_forced(refused, "autoawq_gemm_cuda")


def test_dispatch_routes_steps_to_the_table(decisions):
    table = DeviceDecisions(
        device_uuid="cpu",
        device_label="the host CPU",
        candidates=decisions.candidates,
        decisions=[
            KernelDecision(1, "reference_torch", "measured", "r"),
            KernelDecision(8, "reference_torch", "measured", "r"),
            KernelDecision(64, "dequant_matmul_cpu", "measured", "r"),
        ],
        source="measured",
        measured_at=None,
        duration_s=0.0,
        fingerprint="",
    )
    dispatch = table.dispatch()
    assert dispatch.candidate_for(1).name == "reference_torch"
    assert dispatch.candidate_for(5).name == "reference_torch"
    assert dispatch.candidate_for(64).name == "dequant_matmul_cpu"
    assert dispatch.candidate_for(4096).name == "dequant_matmul_cpu"
    assert dispatch.layouts == ("canonical", "gemm")

    measured = decisions.dispatch()
    by_bucket = {d.batch_tokens: d.kernel for d in decisions.decisions}
    assert measured.candidate_for(1).name == by_bucket[1]
    assert measured.candidate_for(64).name == by_bucket[64]


def test_dispatch_without_decisions_is_a_failed_precondition(decisions):
    empty = DeviceDecisions("cpu", "the host CPU", decisions.candidates, [], "capability_rule", None, 0.0, "")
    empty.notes.append("no kernel candidate is supported")
    with pytest.raises(FailedPrecondition, match="no kernel decisions for the host CPU: no kernel candidate"):
        empty.dispatch()


def test_decisions_round_trip_through_a_dict(decisions):
    again = DeviceDecisions.from_dict(decisions.to_dict())
    assert again == decisions


class WrongNibbleOrder(DequantMatmulCpu):
    """A real packing bug: reads the GEMM layout as if its nibbles were sequential."""

    name = "wrong_nibble_order"

    def forward(self, x, packed):
        shifts = torch.arange(0, 32, 4, dtype=torch.int32)
        q = ((packed.qweight.unsqueeze(-1) >> shifts) & 0xF).flatten(1)
        z = ((packed.qzeros.unsqueeze(-1) >> shifts) & 0xF).flatten(1)
        w = (q - z.repeat_interleave(packed.group_size, 0)) * packed.scales.float().repeat_interleave(
            packed.group_size, 0
        )
        return x @ w


class Crashes(DequantMatmulCpu):
    name = "crashes"

    def forward(self, x, packed):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")


class ProducesNaN(DequantMatmulCpu):
    name = "produces_nan"

    def forward(self, x, packed):
        out = super().forward(x, packed)
        out[..., 0] = float("nan")
        return out


class GatesTheWrongHalf(DequantMatmulCpu):
    """A right linear whose gated form mixes up the gate and the up rows: the engine would serve it on MLPs."""

    name = "gates_the_wrong_half"

    def forward_gated(self, x, packed):
        gate, up = self.forward(x, packed).chunk(2, dim=-1)
        return torch.nn.functional.silu(up) * gate


class GatesRight(GatesTheWrongHalf):
    name = "gates_right"

    def forward_gated(self, x, packed):
        gate, up = self.forward(x, packed).chunk(2, dim=-1)
        return torch.nn.functional.silu(gate) * up


class DefersNormsRight(GatesRight):
    """Deferred-norm forms as awqd's GEMV computes them, in torch: the boot check must pass them."""

    name = "defers_norms_right"

    def forward_add_norm(self, x, packed, residual, norm_weight, eps):
        total = residual + self.forward(x, packed)
        squares = total.float().pow(2).reshape(*total.shape[:-1], 4, -1).sum(-1)
        return total, DeferredNorm(total * norm_weight, squares, eps)

    def forward_deferred(self, norm, packed, gated):
        x = (norm.weighted.float() * norm.inverse_rms()).to(norm.weighted.dtype)
        return self.forward_gated(x, packed) if gated else self.forward(x, packed)


class DefersNormsWithoutTheWeight(DefersNormsRight):
    """Forgets the norm weight where it adds the residual: the engine would feed the next layer unweighted rows."""

    name = "defers_norms_without_the_weight"

    def forward_add_norm(self, x, packed, residual, norm_weight, eps):
        return super().forward_add_norm(x, packed, residual, torch.ones_like(norm_weight), eps)


class DefersNormsWithoutTheScale(DefersNormsRight):
    """Takes a deferred norm's weighted rows as if they were normed: outputs off by the rows' rms."""

    name = "defers_norms_without_the_scale"

    def forward_deferred(self, norm, packed, gated):
        return self.forward_gated(norm.weighted, packed) if gated else self.forward(norm.weighted, packed)


def test_correctness_accepts_a_right_kernel_and_rejects_wrong_ones():
    cpu = torch.device("cpu")
    assert check_correctness(DequantMatmulCpu(), cpu, SHAPES, GROUP_SIZE).passed

    wrong = check_correctness(WrongNibbleOrder(), cpu, SHAPES, GROUP_SIZE)
    assert not wrong.passed and wrong.max_relative_error > 0.1 and "relative error" in wrong.error

    crashed = check_correctness(Crashes(), cpu, SHAPES, GROUP_SIZE)
    assert not crashed.passed and "RuntimeError: CUDA error: no kernel image" in crashed.error
    assert "[256x128] group 64, input [1, 128]" in crashed.error

    nan = check_correctness(ProducesNaN(), cpu, SHAPES, GROUP_SIZE)
    assert not nan.passed and "NaN or inf" in nan.error

    assert check_correctness(GatesRight(), cpu, SHAPES, GROUP_SIZE).passed
    wrong_gate = check_correctness(GatesTheWrongHalf(), cpu, SHAPES, GROUP_SIZE)
    assert not wrong_gate.passed and "gated: relative error" in wrong_gate.error

    assert check_correctness(DefersNormsRight(), cpu, SHAPES, GROUP_SIZE).passed
    unweighted = check_correctness(DefersNormsWithoutTheWeight(), cpu, SHAPES, GROUP_SIZE)
    assert not unweighted.passed and "weighted: relative error" in unweighted.error
    unscaled = check_correctness(DefersNormsWithoutTheScale(), cpu, SHAPES, GROUP_SIZE)
    assert not unscaled.passed and "deferred: relative error" in unscaled.error


def test_a_kernel_without_the_deferred_norm_form_refuses_one():
    cpu = torch.device("cpu")
    kernel = DequantMatmulCpu()
    packed = kernel.prepare(random_weight(64, 128, GROUP_SIZE, cpu, torch.Generator().manual_seed(2), bias=False), cpu)
    assert kernel.forward_add_norm(torch.randn(1, 128), packed, torch.randn(1, 64), torch.ones(64), 1e-5) is None
    with pytest.raises(FailedPrecondition, match="dequant_matmul_cpu cannot take a deferred norm"):
        kernel.forward_deferred(deferred_input(torch.randn(1, 128)), packed, gated=False)


def test_dequantize_gemm_layout_matches_the_reference():
    weight = random_weight(64, 256, 64, torch.device("cpu"), torch.Generator().manual_seed(1), bias=True)
    packed = pack_gemm_layout(weight, torch.device("cpu"))
    assert torch.equal(dequantize_gemm_layout(packed, torch.float32).t(), dequantize(weight, torch.float32))


def test_gemv_fast_layout_matches_autoawq():
    """Our GEMV_FAST packing must be byte-identical to WQLinear_GEMVFast.from_linear on the same weight."""
    from awq.modules.linear.gemv_fast import WQLinear_GEMVFast

    weight = random_weight(64, 256, 128, torch.device("cpu"), torch.Generator().manual_seed(2), bias=False)
    linear = torch.nn.Linear(256, 64, bias=False)
    linear.weight.data = dequantize(weight, torch.float32)
    theirs = WQLinear_GEMVFast.from_linear(linear, 4, 128, scales=weight.scales, zeros=weight.zeros.to(torch.float32))
    ours = pack_gemv_fast_layout(weight, torch.device("cpu"))
    assert torch.equal(ours.qweight, theirs.qweight)
    assert torch.equal(ours.scales, theirs.scales)
    assert torch.equal(ours.qzeros, theirs.qzeros)


def test_gemv_fast_layout_refuses_unaligned_shapes():
    weight = random_weight(64, 96, 32, torch.device("cpu"), torch.Generator().manual_seed(3), bias=False)
    with pytest.raises(InvalidArgument, match=r"in_features % 64 == 0, got \[64, 96\]"):
        pack_gemv_fast_layout(weight, torch.device("cpu"))


def test_measuring_helpers():
    cpu = torch.device("cpu")
    baseline = time_dense_baseline(SHAPES, GROUP_SIZE, cpu, num_tokens=4, warmup=1, iterations=3)
    assert baseline.kernel == "fp16_cublas" and 0 < baseline.p10_ms <= baseline.median_ms <= baseline.p90_ms
    assert measure_copy_bandwidth_gbps(cpu, num_bytes=1 << 22, iterations=3) > 0
    assert rotation_copies(default_shapes(), cpu) == 1  # 107 MB of int4 already exceeds twice the cache
    assert rotation_copies([(64, 64)], cpu) == 8
    timing = summarize("k", [3.0, 1.0, 2.0, 5.0, 4.0], cuda_graph=False)
    assert (timing.p10_ms, timing.median_ms, timing.p90_ms) == (1.4, 3.0, 4.6)


def test_layer_shapes():
    assert LLAMA_2_7B == {
        "q_proj": (4096, 4096),
        "k_proj": (4096, 4096),
        "v_proj": (4096, 4096),
        "o_proj": (4096, 4096),
        "gate_proj": (11008, 4096),
        "up_proj": (11008, 4096),
        "down_proj": (4096, 11008),
    }
    llama_3_8b = shapes_from_config(
        {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8}
    )
    assert llama_3_8b["k_proj"] == (1024, 4096) and llama_3_8b["v_proj"] == (1024, 4096)
    assert llama_3_8b["down_proj"] == (4096, 14336)
    fused = engine_layer_shapes(
        {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8}
    )
    assert fused == {
        "qkv_proj": (4096 + 1024 + 1024, 4096),
        "o_proj": (4096, 4096),
        "gate_up_proj": (2 * 14336, 4096),
        "down_proj": (4096, 14336),
    }
    assert decoder_layer_shapes(2048, 8192, 32, 8, head_dim=128)["q_proj"] == (4096, 2048)
    with pytest.raises(InvalidArgument, match="config: cannot derive decoder layer shapes"):
        shapes_from_config({"hidden_size": 4096})


def test_candidate_report_usable_requires_a_passed_check():
    report = CandidateReport("reference_torch", "reference", True, "ok", ("torch",), "canonical")
    assert not report.usable
