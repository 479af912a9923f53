"""The peer libraries' candidates: torch's int4 matmul on the CPU for real, fbgemm's and gemlite's packings in pure
torch against the canonical weight, and their eligibility where the libraries are absent (CI has neither)."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from awqd.errors import FailedPrecondition, InvalidArgument
from awqd.kernels import registry
from awqd.kernels.cache_dir import CACHE_DIR_ENV, kernel_cache_dir
from awqd.kernels.candidates.fbgemm_bf16i4_rowwise import (
    FbgemmBf16i4Rowwise,
    group_scales_and_zeros,
    pack_signed_nibbles,
    unpack_signed_nibbles,
)
from awqd.kernels.candidates.fbgemm_bf16i4_shuffled import FbgemmBf16i4Shuffled
from awqd.kernels.candidates.torch_int4_cpu import TorchInt4Cpu, pack_int4_cpu
from awqd.kernels.candidates.torch_int4_tinygemm import (
    TorchInt4Tinygemm,
    inner_k_tiles,
    pack_nibble_pairs,
    scales_and_zeros,
)
from awqd.kernels.capability import eligibility
from awqd.kernels.measure import FP16_TOLERANCE, check_correctness, random_weight
from awqd.kernels.requirements import probe_requirements
from awqd.quant.reference import dequantize, reference_linear

CPU = torch.device("cpu")


def weight(out_features=64, in_features=256, group_size=64, bias=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return random_weight(out_features, in_features, group_size, CPU, generator, bias)


@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_cpu_int4_packing_dequantizes_exactly_to_the_reference(group_size):
    w = weight(out_features=48, in_features=512, group_size=group_size)
    packed = TorchInt4Cpu().prepare(w, CPU)
    # The op in float32 with x = I gives W.T column by column: the packed weight, scale and zero reproduce
    # (q - z) * s bit for bit. The candidate's bf16 scale and zero round that weight only by bf16's step.
    reference = dequantize(w, torch.float32)
    for dtype in (torch.float32, torch.bfloat16):
        eye = torch.eye(w.in_features, dtype=dtype)
        recovered = torch.ops.aten._weight_int4pack_mm_for_cpu(
            eye, pack_int4_cpu(w.q), group_size, scales_and_zeros(w, dtype)
        ).t()
        if dtype == torch.float32:
            assert torch.equal(recovered, reference)
        else:
            assert (recovered.float() - reference).abs().max() / reference.abs().max() < 2**-7
    assert torch.equal(packed.weight, pack_int4_cpu(w.q))


def test_cpu_int4_forward_matches_the_reference_with_bias_and_3d_input():
    w = weight(out_features=64, in_features=256, bias=True)
    candidate = TorchInt4Cpu()
    x = torch.randn(2, 5, w.in_features, generator=torch.Generator().manual_seed(1))
    out = candidate.forward(x, candidate.prepare(w, CPU))
    ref = reference_linear(x, w)
    assert out.shape == (2, 5, 64) and out.dtype == torch.float32
    assert (out - ref).norm() / ref.norm() < 1e-2  # bf16 activations and weights: ~3e-3


def test_cpu_int4_passes_the_selection_correctness_check_at_the_bf16_tolerance():
    check = check_correctness(TorchInt4Cpu(), CPU, [(64, 128), (128, 192)], group_size=64)
    assert check.passed, check.error
    assert check.tolerance == FP16_TOLERANCE and check.max_relative_error > 0


@pytest.mark.parametrize(
    ("candidate", "shape", "group_size", "field"),
    [
        (TorchInt4Cpu(), (24, 128), 64, "shape"),  # N not a multiple of 16
        (TorchInt4Cpu(), (64, 128), 16, "group_size"),
        (TorchInt4Tinygemm(), (64, 128), 16, "group_size"),
        (TorchInt4Tinygemm(), (12, 128), 32, "shape"),  # N not a multiple of 8
    ],
)
def test_unsupported_shapes_are_refused_at_prepare(candidate, shape, group_size, field):
    with pytest.raises(InvalidArgument) as error:
        candidate.prepare(weight(*shape, group_size=group_size), CPU)
    assert error.value.field == field and candidate.name in str(error.value)


def test_tinygemm_packing_contract():
    """What _convert_weight_to_int4pack reads (int4mm.cu): byte i = column 2i high nibble, 2i + 1 low nibble."""
    q = torch.tensor([[1, 2, 3, 4, 15, 0]], dtype=torch.uint8)
    assert pack_nibble_pairs(q).tolist() == [[0x12, 0x34, 0xF0]]
    assert [inner_k_tiles(k) for k in (4096, 11008, 64, 96)] == [8, 8, 4, 2]
    w = weight(out_features=16, in_features=128, group_size=32)
    sz = scales_and_zeros(w, torch.float32)
    assert sz.shape == (4, 16, 2)
    q_minus_8 = w.q.float() - 8
    rebuilt = q_minus_8 * sz[..., 0].t().repeat_interleave(32, 1) + sz[..., 1].t().repeat_interleave(32, 1)
    assert torch.equal(rebuilt, dequantize(w, torch.float32))  # (q - 8) s + (8 - z) s == (q - z) s, exactly


def test_fbgemm_signed_nibbles_round_trip_and_dequantize_exactly():
    w = weight(out_features=32, in_features=256, group_size=128)
    packed = pack_signed_nibbles(w.q)
    assert packed.dtype == torch.int8 and packed.shape == (32, 128)
    signed = unpack_signed_nibbles(packed)
    assert torch.equal(signed, w.q.to(torch.int16) - 8)
    first = w.q[0, :2].tolist()  # column 0 in the low nibble, column 1 in the high one, as fbgemm's pack_int4
    assert packed.view(torch.uint8)[0, 0].item() == ((first[1] ^ 8) << 4) | (first[0] ^ 8)
    scales, zeros = group_scales_and_zeros(w, torch.float32)
    assert scales.shape == zeros.shape == (2, 32)
    rebuilt = signed.float() * scales.t().repeat_interleave(128, 1) + zeros.t().repeat_interleave(128, 1)
    assert torch.equal(rebuilt, dequantize(w, torch.float32))
    # The kernel gets bf16 scale and zero: the rounding stays within bf16's 2^-8 relative step per factor.
    bf16_scales, bf16_zeros = group_scales_and_zeros(w, torch.bfloat16)
    approx = signed.float() * bf16_scales.float().t().repeat_interleave(128, 1)
    approx = approx + bf16_zeros.float().t().repeat_interleave(128, 1)
    error = (approx - dequantize(w, torch.float32)).norm() / dequantize(w, torch.float32).norm()
    assert error < 2**-7


def test_gemlite_form_is_exact_in_fp16():
    """gemlite gets q, fp16 scales and fp16 zeros with fma_mode=False: (q - zeros) * scales, AWQ's own form."""
    w = weight()
    zeros = w.zeros.to(torch.float16).repeat_interleave(w.group_size, 1)
    scales = w.scales.repeat_interleave(w.group_size, 1)
    assert torch.equal(zeros.to(torch.uint8), w.zeros.repeat_interleave(w.group_size, 1))
    assert torch.equal((w.q.to(torch.float16) - zeros) * scales, dequantize(w, torch.float16))


