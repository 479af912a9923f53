"""awqd's own Triton tensor-core GEMM on the awqd_w4 layout (awqd/kernels/triton/gemm.py): 16 tokens and up.

Its batch-invariant variant runs one fixed tile at every row count (gemm.BATCH_INVARIANT_TILE). It is not a
selection candidate: --batch-invariant makes it a model's only kernel, so that a request's greedy tokens do not
depend on what it was batched with.
"""

import functools

import torch

from awqd.kernels.triton.candidate import AwqdW4Candidate, TritonKernel
from awqd.kernels.triton.layout import AwqdW4, check_activations


@functools.cache
def gemm_kernel() -> TritonKernel:
    from awqd.kernels.triton import gemm  # imports triton: only when this candidate is used

    return TritonKernel(gemm.gemm, gemm.GemmConfig, gemm.tuning_space)


class AwqdTritonGemm(AwqdW4Candidate):
    name = "awqd_triton_gemm"
    family = "gemm"

    def kernel(self) -> TritonKernel:
        return gemm_kernel()


class AwqdTritonGemmBatchInvariant(AwqdTritonGemm):
    name = "awqd_triton_gemm_batch_invariant"

    def forward(self, x: torch.Tensor, packed: AwqdW4) -> torch.Tensor:
        from awqd.kernels.triton.gemm import BATCH_INVARIANT_TILE

        check_activations(x, packed)
        rows = x.reshape(-1, packed.in_features).contiguous()
        out = self.kernel().launch(rows, packed, BATCH_INVARIANT_TILE)
        return out.reshape(*x.shape[:-1], packed.out_features)
