"""awqd's W4A16 GEMM: tensor-core tiles (tl.dot), the int4 tile dequantized to fp16 in registers.

The product is computed transposed, out.T = W @ x.T: the dequantized weight tile [BLOCK_N, BLOCK_K] is the MMA's
A operand straight from registers, and the activations, often only a few rows, are the B operand, where 16
columns is the minimum. So one kernel serves 1 to 512+ tokens, with split-K for the small ones.
Grid (M tiles * N tiles, SPLIT_K); M tiles are the fastest grid axis, so programs sharing a weight tile run
together and the int4 tile is read from memory once. Per K step each weight word gives eight fp16 values
(unpack.py), dequantized as (1024 + q - (1024 + z)) * s, and joined back into column order (unpack.py).
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from awqd.kernels.triton.layout import AwqdW4, interpreting
from awqd.kernels.triton.splitk import finish_split_k, output_buffers, program_tile, split_k_for, store_transposed
from awqd.kernels.triton.unpack import dequantize_tile, load_words, packed_order


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int
    prefetch: bool = False  # load step k+1 while computing step k, by hand (see the kernel)


# Untuned defaults by M bucket, the H200 sweep's most frequent winners (bench/results):
# (largest M, BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, prefetch).
GEMM_TILES = (
    (16, 16, 64, 128, 4, 3, True),
    (32, 32, 64, 128, 4, 3, True),
    (64, 64, 64, 128, 4, 3, True),
    (None, 128, 64, 64, 4, 3, False),
)
# What boot-time tuning times per M bucket: the sweep's most frequent top-3 tiles for each class of M.
GEMM_TUNING_SPACES = (
    (
        16,
        (
            GemmConfig(16, 64, 128, 4, 4, 3, prefetch=True),
            GemmConfig(16, 64, 128, 8, 4, 3, prefetch=True),
            GemmConfig(16, 256, 64, 8, 4, 3),
            GemmConfig(16, 128, 64, 8, 4, 3),
        ),
    ),
    (
        32,
        (
            GemmConfig(32, 128, 128, 8, 4, 3, prefetch=True),
            GemmConfig(32, 64, 128, 4, 4, 3, prefetch=True),
            GemmConfig(32, 128, 64, 4, 4, 3),
        ),
    ),
    (
        64,
        (
            GemmConfig(64, 64, 128, 4, 4, 3, prefetch=True),
            GemmConfig(64, 128, 64, 8, 4, 3),
            GemmConfig(64, 128, 64, 4, 4, 3),
        ),
    ),
    (None, (GemmConfig(128, 64, 64, 2, 4, 3), GemmConfig(128, 64, 64, 1, 4, 3), GemmConfig(128, 64, 64, 2, 8, 3))),
)


# Batch-invariant decoding (--batch-invariant) runs this one tile at every row count: 16-token M tiles, so each
# token's products and their K order never depend on how many tokens share the step. Split-K 2 keeps small batches
# from leaving SMs idle and stays invariant: the reduce kernel adds the two fp32 partials in a fixed order.
BATCH_INVARIANT_TILE = GemmConfig(16, 64, 128, 2, 4, 3, prefetch=True)


def tuning_space(bucket: int) -> tuple[GemmConfig, ...]:
    return next(space for largest, space in GEMM_TUNING_SPACES if largest is None or bucket <= largest)


def gemm_config(rows: int, packed: AwqdW4, device: torch.device) -> GemmConfig:
    """The untuned default: tiles by M bucket from GEMM_TILES; split-K only when the tiles leave SMs idle."""
    _, block_m, block_n, block_k, num_warps, num_stages, prefetch = next(
        tile for tile in GEMM_TILES if tile[0] is None or rows <= tile[0]
    )
    tiles = triton.cdiv(rows, block_m) * triton.cdiv(packed.out_features, block_n)
    split_k = split_k_for(tiles, triton.cdiv(packed.in_features, block_k), device)
    return GemmConfig(block_m, block_n, block_k, split_k, num_warps, num_stages, prefetch)


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """The Triton 3.x interpreter's tl.dot multiplies the bit patterns of bf16 (it stores them as uint16): there,
    and only there, bf16 dots take fp32 operands. On a GPU bf16 goes to the tensor cores as it is."""
    return interpreting() and dtype == torch.bfloat16


@triton.jit
def awqd_w4_gemm_kernel(
    x_ptr,
    qweight_ptr,
    scale_zero_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    GROUP_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PREFETCH: tl.constexpr,
    USE_ASM: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    pid_m, pid_n, pid_k, k_start, k_end = program_tile(M, K, BLOCK_M, BLOCK_K, SPLIT_K)
    WORDS: tl.constexpr = BLOCK_K // 8
    dtype = x_ptr.dtype.element_ty
    operand_dtype = tl.float32 if DOT_IN_FP32 else dtype

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = m < M
    n_mask = n < N
    k = tl.arange(0, BLOCK_K)
    word = tl.arange(0, WORDS)
    x_rows = x_ptr + m.to(tl.int64)[:, None] * K
    w_rows = qweight_ptr + n[:, None] * (K // 8)
    sz_rows = scale_zero_ptr + n[:, None] * (K // GROUP_SIZE)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)  # out.T
    if PREFETCH:
        w_next, sz_next = load_words(w_rows, sz_rows, n_mask, k_start // 8 + word, k_end // 8, GROUP_SIZE)
        x_next = tl.load(
            x_rows + (k_start + k)[None, :], mask=m_mask[:, None] & (k_start + k < k_end)[None, :], other=0.0
        )
    for k0 in range(k_start, k_end, BLOCK_K):
        if PREFETCH:  # small M: latency-bound, so the next step's loads are issued before this step computes
            w, sz, x = w_next, sz_next, x_next
            next_k = k0 + BLOCK_K
            w_next, sz_next = load_words(w_rows, sz_rows, n_mask, next_k // 8 + word, k_end // 8, GROUP_SIZE)
            x_next = tl.load(
                x_rows + (next_k + k)[None, :], mask=m_mask[:, None] & (next_k + k < k_end)[None, :], other=0.0
            )
        else:  # large M: Triton's pipeliner stages the activation tiles through shared memory itself
            w, sz = load_words(w_rows, sz_rows, n_mask, k0 // 8 + word, k_end // 8, GROUP_SIZE)
            x = tl.load(x_rows + (k0 + k)[None, :], mask=m_mask[:, None] & (k0 + k < K)[None, :], other=0.0)
        weights = dequantize_tile(w, sz, operand_dtype, BLOCK_N, BLOCK_K, USE_ASM)  # [BLOCK_N, BLOCK_K] as packed
        x = packed_order(x, BLOCK_M, BLOCK_K)
        if DOT_IN_FP32:
            acc = tl.dot(weights, tl.trans(x.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(weights, tl.trans(x), acc)

    store_transposed(out_ptr, bias_ptr, acc, m, n, m_mask, n_mask, M, N, pid_k, SPLIT_K, HAS_BIAS)


def gemm(x: torch.Tensor, packed: AwqdW4, config: GemmConfig | None = None) -> torch.Tensor:
    """y = x @ W.T + bias for contiguous x [rows, in_features] in fp16 or bf16; y [rows, out_features] in x's dtype."""
    rows = x.shape[0]
    config = config or gemm_config(rows, packed, x.device)
    target, out = output_buffers(rows, packed.out_features, config.split_k, x.dtype, x.device)
    tiles = triton.cdiv(rows, config.block_m) * triton.cdiv(packed.out_features, config.block_n)
    awqd_w4_gemm_kernel[(tiles, config.split_k)](
        x,
        packed.qweight,
        packed.scale_zero,
        packed.bias if packed.bias is not None else packed.scale_zero,  # never read without HAS_BIAS
        target,
        rows,
        packed.out_features,
        packed.in_features,
        GROUP_SIZE=packed.group_size,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        SPLIT_K=config.split_k,
        HAS_BIAS=packed.bias is not None,
        PREFETCH=config.prefetch,
        USE_ASM=not interpreting(),
        DOT_IN_FP32=dot_in_fp32(x.dtype),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return finish_split_k(target, packed.bias, out)
