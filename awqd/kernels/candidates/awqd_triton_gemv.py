"""awqd's own Triton GEMV on the awqd_w4 layout (awqd/kernels/triton/gemv.py): meant for 1 to a few tokens."""

import functools

from awqd.kernels.triton.candidate import AwqdW4Candidate, TritonKernel


@functools.cache
def gemv_kernel() -> TritonKernel:
    from awqd.kernels.triton import gemv  # imports triton: only when this candidate is used

    return TritonKernel(gemv.gemv, gemv.GemvConfig, gemv.tuning_space, gemv.gemv_gated, gemv.gemv_add_norm)


class AwqdTritonGemv(AwqdW4Candidate):
    name = "awqd_triton_gemv"
    family = "gemv"

    def kernel(self) -> TritonKernel:
        return gemv_kernel()
