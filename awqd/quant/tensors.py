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


def concat_out_features(weights: list[QuantizedWeight]) -> QuantizedWeight:
    """One weight whose output rows are `weights`' rows in order, e.g. q, k and v as one qkv projection.

    Exact: groups run along in_features, so stacking output rows keeps every row's own zeros and scales.
    """
    first = weights[0]
    if any(w.in_features != first.in_features or w.group_size != first.group_size for w in weights):
        raise ValueError("fused weights need the same in_features and group_size")
    if len({w.bias is None for w in weights}) != 1:
        raise ValueError("fused weights need a bias on all of them or on none")
    return QuantizedWeight(
        q=torch.cat([w.q for w in weights]),
        zeros=torch.cat([w.zeros for w in weights]),
        scales=torch.cat([w.scales for w in weights]),
        group_size=first.group_size,
        bias=None if first.bias is None else torch.cat([w.bias for w in weights]),
    )
