"""The skinny kernel's launch choices (awqd/kernels/triton/skinny.py); its numerics are in test_triton_kernels.py."""

import pytest
import torch

from awqd.kernels.triton import skinny
from awqd.kernels.triton.layout import AwqdW4

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
