"""The residual add and RMS norm between sublayers, as one kernel per row on the GPU.

Semantics are transformers' LlamaRMSNorm after a residual add in the model's dtype: x = x + delta (rounded to the
dtype), normalized in float32, rounded, then scaled by the weight in the dtype. The Triton kernel does exactly
those roundings in one pass; one program owns one row, so a row's result never depends on the batch around it.
"""

import torch

from awqd.engine.layers.dispatch import use_triton


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + delta, rms_norm(x + delta)) for x [rows, hidden]; delta None: no add."""
    if use_triton(x):
        from awqd.engine.layers.triton_norm import add_rms_norm_rows

        return add_rms_norm_rows(x, delta, weight, eps)
    return add_rms_norm_torch(x, delta, weight, eps)


def add_rms_norm_torch(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if delta is not None:
        x = x + delta
    x32 = x.float()
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return x, weight * normed
