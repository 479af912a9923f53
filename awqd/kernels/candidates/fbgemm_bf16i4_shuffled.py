"""fbgemm-gpu-genai's preshuffled CUTLASS mixed-input GEMM for Hopper: `torch.ops.fbgemm.bf16i4bf16_shuffled`.

The same arithmetic and tensors as fbgemm_bf16i4_rowwise, with the int4 weight reordered once at load by
`torch.ops.fbgemm.preshuffle_i4` (for bf16 scales it reorders the weight in place and leaves scales as they are),
so the kernel's loads match its MMA layout. fbgemm's quantize_int4_preshuffle would re-quantize from a float weight;
the op alone keeps AWQ's exact values. The preshuffle runs on the GPU: bench/kernel_peers.py reports its cost.
"""

import torch

from awqd.kernels.candidates.fbgemm_bf16i4_rowwise import (
    SCALE_DTYPE,
    FbgemmBf16i4Rowwise,
    FbgemmInt4Linear,
    check_shape,
    fbgemm_linear,
    pack_signed_nibbles,
    require,
    run_bf16,
)
from awqd.kernels.requirements import FBGEMM_SHUFFLED
from awqd.quant.tensors import QuantizedWeight


def preshuffle(weight: QuantizedWeight, device: torch.device) -> torch.Tensor:
    nibbles = pack_signed_nibbles(weight.q.to(device))
    scales = weight.scales.t().to(device=device, dtype=SCALE_DTYPE).contiguous()  # only selects the bf16 path
    shuffled, _ = torch.ops.fbgemm.preshuffle_i4(nibbles, scales)
    return shuffled


class FbgemmBf16i4Shuffled(FbgemmBf16i4Rowwise):
    name = "fbgemm_bf16i4_shuffled"
    layout = "fbgemm_int4_shuffled"

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> FbgemmInt4Linear:
        require(self.name, FBGEMM_SHUFFLED)
        check_shape(self.name, weight)
        return fbgemm_linear(weight, preshuffle(weight, device), device)

    def forward(self, x: torch.Tensor, packed: FbgemmInt4Linear) -> torch.Tensor:
        return run_bf16(torch.ops.fbgemm.bf16i4bf16_shuffled, x, packed)
