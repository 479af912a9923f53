"""The MLP's gating, silu(gate) * up, over the fused gate_up projection's output [rows, 2 * intermediate]."""

import torch
import torch.nn.functional as F

from awqd.engine.layers.dispatch import use_triton


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    if use_triton(gate_up):
        from awqd.engine.layers.triton_activation import silu_and_mul_rows

        return silu_and_mul_rows(gate_up)
    return silu_and_mul_torch(gate_up)


def silu_and_mul_torch(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
