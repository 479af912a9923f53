"""Dequantize awqd_w4 to a dense fp16/bf16 weight with Triton, then F.linear on cuBLAS: for the largest batches.

At a few hundred tokens a step is compute-bound, and cuBLAS's tensor-core GEMM beats any fused int4 kernel here
(bench/results), so the weight is expanded once per call and the matmul left to cuBLAS. The expansion is
bandwidth-bound: it reads 0.5 byte and writes 2 bytes per weight, one [BLOCK_N, BLOCK_K] tile per program,
with the same unpacking as the fused kernels (unpack.py). The dense copy lives only for the call.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from awqd.kernels.triton.layout import AwqdW4, interpreting
from awqd.kernels.triton.unpack import dequantize_tile, load_words, natural_order


@dataclass(frozen=True)
class DequantConfig:
    block_n: int = 32
    block_k: int = 256
    num_warps: int = 4


def tuning_space(bucket: int) -> tuple[DequantConfig, ...]:
    """Nothing to tune: one bandwidth-bound tile is within noise of the others."""
    return ()


@triton.jit
def awqd_w4_dequantize_kernel(
    qweight_ptr,
    scale_zero_ptr,
    out_ptr,
    N,
    K,
    GROUP_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    USE_ASM: tl.constexpr,
):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    w_rows = qweight_ptr + n[:, None] * (K // 8)
    sz_rows = scale_zero_ptr + n[:, None] * (K // GROUP_SIZE)
    words = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    w, sz = load_words(w_rows, sz_rows, n < N, words, K // 8, GROUP_SIZE)
    weights = natural_order(
        dequantize_tile(w, sz, out_ptr.dtype.element_ty, BLOCK_N, BLOCK_K, USE_ASM), BLOCK_N, BLOCK_K
    )
    k = k0 + tl.arange(0, BLOCK_K)
    tl.store(out_ptr + n.to(tl.int64)[:, None] * K + k[None, :], weights, mask=(n < N)[:, None] & (k < K)[None, :])


def dequantize(packed: AwqdW4, dtype: torch.dtype, config: DequantConfig) -> torch.Tensor:
    """W [out_features, in_features] in `dtype`."""
    weight = torch.empty((packed.out_features, packed.in_features), dtype=dtype, device=packed.qweight.device)
    grid = (triton.cdiv(packed.out_features, config.block_n), triton.cdiv(packed.in_features, config.block_k))
    awqd_w4_dequantize_kernel[grid](
        packed.qweight,
        packed.scale_zero,
        weight,
        packed.out_features,
        packed.in_features,
        GROUP_SIZE=packed.group_size,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        USE_ASM=not interpreting(),
        num_warps=config.num_warps,
    )
    return weight


def dequant_matmul(x: torch.Tensor, packed: AwqdW4, config: DequantConfig | None = None) -> torch.Tensor:
    """y = x @ W.T + bias for x [rows, in_features] in fp16 or bf16, the matmul on cuBLAS."""
    weight = dequantize(packed, x.dtype, config or DequantConfig())
    bias = packed.bias.to(x.dtype) if packed.bias is not None else None
    return F.linear(x, weight, bias)
