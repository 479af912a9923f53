"""awqd's Triton dequantize of the awqd_w4 layout, then cuBLAS (awqd/kernels/triton/dequant.py): the largest batches.

It reads the layout awqd's fused kernels already hold, so choosing it for the large buckets costs no memory.
"""

import functools

from awqd.kernels.triton.candidate import AwqdW4Candidate, TritonKernel


@functools.cache
def dequant_kernel() -> TritonKernel:
    from awqd.kernels.triton import dequant  # imports triton: only when this candidate is used

    return TritonKernel(dequant.dequant_matmul, dequant.DequantConfig, dequant.tuning_space)


class AwqdTritonDequantCublas(AwqdW4Candidate):
    name = "awqd_triton_dequant_cublas"
    family = "dequant_matmul"

    def kernel(self) -> TritonKernel:
        return dequant_kernel()
