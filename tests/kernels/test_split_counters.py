"""Which split counters a launch may count on (awqd/kernels/split_counters.py)."""

import torch

from awqd.kernels import split_counters

CPU = torch.device("cpu")


def test_a_launch_gets_counters_only_while_they_are_held():
    counters = split_counters.new(CPU)
    assert split_counters.for_launch(CPU, 4) is None
    with split_counters.held(counters):
        assert split_counters.for_launch(CPU, 4) is counters
    assert split_counters.for_launch(CPU, 4) is None


def test_counters_too_few_for_the_grid_or_on_another_device_are_not_used():
    with split_counters.held(split_counters.new(CPU, 8)):
        assert split_counters.for_launch(CPU, 8) is not None
        assert split_counters.for_launch(CPU, 9) is None
        assert split_counters.for_launch(torch.device("meta"), 1) is None


def test_inner_counters_are_released_to_the_outer_ones():
    outer, inner = split_counters.new(CPU), split_counters.new(CPU)
    with split_counters.held(outer):
        with split_counters.held(inner):
            assert split_counters.for_launch(CPU, 1) is inner
        assert split_counters.for_launch(CPU, 1) is outer


def test_new_counters_are_zero_and_int32():
    counters = split_counters.new(CPU)
    assert counters.dtype == torch.int32 and counters.numel() == split_counters.CAPACITY and not counters.any()
