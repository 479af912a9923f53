"""awqd's own Triton kernel for skinny batches on the awqd_w4 layout (awqd/kernels/triton/skinny.py), tuned for 1 to
512 tokens: each weight tile unpacked once per program and multiplied against the tile's tokens on the tensor
cores."""

import functools

from awqd.kernels.triton.candidate import AwqdW4Candidate, TritonKernel


@functools.cache
def skinny_kernel() -> TritonKernel:
    from awqd.kernels.triton import skinny  # imports triton: only when this candidate is used

    return TritonKernel(
        skinny.skinny,
        skinny.SkinnyConfig,
        skinny.tuning_space,
        compile_tile=functools.partial(skinny.skinny, compile_only=True),
    )


class AwqdTritonSkinny(AwqdW4Candidate):
    name = "awqd_triton_skinny"
    family = "gemm"

    def kernel(self) -> TritonKernel:
        return skinny_kernel()
