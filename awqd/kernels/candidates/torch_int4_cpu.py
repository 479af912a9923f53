"""torch's int4 matmul for the host CPU: `aten._weight_int4pack_mm_for_cpu` on `_convert_weight_to_int4pack_for_cpu`.

Same arithmetic as tinygemm, w = (q - 8) * scale + zero, but its own layout (uint8 [N, K/2] from int32 [N, K]) and
kernel, so it is a candidate of its own. It runs in float32 here: scale and zero = (8 - z) * s are exact in
float32, so the dequantized weight equals the reference bit for bit (tests/test_peer_candidates.py).
"""

import torch

from awqd.errors import InvalidArgument
from awqd.kernels.base import Candidate
from awqd.kernels.candidates.torch_int4_tinygemm import Int4PackLinear, check_group_size, int4pack_linear
from awqd.quant.tensors import QuantizedWeight

N_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu: "expect N to be dividable by 16"


class TorchInt4Cpu(Candidate):
    name = "torch_int4_cpu"
    family = "gemm"
    layout = "int4pack_cpu"

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> Int4PackLinear:
        check_group_size(self.name, weight)
        if weight.out_features % N_MULTIPLE or weight.in_features % 2:
            raise InvalidArgument(
                "shape",
                f"{self.name}: needs out_features % {N_MULTIPLE} == 0 and an even in_features, "
                f"got [{weight.out_features}, {weight.in_features}]",
            )
        q = weight.q.to(device=device, dtype=torch.int32).contiguous()
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)  # inner_k_tiles: unused on the CPU
        return int4pack_linear(weight, packed, torch.float32, device)

    def forward(self, x: torch.Tensor, packed: Int4PackLinear) -> torch.Tensor:
        rows = x.reshape(-1, packed.in_features).to(torch.float32).contiguous()
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows, packed.weight, packed.group_size, packed.scales_and_zeros
        )
        if packed.bias is not None:
            out = out + packed.bias.to(torch.float32)
        return out.to(x.dtype).reshape(*x.shape[:-1], packed.out_features)
