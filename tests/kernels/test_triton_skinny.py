"""The skinny kernel's launch choices and its sm_90 operand path (awqd/kernels/triton/skinny.py); its numerics are
in test_triton_kernels.py."""

import dataclasses
import re

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget

from awqd.kernels.triton import skinny
from awqd.kernels.triton.layout import AwqdW4, by_group

H200_SMS = 132
LLAMA2_7B_FUSED = ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008))


def shape_only(out_features: int, in_features: int, group_size: int = 128) -> AwqdW4:
    return AwqdW4(None, None, None, in_features, out_features, group_size)


@pytest.mark.parametrize("rows", [1, 2, 4, 8, 16, 32, 64, 128])
@pytest.mark.parametrize(("out_features", "in_features"), LLAMA2_7B_FUSED)
def test_default_split_k_fills_the_sms_within_its_bounds(monkeypatch, rows, out_features, in_features):
    monkeypatch.setattr(skinny, "sm_count", lambda device: H200_SMS)
    tile = skinny.default_tile(rows)
    packed = shape_only(out_features, in_features)
    split = skinny.skinny_split_k(rows, packed, tile.block_m, tile.block_n, tile.block_k, torch.device("cuda"))

    assert split in (1, 2, 4, 8, 16)
    k_steps = in_features // tile.block_k
    assert split == 1 or k_steps >= split * skinny.MIN_STEPS_PER_SLICE
    partial_bytes, weight_bytes = split * 8 * rows * out_features, out_features * in_features // 2
    assert split == 1 or partial_bytes <= skinny.MAX_PARTIAL_FRACTION * weight_bytes
    programs = -(-rows // tile.block_m) * -(-out_features // tile.block_n) * split
    if rows <= 16:  # the decode regime: every shape gets at least one program per SM, spread evenly
        assert programs >= H200_SMS
        assert skinny.wave_fill(programs, H200_SMS) >= skinny.MIN_WAVE_FILL


def test_split_k_is_one_where_the_tiles_already_fill_the_device(monkeypatch):
    monkeypatch.setattr(skinny, "sm_count", lambda device: 4)
    assert skinny.skinny_split_k(16, shape_only(4096, 4096), 16, 128, 128, torch.device("cuda")) == 1


def test_launch_tile_keeps_a_k_step_within_one_group(monkeypatch):
    monkeypatch.setattr(skinny, "sm_count", lambda device: H200_SMS)
    monkeypatch.setattr(skinny, "use_tma", lambda device: False)
    resolved = skinny.resolve(skinny.default_tile(3), 3, shape_only(4096, 4096, 32), torch.device("cuda"))
    assert resolved.block_k == 32 and resolved.split_k >= 1 and not resolved.tma


def test_tuning_space_covers_the_skinny_buckets_only():
    assert all(skinny.tuning_space(bucket) for bucket in (1, 16, 64, skinny.SKINNY_MAX_ROWS))
    assert skinny.tuning_space(skinny.SKINNY_MAX_ROWS + 1) == ()
    assert {config.block_m for config in skinny.tuning_space(33)} == {64}


def test_scale_first_tiles_compete_from_128_tokens_within_their_bucket():
    for bucket in (1, 16, 64):
        assert not any(config.scale_first for config in skinny.tuning_space(bucket))
    for bucket in (128, 256, skinny.SKINNY_MAX_ROWS):
        chained = [config for config in skinny.tuning_space(bucket) if config.scale_first]
        assert chained and all(config.block_m <= bucket for config in chained)
    assert not skinny.default_tile(skinny.SKINNY_MAX_ROWS).scale_first


def sm90_ttgir(config: skinny.SkinnyConfig, dtype: str, split_k: int) -> str:
    """The TMA kernel compiled for sm_90 (Triton compiles for a named target without a GPU), as Triton GPU IR;
    split, it merges the partials in-kernel where the tile does, as when split counters are held."""
    kernel = skinny.awqd_w4_skinny_kernel
    tensors = {
        "x_src": f"tensordesc<{dtype}[{config.block_m},{config.block_k}]>",
        "w_src": f"tensordesc<i32[{config.block_n},{config.block_k // 8}]>",
        "sz_src": f"tensordesc<i32[1,{config.block_n}]>",
        "bias_ptr": f"*{dtype}",
        "target_ptr": "*fp32" if split_k > 1 else f"*{dtype}",
        "out_ptr": f"*{dtype}",
        "counters_ptr": "*i32",
        **dict.fromkeys(("M", "N", "K", "K_WORDS"), "i32"),
    }
    constants = {
        "GROUP_SIZE": 128,
        "BLOCK_M": config.block_m,
        "BLOCK_N": config.block_n,
        "BLOCK_K": config.block_k,
        "SPLIT_K": split_k,
        "NUM_STAGES": config.num_stages,
        "HAS_BIAS": False,
        "IS_BF16": dtype == "bf16",
        "USE_TMA": True,
        "USE_ASM": True,
        "DOT_IN_FP32": False,
        "MERGE": split_k > 1 and config.merge,
        "SCALE_FIRST": config.scale_first,
    }
    signature = {**tensors, **dict.fromkeys(constants, "constexpr")}
    attrs = {(kernel.arg_names.index("K_WORDS"),): [["tt.divisibility", 16]]}
    source = triton.compiler.ASTSource(kernel, signature, constants, attrs)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ttgir"]


@pytest.mark.parametrize(("rows", "dtype", "split_k"), [(16, "fp16", 4), (32, "bf16", 1), (64, "fp16", 2)])
def test_the_unpacked_weights_reach_the_mma_without_shared_memory(monkeypatch, rows, dtype, split_k):
    """The layout's point (FRAGMENT_COLUMNS): the words are read from the staged tile straight into the MMA's
    A-operand registers, and the activation tile goes from its TMA stage to the MMA as it lies: nothing is stored
    from registers to shared memory."""
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.6's default, as on the GPU hosts; 3.9 warns if unset
    config = skinny.default_tile(rows)
    ir = sm90_ttgir(config, dtype, split_k)
    element = {"fp16": "f16", "bf16": "bf16"}[dtype]
    operand = rf"tensor<{config.block_n}x{config.block_k}x{element}, #ttg.dot_op"
    assert re.search(rf"ttng.warp_group_dot %\S+, .*: {operand}", ir)
    stored = re.findall(r"ttg.local_alloc %\S+ : \(tensor<([0-9x]+)x", ir)
    assert stored == []


@pytest.mark.parametrize("groups", [1, 3])
def test_the_group_major_copy_holds_the_same_words_with_16_byte_rows(groups):
    scale_zero = torch.arange(64 * groups, dtype=torch.int32).view(64, groups)
    copy = by_group(scale_zero)
    assert torch.equal(copy, scale_zero.t()) and copy.stride() == (64, 1)


@pytest.mark.parametrize("rows", [16, 64])
def test_the_scale_zero_words_are_staged_with_the_tiles(monkeypatch, rows):
    """With TMA the (scale, zero) words are a third descriptor load, which the pipeliner stages num_stages deep with
    the weight and activation tiles: three TMA copies per stage (the prologue's and the loop's). Loaded by hand two
    steps ahead instead, they stopped the pipeliner (bench/results/h100-2026-12-06-scale-zero-ahead)."""
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    config = skinny.default_tile(rows)
    ir = sm90_ttgir(config, "fp16", 1)
    assert len(re.findall(r"async_tma_copy_global_to_local", ir)) == 3 * config.num_stages
    assert not re.findall(r"tt\.load ", ir)  # unsplit: no pointer load is left


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_scale_first_mmas_run_behind_the_next_unpack(monkeypatch, dtype):
    """scale_first's point: with one accumulator chained through the MMAs, the loop waits for all but the last
    wgmma issued (pendings 1), where the scaled-per-step form waits for every one (pendings 0)."""
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    chained = skinny.SkinnyConfig(128, 64, 128, 1, 4, 3, scale_first=True)
    in_loop = re.findall(r"warp_group_dot_wait .*pendings = (\d+)", sm90_ttgir(chained, dtype, 1))
    assert in_loop[:-1] and set(in_loop[:-1]) == {"1"}  # the last one, after the loop, drains it
    scaled = dataclasses.replace(chained, scale_first=False)
    assert set(re.findall(r"warp_group_dot_wait .*pendings = (\d+)", sm90_ttgir(scaled, dtype, 1))) == {"0"}


def test_split_k_is_merged_in_kernel_only_where_it_won():
    """Up to MERGE_MAX_ROWS the tiles merge their split-K partials, and the reduce launch still competes; above it,
    nothing merges."""
    for bucket in (1, 16):
        assert skinny.default_tile(bucket).merge
        assert any(not config.merge for config in skinny.tuning_space(bucket))
    for bucket in (17, 32, 64, skinny.SKINNY_MAX_ROWS):
        assert not any(config.merge for config in (skinny.default_tile(bucket), *skinny.tuning_space(bucket)))