ABSENT = {"fbgemm_bf16i4_rowwise", "fbgemm_bf16i4_shuffled", "gemlite_w4a16"}


def test_absent_libraries_are_explained_on_a_hopper():
    """CI has neither library: on a (hypothetical) H100 with everything else present, the reason names the package,
    the extra to install and the import error."""
    available = {**probe_requirements(), "torch_cuda": None, "triton": None, "torch_int4_cuda": None}
    verdicts = {v.name: v for v in eligibility((9, 0), available)}
    for name in ABSENT:
        assert not verdicts[name].supported
    for name in ("fbgemm_bf16i4_rowwise", "fbgemm_bf16i4_shuffled"):
        reason = verdicts[name].reason
        assert reason.startswith(f"needs {name} (fbgemm-gpu-genai: pip install awqd[fbgemm], a release built for torch")
        assert "not importable: No module named 'fbgemm_gpu'" in reason
    assert "pip install awqd[gemlite]" in verdicts["gemlite_w4a16"].reason
    assert "No module named 'gemlite'" in verdicts["gemlite_w4a16"].reason
    assert verdicts["torch_int4_tinygemm"].supported


@pytest.mark.parametrize("candidate", [FbgemmBf16i4Rowwise(), FbgemmBf16i4Shuffled(), registry.build("gemlite_w4a16")])
def test_absent_library_fails_prepare_cleanly(candidate):
    with pytest.raises(FailedPrecondition, match=candidate.name):
        candidate.prepare(weight(), CPU)
    check = check_correctness(candidate, CPU, [(64, 128)], group_size=64)
    assert not check.passed and "FailedPrecondition" in check.error


def test_kernel_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    assert kernel_cache_dir("gemlite") is None
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    assert kernel_cache_dir("gemlite") == tmp_path / "gemlite" and (tmp_path / "gemlite").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker))
    assert kernel_cache_dir("gemlite") is None


def test_tinygemm_cuda_path_meets_torch_s_op_contract_on_the_meta_device():
    """No GPU here: torch's meta kernels check the dtypes and shapes the CUDA path passes, and give the output's."""
    meta = torch.device("meta")
    w = weight(out_features=256, in_features=512, group_size=128, bias=True)
    candidate = TorchInt4Tinygemm()
    packed = candidate.prepare(w, meta)
    assert packed.weight.dtype == torch.int32 and packed.weight.shape == (256 // 8, 512 // (8 * 16), 32, 8 // 2)
    assert packed.scales_and_zeros.dtype == torch.bfloat16 and packed.scales_and_zeros.shape == (4, 256, 2)
    with FakeTensorMode(allow_non_fake_inputs=True):  # the matmul's meta kernel reads fake tensors' device
        out = candidate.forward(torch.empty(3, 7, 512, dtype=torch.float16, device=meta), packed)
    assert out.shape == (3, 7, 256) and out.dtype == torch.float16
