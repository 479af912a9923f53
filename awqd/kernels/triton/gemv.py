"""awqd's W4A16 GEMV: CUDA-core dot products for one or a few tokens, int4 unpacked in registers.

Grid (M / ROWS, N / BLOCK_N, SPLIT_K). A program owns ROWS activation rows, BLOCK_N weight rows and one
contiguous K slice, and reads the slice BLOCK_K columns at a time as [BLOCK_N, BLOCK_K / 8] int32 tiles: one
word holds 8 weights of one row, unpacked once for all ROWS activation rows.
At batch 1 the kernel is latency-bound, not bandwidth-bound (measured on an H200: bench/results), so every load
of the next step (weights, scales and zeros, activations) is issued before the current step is computed.
Nothing is reduced across threads inside the loop: per word it forms sum_j (1024 + q_j) x_j in fp32 and folds
scale and zero in once (layout.py, unpack.py); the [ROWS, BLOCK_N, words] accumulator is summed at the end.
Row blocks are the fastest grid axis, so programs sharing a weight tile run together and read it from L2.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from awqd.kernels.triton.layout import AwqdW4, interpreting
from awqd.kernels.triton.splitk import finish_split_k, output_buffers, split_k_for
from awqd.kernels.triton.unpack import join_words, split_scale_zero, unpack_plus_1024


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 1  # the kernel prefetches by hand; Triton's pipeliner adds nothing here
    rows: int = 1  # activation rows per program, sharing each unpacked weight tile


GEMV_MAX_TUNED_ROWS = 4  # beyond a few rows the tensor-core GEMM wins (bench/results)
# Batch 1: the H200 sweep's (bench/results) tiles within ~5% of the best on the Llama-2-7B shapes. Long K steps
# and few warps keep the most bytes in flight per thread, which is what a latency-bound kernel needs.
SINGLE_ROW_TILES = (
    GemvConfig(4, 1024, 1, 2),
    GemvConfig(8, 1024, 1, 2),
    GemvConfig(8, 1024, 1, 4),
    GemvConfig(16, 1024, 1, 4),
    GemvConfig(4, 512, 1, 2),
)
# 2-4 rows: a program keeps rows x BLOCK_N x BLOCK_K products in registers, so the tiles are shorter.
MULTI_ROW_TILES = ((4, 512, 2), (8, 256, 2), (8, 512, 4), (16, 256, 4))


def next_power_of_two(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


def gemv_config(rows: int, packed: AwqdW4, device: torch.device) -> GemvConfig:
    """The untuned default: the best batch-1 tile of the H200 sweep, all rows (up to 4) in one program."""
    rows_per_program = min(next_power_of_two(rows), GEMV_MAX_TUNED_ROWS)
    block_k = 1024 // rows_per_program
    tiles = triton.cdiv(rows, rows_per_program) * triton.cdiv(packed.out_features, 8)
    split_k = split_k_for(tiles, triton.cdiv(packed.in_features, block_k), device)
    return GemvConfig(8, block_k, split_k, num_warps=2, rows=rows_per_program)


def tuning_space(bucket: int) -> tuple[GemvConfig, ...]:
    if bucket > GEMV_MAX_TUNED_ROWS:
        return ()
    if bucket == 1:
        return SINGLE_ROW_TILES
    rows = next_power_of_two(bucket)
    return tuple(GemvConfig(n, k, 1, warps, rows=rows) for n, k, warps in MULTI_ROW_TILES)


@triton.jit
def awqd_w4_gemv_kernel(
    x_ptr,
    qweight_ptr,
    scale_zero_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    GROUP_SIZE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    USE_ASM: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    WORDS: tl.constexpr = BLOCK_K // 8
    groups = K // GROUP_SIZE
    slice_k = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_start = pid_k * slice_k
    k_end = tl.minimum(K, k_start + slice_k)

    m = pid_m * ROWS + tl.arange(0, ROWS)
    m_mask = m < M
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    word = tl.arange(0, WORDS)
    k = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + m.to(tl.int64)[:, None] * K
    w_rows = qweight_ptr + n[:, None] * (K // 8)
    sz_rows = scale_zero_ptr + n[:, None] * groups

    first_word = k_start // 8 + word
    first_mask = n_mask[:, None] & (first_word < k_end // 8)[None, :]
    w_next = tl.load(w_rows + first_word[None, :], mask=first_mask, other=0)
    sz_next = tl.load(sz_rows + (first_word * 8 // GROUP_SIZE)[None, :], mask=first_mask, other=0)
    x_next = tl.load(x_rows + (k_start + k)[None, :], mask=m_mask[:, None] & (k_start + k < k_end)[None, :], other=0.0)
    acc = tl.zeros([ROWS, BLOCK_N, WORDS], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        w, sz, x = w_next, sz_next, x_next
        next_k = k0 + BLOCK_K
        next_word = next_k // 8 + word
        next_mask = n_mask[:, None] & (next_word < k_end // 8)[None, :]
        w_next = tl.load(w_rows + next_word[None, :], mask=next_mask, other=0)  # [BLOCK_N, WORDS]
        sz_next = tl.load(sz_rows + (next_word * 8 // GROUP_SIZE)[None, :], mask=next_mask, other=0)
        x_next = tl.load(
            x_rows + (next_k + k)[None, :], mask=m_mask[:, None] & (next_k + k < k_end)[None, :], other=0.0
        )

        scale, zero_plus_1024 = split_scale_zero(sz)
        q0, q1, q2, q3, q4, q5, q6, q7 = unpack_plus_1024(w, USE_ASM)
        q = join_words(q0, q1, q2, q3, q4, q5, q6, q7, BLOCK_N, BLOCK_K)  # 1024 + q, in column order
        q = tl.reshape(q, (BLOCK_N, WORDS, 8)).to(tl.float32)
        x_words = tl.reshape(x.to(tl.float32), (ROWS, WORDS, 8))
        xq = tl.sum(q[None, :, :, :] * x_words[:, None, :, :], axis=3)  # [ROWS, BLOCK_N, WORDS]
        x_sum = tl.sum(x_words, axis=2)  # [ROWS, WORDS]
        acc += scale.to(tl.float32)[None, :, :] * (xq - zero_plus_1024.to(tl.float32)[None, :, :] * x_sum[:, None, :])
    result = tl.sum(acc, axis=2)  # [ROWS, BLOCK_N]

    offsets = m.to(tl.int64)[:, None] * N + n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            result += tl.load(bias_ptr + n, mask=n_mask, other=0.0)[None, :]
        tl.store(out_ptr + offsets, result.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + pid_k.to(tl.int64) * M * N + offsets, result, mask=mask)


def gemv(x: torch.Tensor, packed: AwqdW4, config: GemvConfig | None = None) -> torch.Tensor:
    """y = x @ W.T + bias for contiguous x [rows, in_features] in fp16 or bf16; y [rows, out_features] in x's dtype."""
    rows = x.shape[0]
    config = config or gemv_config(rows, packed, x.device)
    target, out = output_buffers(rows, packed.out_features, config.split_k, x.dtype, x.device)
    grid = (triton.cdiv(rows, config.rows), triton.cdiv(packed.out_features, config.block_n), config.split_k)
    awqd_w4_gemv_kernel[grid](
        x,
        packed.qweight,
        packed.scale_zero,
        packed.bias if packed.bias is not None else packed.scale_zero,  # never read without HAS_BIAS
        target,
        rows,
        packed.out_features,
        packed.in_features,
        GROUP_SIZE=packed.group_size,
        ROWS=config.rows,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        SPLIT_K=config.split_k,
        HAS_BIAS=packed.bias is not None,
        USE_ASM=not interpreting(),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return finish_split_k(target, packed.bias, out)
