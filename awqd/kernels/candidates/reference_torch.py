"""The pure-torch oracle as a candidate: slow, but runs anywhere and is right by construction."""

import dataclasses

import torch

from awqd.kernels.base import Candidate
from awqd.quant.reference import reference_linear
from awqd.quant.tensors import QuantizedWeight


class ReferenceTorch(Candidate):
    name = "reference_torch"
    family = "reference"
    layout = "canonical"

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> QuantizedWeight:
        bias = None if weight.bias is None else weight.bias.to(device)
        return dataclasses.replace(
            weight, q=weight.q.to(device), zeros=weight.zeros.to(device), scales=weight.scales.to(device), bias=bias
        )

    def forward(self, x: torch.Tensor, packed: QuantizedWeight) -> torch.Tensor:
        return reference_linear(x, packed)
