"""The correctness oracle for every kernel: W = (q - z) * s, computed exactly in float32."""

import torch

from awqd.quant.tensors import QuantizedWeight


def dequantize(weight: QuantizedWeight, dtype: torch.dtype) -> torch.Tensor:
    """W [out, in] in `dtype`. (q - z) is a small integer and s an fp16 value, so their float32 product is exact
    and the only rounding is the final cast."""
    zeros = weight.zeros.to(torch.float32).repeat_interleave(weight.group_size, dim=1)
    scales = weight.scales.to(torch.float32).repeat_interleave(weight.group_size, dim=1)
    return ((weight.q.to(torch.float32) - zeros) * scales).to(dtype)


def reference_linear(x: torch.Tensor, weight: QuantizedWeight) -> torch.Tensor:
    """y = x @ W.T + bias, accumulated in float32 and returned in x's dtype."""
    y = x.to(torch.float32) @ dequantize(weight, torch.float32).t()
    if weight.bias is not None:
        y = y + weight.bias.to(torch.float32)
    return y.to(x.dtype)
