"""The packing-independent form of an AWQ-quantized linear weight.

Every checkpoint packing (GEMM, GEMV) unpacks to this, and every kernel's
layout is packed from it, so the kernel is never tied to the checkpoint.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantConfig:
    w_bit: int
    group_size: int
    zero_point: bool
    version: str  # the checkpoint's packing, "GEMM" or "GEMV"


@dataclass
class QuantizedWeight:
    """W[o, i] = (q[o, i] - zeros[o, i // g]) * scales[o, i // g].

    q:      uint8 [out_features, in_features], values 0..15
    zeros:  uint8 [out_features, in_features // group_size], values 0..15
            (8 everywhere for symmetric checkpoints without a zero point)
    scales: float16 [out_features, in_features // group_size]
    bias:   float16 [out_features] or None
    """

    q: torch.Tensor
    zeros: torch.Tensor
    scales: torch.Tensor
    group_size: int
    bias: torch.Tensor | None = None

    @property
    def out_features(self) -> int:
        return self.q.shape[0]

    @property
    def in_features(self) -> int:
        return self.q.shape[1]
