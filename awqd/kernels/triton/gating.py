"""The MLP's gating, silu(gate) * up, as a Triton function for kernels that end in it: the engine's gating kernel
(awqd.engine.layers.triton_activation) and the GEMV's gated epilogue (gemv.py). One function, so both round alike."""

import triton
import triton.language as tl


@triton.jit
def silu_mul(gate, up):
    """silu(gate) * up for gate and up in the model's dtype, rounded to it where torch's two ops round."""
    gate32 = gate.to(tl.float32)
    silu = (gate32 / (1.0 + tl.exp(-gate32))).to(gate.dtype)
    return (silu.to(tl.float32) * up.to(tl.float32)).to(gate.dtype)
