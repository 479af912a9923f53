"""awqd's own Triton tensor-core GEMM on the awqd_w4 layout (awqd/kernels/triton/gemm.py): 16 tokens and up."""

import functools

from awqd.kernels.triton.candidate import AwqdW4Candidate, TritonKernel


@functools.cache
def gemm_kernel() -> TritonKernel:
    from awqd.kernels.triton import gemm  # imports triton: only when this candidate is used

    return TritonKernel(gemm.gemm, gemm.GemmConfig, gemm.tuning_space)


class AwqdTritonGemm(AwqdW4Candidate):
    name = "awqd_triton_gemm"
    family = "gemm"

    def kernel(self) -> TritonKernel:
        return gemm_kernel()
