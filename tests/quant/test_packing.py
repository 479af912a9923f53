"""Our GEMM/GEMV packing against AutoAWQ 0.2.9's own WQLinear.from_linear and dequantize_gemm."""

import pytest
import torch
from awq.modules.linear.gemm import WQLinear_GEMM
from awq.modules.linear.gemv import WQLinear_GEMV
from awq.utils.packing_utils import dequantize_gemm

from awqd.errors import CheckpointError, InvalidArgument
from awqd.quant.packing import pack, unpack
from awqd.quant.reference import dequantize, reference_linear
from awqd.quant.tensors import QuantizedWeight

# (out, in, group). AutoAWQ's from_linear sizes qweight as cols // 32 * 4, so it only packs multiples of 32.
SHAPES = [(64, 256, 32), (128, 128, 64), (32, 384, 128), (96, 512, 128), (160, 320, 32)]
# Shapes AutoAWQ's buffers allow (out % 8 == 0) that its from_linear cannot produce.
ROUNDTRIP_ONLY_SHAPES = [(24, 192, 64), (40, 96, 32)]


def random_weight(out_features: int, in_features: int, group_size: int, bias: bool, seed: int) -> QuantizedWeight:
    generator = torch.Generator().manual_seed(seed)
    groups = in_features // group_size
    return QuantizedWeight(
        q=torch.randint(0, 16, (out_features, in_features), dtype=torch.uint8, generator=generator),
        zeros=torch.randint(0, 16, (out_features, groups), dtype=torch.uint8, generator=generator),
        scales=(torch.rand((out_features, groups), generator=generator) * 0.02 + 1e-3).to(torch.float16),
        group_size=group_size,
        bias=torch.randn(out_features, generator=generator).to(torch.float16) if bias else None,
    )


def assert_same_weight(actual: QuantizedWeight, expected: QuantizedWeight) -> None:
    assert actual.group_size == expected.group_size
    assert torch.equal(actual.q, expected.q)
    assert torch.equal(actual.zeros, expected.zeros)
    assert torch.equal(actual.scales, expected.scales)
    assert (actual.bias is None) == (expected.bias is None)
    if expected.bias is not None:
        assert torch.equal(actual.bias, expected.bias)


def autoawq_linear(weight: QuantizedWeight) -> torch.nn.Linear:
    """A float32 nn.Linear holding W = (q - z) * s exactly, so AutoAWQ's round() recovers q exactly."""
    linear = torch.nn.Linear(weight.in_features, weight.out_features, bias=weight.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(dequantize(weight, torch.float32))
        if weight.bias is not None:
            linear.bias.copy_(weight.bias.float())
    return linear


@pytest.mark.parametrize("version", ["GEMM", "GEMV", "gemm", "gemv"])
@pytest.mark.parametrize(("out_features", "in_features", "group_size"), SHAPES + ROUNDTRIP_ONLY_SHAPES)
def test_unpack_inverts_pack(version: str, out_features: int, in_features: int, group_size: int) -> None:
    weight = random_weight(out_features, in_features, group_size, bias=True, seed=out_features + in_features)
    packed = pack(weight, version)
    assert_same_weight(unpack(packed, version, group_size, in_features, out_features), weight)


@pytest.mark.parametrize(("out_features", "in_features", "group_size"), SHAPES)
def test_gemm_pack_matches_autoawq(out_features: int, in_features: int, group_size: int) -> None:
    weight = random_weight(out_features, in_features, group_size, bias=True, seed=1)
    reference = WQLinear_GEMM.from_linear(
        autoawq_linear(weight),
        w_bit=4,
        group_size=group_size,
        scales=weight.scales.float().t().contiguous(),
        zeros=weight.zeros.float().t().contiguous(),
    )
    ours = pack(weight, "GEMM")
    assert set(ours) == {"qweight", "qzeros", "scales", "bias"}
    for name in ours:
        expected = getattr(reference, name)
        assert ours[name].dtype == expected.dtype, name
        assert torch.equal(ours[name], expected), name


@pytest.mark.parametrize(("out_features", "in_features", "group_size"), SHAPES)
def test_gemv_pack_matches_autoawq(out_features: int, in_features: int, group_size: int) -> None:
    weight = random_weight(out_features, in_features, group_size, bias=False, seed=2)
    reference = WQLinear_GEMV.from_linear(
        autoawq_linear(weight),
        w_bit=4,
        group_size=group_size,
        scales=weight.scales.float(),
        zeros=weight.zeros.float(),
    )
    ours = pack(weight, "GEMV")
    assert set(ours) == {"qweight", "qzeros", "scales"}
    for name in ours:
        expected = getattr(reference, name)
        assert ours[name].dtype == expected.dtype, name
        assert torch.equal(ours[name], expected), name


@pytest.mark.parametrize(("out_features", "in_features", "group_size"), SHAPES)
def test_dequantize_matches_autoawq(out_features: int, in_features: int, group_size: int) -> None:
    weight = random_weight(out_features, in_features, group_size, bias=False, seed=3)
    packed = pack(weight, "GEMM")
    expected = dequantize_gemm(packed["qweight"], packed["qzeros"], packed["scales"], 4, group_size)
    assert torch.equal(dequantize(weight, torch.float16), expected.t())


def test_reference_linear_matches_float_linear() -> None:
    weight = random_weight(64, 256, 32, bias=True, seed=4)
    x = torch.randn(3, 5, 256, dtype=torch.float64)
    expected = x @ dequantize(weight, torch.float64).t() + weight.bias.double()
    actual = reference_linear(x.float(), weight)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5)


def test_top_nibble_survives_the_sign_bit() -> None:
    weight = random_weight(8, 64, 32, bias=False, seed=5)
    weight.q.fill_(15)
    weight.zeros.fill_(15)
    for version in ("GEMM", "GEMV"):
        packed = pack(weight, version)
        assert (packed["qweight"] == -1).all()
        assert_same_weight(unpack(packed, version, 32, 64, 8), weight)


def test_unsupported_version_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match=r"version.*GEMV_FAST"):
        pack(random_weight(8, 64, 32, bias=False, seed=6), "GEMV_FAST")
    with pytest.raises(InvalidArgument, match=r"group_size.*GEMV.*got 16"):
        pack(random_weight(8, 64, 16, bias=False, seed=6), "GEMV")


def test_unpack_names_the_bad_tensor() -> None:
    packed = pack(random_weight(16, 128, 32, bias=False, seed=7), "GEMM")
    packed["qzeros"] = packed["qzeros"][:, :1]
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.q_proj\.qzeros: .*\[4, 2\], got \[4, 1\]"):
        unpack(packed, "GEMM", 32, 128, 16, prefix="model.layers.0.q_proj.")
    del packed["scales"]
    with pytest.raises(CheckpointError, match=r"scales: missing"):
        unpack(packed | {"qzeros": packed["qweight"][:4, :2]}, "GEMM", 32, 128, 16)
