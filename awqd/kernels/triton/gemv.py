"""awqd's W4A16 GEMV: CUDA-core dot products for one or a few tokens, int4 unpacked in registers.

Grid (rows, N / BLOCK_N, SPLIT_K). A program owns BLOCK_N weight rows and one contiguous K slice, and reads the
slice BLOCK_K columns at a time as [BLOCK_N, BLOCK_K / 8] int32 tiles: one word holds 8 weights of one row.
At batch 1 the kernel is latency-bound, not bandwidth-bound (measured on an H200: bench/results), so every load
of the next step (weights, scales and zeros, activations) is issued before the current step is computed.
Nothing is reduced across threads inside the loop: per word it forms sum_j (1024 + q_j) x_j in fp32 and folds
scale and zero in once (layout.py, unpack.py); the [BLOCK_N, words] accumulator is summed once at the end.
Activation rows are the fastest grid axis, so programs sharing a weight tile run together and read it from L2.
(One program per row: a version holding several rows' [BLOCK_N, BLOCK_K] products per program measured 2.6x
slower at batch 1 on the H200, so rows stay apart.)
"""

import dataclasses
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from awqd.kernels.triton.layout import AwqdW4, interpreting
from awqd.kernels.triton.splitk import finish_split_k, k_slice, output_buffers, split_k_for
from awqd.kernels.triton.unpack import join_words, load_words, split_scale_zero, unpack_plus_1024


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 1  # the kernel prefetches by hand; Triton's pipeliner adds nothing here


GEMV_MAX_TUNED_ROWS = 4  # each row re-reads the weights from L2; beyond a few rows the GEMM wins (bench/results)
# The H200 sweep's (bench/results) tiles within ~5% of the best on the Llama-2-7B shapes at batch 1. Long K steps
# and few warps keep the most bytes in flight per thread, which is what a latency-bound kernel needs.
TILES = (
    GemvConfig(8, 1024, 1, 2),
    GemvConfig(4, 1024, 1, 2),
    GemvConfig(8, 512, 1, 2),
    GemvConfig(4, 2048, 1, 4),
    GemvConfig(16, 1024, 1, 4),
)
DEFAULT_TILE = TILES[0]


def gemv_config(rows: int, packed: AwqdW4, device: torch.device) -> GemvConfig:
    """The untuned default: the best batch-1 tile of the H200 sweep; split-K only when SMs would idle."""
    tiles = rows * triton.cdiv(packed.out_features, DEFAULT_TILE.block_n)
    split_k = split_k_for(tiles, triton.cdiv(packed.in_features, DEFAULT_TILE.block_k), device)
    return dataclasses.replace(DEFAULT_TILE, split_k=split_k)


def tuning_space(bucket: int) -> tuple[GemvConfig, ...]:
    return TILES if bucket <= GEMV_MAX_TUNED_ROWS else ()


@triton.jit
def awqd_w4_gemv_kernel(
    x_ptr,
    qweight_ptr,
    scale_zero_ptr,
    bias_ptr,
    out_ptr,
    N,
    K,
    GROUP_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    USE_ASM: tl.constexpr,
):
    row = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    WORDS: tl.constexpr = BLOCK_K // 8
    k_start, k_end = k_slice(K, pid_k, BLOCK_K, SPLIT_K)

    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    word = tl.arange(0, WORDS)
    k = tl.arange(0, BLOCK_K)
    x_row = x_ptr + row.to(tl.int64) * K
    w_rows = qweight_ptr + n[:, None] * (K // 8)
    sz_rows = scale_zero_ptr + n[:, None] * (K // GROUP_SIZE)

    w_next, sz_next = load_words(w_rows, sz_rows, n_mask, k_start // 8 + word, k_end // 8, GROUP_SIZE)
    x_next = tl.load(x_row + k_start + k, mask=k_start + k < k_end, other=0.0)
    acc = tl.zeros([BLOCK_N, WORDS], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        w, sz, x = w_next, sz_next, x_next
        next_words = (k0 + BLOCK_K) // 8 + word
        w_next, sz_next = load_words(w_rows, sz_rows, n_mask, next_words, k_end // 8, GROUP_SIZE)
        x_next = tl.load(x_row + k0 + BLOCK_K + k, mask=k0 + BLOCK_K + k < k_end, other=0.0)

        scale, zero_plus_1024 = split_scale_zero(sz)
        q0, q1, q2, q3, q4, q5, q6, q7 = unpack_plus_1024(w, USE_ASM)
        q = join_words(q0, q1, q2, q3, q4, q5, q6, q7, BLOCK_N, BLOCK_K)  # 1024 + q, in column order
        x_words = tl.reshape(x.to(tl.float32), (WORDS, 8))
        xq = tl.sum(tl.reshape(q, (BLOCK_N, WORDS, 8)).to(tl.float32) * x_words[None, :, :], axis=2)
        x_sum = tl.sum(x_words, axis=1)
        acc += scale.to(tl.float32) * (xq - zero_plus_1024.to(tl.float32) * x_sum[None, :])
    result = tl.sum(acc, axis=1)

    if SPLIT_K == 1:
        if HAS_BIAS:
            result += tl.load(bias_ptr + n, mask=n_mask, other=0.0)
        tl.store(out_ptr + row.to(tl.int64) * N + n, result.to(out_ptr.dtype.element_ty), mask=n_mask)
    else:
        rows = tl.num_programs(0)
        tl.store(out_ptr + (pid_k * rows + row).to(tl.int64) * N + n, result, mask=n_mask)


def gemv(x: torch.Tensor, packed: AwqdW4, config: GemvConfig | None = None) -> torch.Tensor:
    """y = x @ W.T + bias for contiguous x [rows, in_features] in fp16 or bf16; y [rows, out_features] in x's dtype."""
    rows = x.shape[0]
    config = config or gemv_config(rows, packed, x.device)
    target, out = output_buffers(rows, packed.out_features, config.split_k, x.dtype, x.device)
    grid = (rows, triton.cdiv(packed.out_features, config.block_n), config.split_k)
    awqd_w4_gemv_kernel[grid](
        x,
        packed.qweight,
        packed.scale_zero,
        packed.bias if packed.bias is not None else packed.scale_zero,  # never read without HAS_BIAS
        target,
        packed.out_features,
        packed.in_features,
        GROUP_SIZE=packed.group_size,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        SPLIT_K=config.split_k,
        HAS_BIAS=packed.bias is not None,
        USE_ASM=not interpreting(),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return finish_split_k(target, packed.bias, out)
