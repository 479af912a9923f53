"""What awqd's Triton candidates share: the awqd_w4 layout and the reshape around a kernel; each names its kernel."""

import abc
from collections.abc import Callable

import torch

from awqd.kernels.base import Candidate
from awqd.kernels.triton.layout import LAYOUT, AwqdW4, check_activations, pack_awqd_w4
from awqd.quant.tensors import QuantizedWeight


class AwqdW4Candidate(Candidate):
    layout = LAYOUT

    @abc.abstractmethod
    def kernel(self) -> Callable[[torch.Tensor, AwqdW4], torch.Tensor]:
        """The launch wrapper for 2-D activations; importing it imports triton."""

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> AwqdW4:
        self.kernel()  # a missing or broken Triton fails the load, not a model step
        return pack_awqd_w4(weight, device)

    def forward(self, x: torch.Tensor, packed: AwqdW4) -> torch.Tensor:
        check_activations(x, packed)
        rows = x.reshape(-1, packed.in_features).contiguous()
        return self.kernel()(rows, packed).reshape(*x.shape[:-1], packed.out_features)
