"""Triton kernel for silu_and_mul (awqd.engine.layers.activation): rounds where torch's two ops round."""

import torch
import triton
import triton.language as tl

from awqd.kernels.triton.gating import silu_mul

BLOCK = 1024


@triton.jit
def silu_and_mul_kernel(gate_up_ptr, out_ptr, intermediate, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    columns = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = columns < intermediate
    gate = tl.load(gate_up_ptr + row * 2 * intermediate + columns, mask=mask, other=0.0)
    up = tl.load(gate_up_ptr + row * 2 * intermediate + intermediate + columns, mask=mask, other=0.0)
    tl.store(out_ptr + row * intermediate + columns, silu_mul(gate, up), mask=mask)


def silu_and_mul_rows(gate_up: torch.Tensor) -> torch.Tensor:
    gate_up = gate_up.reshape(-1, gate_up.shape[-1]).contiguous()
    rows, intermediate = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty(rows, intermediate, dtype=gate_up.dtype, device=gate_up.device)
    silu_and_mul_kernel[(rows, triton.cdiv(intermediate, BLOCK))](gate_up, out, intermediate, BLOCK=BLOCK, num_warps=4)
    return out
