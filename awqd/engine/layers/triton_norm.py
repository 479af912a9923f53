"""Triton kernel for add_rms_norm (awqd.engine.layers.norm): one program per row, the whole row in registers."""

import torch
import triton
import triton.language as tl


@triton.jit
def add_rms_norm_kernel(
    x_ptr, delta_ptr, weight_ptr, x_out_ptr, normed_ptr, hidden, eps, HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64) * hidden
    columns = tl.arange(0, BLOCK)
    mask = columns < hidden
    x = tl.load(x_ptr + row + columns, mask=mask, other=0.0)
    if HAS_DELTA:
        x = (x.to(tl.float32) + tl.load(delta_ptr + row + columns, mask=mask, other=0.0).to(tl.float32)).to(x.dtype)
        tl.store(x_out_ptr + row + columns, x, mask=mask)
    x32 = x.to(tl.float32)
    inverse_rms = 1.0 / tl.sqrt(tl.sum(x32 * x32, axis=0) / hidden + eps)
    normed = (x32 * inverse_rms).to(x.dtype)
    weight = tl.load(weight_ptr + columns, mask=mask, other=0.0)
    tl.store(normed_ptr + row + columns, (normed.to(tl.float32) * weight.to(tl.float32)).to(x.dtype), mask=mask)


def add_rms_norm_rows(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float, warps: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """warps other than the default are for bench/small_kernels_tune.py."""
    rows, hidden = x.shape
    x = x.contiguous()
    x_out = torch.empty_like(x) if delta is not None else x
    normed = torch.empty_like(x)
    block = triton.next_power_of_2(hidden)
    add_rms_norm_kernel[(rows,)](
        x,
        delta.contiguous() if delta is not None else x,  # never read without HAS_DELTA
        weight,
        x_out,
        normed,
        hidden,
        eps,
        HAS_DELTA=delta is not None,
        BLOCK=block,
        num_warps=warps or min(16, max(1, block // 256)),
    )
    return x_out, normed
