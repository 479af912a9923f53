"""awqd.kernels.measure's per-launch timing, which tuning ranks tiles by."""

import torch

from awqd.kernels.measure import per_launch_ms


def test_per_launch_timing_runs_every_launch_back_to_back_in_each_pass():
    calls: list[int] = []
    launches = [lambda index=index: calls.append(index) for index in range(3)]

    launch_ms = per_launch_ms("three launches", launches, torch.device("cpu"), (1, 2))

    # One warm-up and two timed passes, each running all three launches in order: no launch is timed alone.
    assert calls == [0, 1, 2] * 3
    assert launch_ms >= 0
