"""torch's int4 matmul for the host CPU: `aten._weight_int4pack_mm_for_cpu` on `_convert_weight_to_int4pack_for_cpu`.

Same arithmetic as tinygemm, w = (q - 8) * scale + zero, but its own layout (uint8 [N, K/2] from int32 [N, K]) and
kernel, so it is a candidate of its own. The op takes float32, fp16 or bf16, but only bf16 has a vectorised kernel:
on a 2-core AVX-512 host, [16 x 4096] @ [4096 x 4096] took 47 ms in bf16 and 3.2 s in float32 (1.1 ms and 209 ms
for one row). So it computes in bf16, casting the CPU's float32 activations in and the result back, and is held to
the 16-bit tolerance (precision). The packing itself is exact: with float32 scale and zero the op reproduces the
reference weight bit for bit (tests/kernels/test_peer_candidates.py).
"""

import torch

from awqd.errors import InvalidArgument
from awqd.kernels.base import Candidate
from awqd.kernels.candidates.torch_int4_tinygemm import Int4PackLinear, check_group_size, int4pack_linear
from awqd.quant.tensors import QuantizedWeight

N_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu: "expect N to be dividable by 16"


def pack_int4_cpu(q: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)  # 1: unused on CPU


class TorchInt4Cpu(Candidate):
    name = "torch_int4_cpu"
    family = "gemm"
    layout = "int4pack_cpu"
    precision = torch.bfloat16

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> Int4PackLinear:
        check_group_size(self.name, weight)
        if weight.out_features % N_MULTIPLE or weight.in_features % 2:
            raise InvalidArgument(
                "shape",
                f"{self.name}: needs out_features % {N_MULTIPLE} == 0 and an even in_features, "
                f"got [{weight.out_features}, {weight.in_features}]",
            )
        return int4pack_linear(weight, pack_int4_cpu(weight.q.to(device)), torch.bfloat16, device)

    def forward(self, x: torch.Tensor, packed: Int4PackLinear) -> torch.Tensor:
        rows = x.reshape(-1, packed.in_features).to(torch.bfloat16).contiguous()
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows, packed.weight, packed.group_size, packed.scales_and_zeros
        ).to(x.dtype)
        if packed.bias is not None:
            out = out + packed.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], packed.out_features)
