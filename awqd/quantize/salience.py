"""Activation salience: how unevenly the calibration activations spread over a linear layer's input channels.

The AWQ paper found that ~1% of input channels carry outsized activations and that protecting their
weights matters most. AWQ protects them by scaling those channels up before quantizing (the scale comes
from these same mean |x| statistics), not by keeping them in fp16: the checkpoint stays plain INT4.
These numbers are reported so a user can see how salient a model's channels were.
"""

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

TOP_FRACTION = 0.01  # the paper's "~1% salient channels"
REPORTED_CHANNELS = 8


@dataclass(frozen=True)
class ChannelSalience:
    in_features: int
    tokens: int  # calibration tokens the statistics were measured on
    top_channels_share: float  # share of the summed mean |x| carried by the top 1% of channels (0.01 = flat)
    max_median_ratio: float | None  # largest channel's mean |x| over the median channel's; None if the median is 0
    top_channels: list[int]  # input channels with the largest mean |x|, largest first

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(channel_sums: torch.Tensor, tokens: int) -> ChannelSalience:
    """Statistics from per-channel sums of |x| over `tokens` rows."""
    mean_abs = channel_sums.double() / tokens
    in_features = mean_abs.numel()
    top_count = max(1, math.ceil(TOP_FRACTION * in_features))
    ordered = mean_abs.sort(descending=True)
    total = mean_abs.sum().item()
    median = mean_abs.median().item()
    return ChannelSalience(
        in_features=in_features,
        tokens=tokens,
        top_channels_share=ordered.values[:top_count].sum().item() / total if total > 0 else 0.0,
        max_median_ratio=ordered.values[0].item() / median if median > 0 else None,
        top_channels=ordered.indices[:REPORTED_CHANNELS].tolist(),
    )


class SalienceRecorder:
    """Accumulates per-input-channel sums of |x| for named nn.Linear layers through forward pre-hooks."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._tokens: dict[str, int] = {}

    @contextmanager
    def watch(self, linears: Mapping[str, nn.Linear]) -> Iterator[None]:
        """Record the inputs of `linears` (full names -> modules) for the forwards run inside the block."""
        handles = [linear.register_forward_pre_hook(self._hook(name)) for name, linear in linears.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, name: str):
        def record(module: nn.Linear, args: tuple) -> None:
            rows = args[0].detach().reshape(-1, module.in_features)
            sums = rows.abs().sum(dim=0, dtype=torch.float32).cpu()
            self._sums[name] = self._sums[name] + sums if name in self._sums else sums
            self._tokens[name] = self._tokens.get(name, 0) + rows.shape[0]

        return record

    def results(self) -> dict[str, ChannelSalience]:
        return {name: summarize(sums, self._tokens[name]) for name, sums in self._sums.items()}
