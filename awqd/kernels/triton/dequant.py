"""Dequantize awqd_w4 to a dense fp16/bf16 weight with Triton, then F.linear on cuBLAS: for the largest batches.

From a few thousand tokens a step is compute-bound, and cuBLAS's tensor-core GEMM beats any fused int4 kernel here
(an H200's decisions pick this one at 2048 and 8192 tokens: bench/results/h200-2026-12-05-gemv-fma-unroll), so
the weight is expanded once per call and the matmul left to cuBLAS. The expansion is bandwidth-bound: it reads 0.5
byte and writes 2 bytes per weight, one [BLOCK_N, BLOCK_K] tile per program, with the same unpacking as the fused
kernels (unpack.py), at 2.9-3.5 TB/s on an H200 (copy: 4.1 TB/s). The dense copy lives only for the call.
Tried and rejected on an H100 (bench/results/h100-2026-12-05-dequant-tiles):
- storing each thread's runs of 32 columns from the registers they were unpacked in, without the shared-memory
  transpose: 1.9-2.9x slower per linear, as a warp's 16-byte stores then fall in 32 rows;
- row chunks small enough that the fp16 chunk stays in L2 until cuBLAS reads it: 8-89% slower per layer at 256-2048
  tokens, the smaller the chunks the slower, as cuBLAS loses more on the narrower matmuls than the round trip costs.
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
    block_n: int = 8
    block_k: int = 1024
    num_warps: int = 4


def tuning_space(bucket: int) -> tuple[DequantConfig, ...]:
    """Nothing to tune: the work does not depend on the batch. On an H200 the default was the fastest of ten tiles on
    all four Llama-2-7B linears: a layer's dequantize took 151 µs against 211 at 32 x 256, and the layer 13% less at
    512 tokens (bench/results/h200-2026-12-05-dequant-tiles). On an H100 the tiles of 4-8 rows x 512-1024 columns
    came within 2% of it. With 4 warps a program can fill an SM on GPUs that cap its resident programs at 32
    (1-warp programs would leave half the warps empty)."""
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
