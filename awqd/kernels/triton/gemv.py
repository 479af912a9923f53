"""awqd's W4A16 GEMV: CUDA-core dot products for 1 to a few tokens, int4 unpacked in registers.

Grid (rows, N / BLOCK_N, SPLIT_K). A program owns BLOCK_N output rows of one activation row and walks its K slice
GROUPS_PER_BLOCK quantization groups at a time, loading each weight row's slice as contiguous int32 vectors.
Activation rows are the fastest grid axis, so the programs sharing a weight tile run together and all but the
first read it from L2. Per group it accumulates sum x*q and sum x in fp32 and applies scale and zero once
(layout.py): the inner loop is shift, mask, a magic-number int->float and one FMA per weight.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from awqd.kernels.triton.layout import AwqdW4
from awqd.kernels.triton.splitk import finish_split_k, output_buffers, split_k_for

GEMV_BLOCK_K = 512  # weights per row per loop step: 256 bytes, so a program keeps enough bytes in flight
GEMV_BLOCK_N = 8


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    groups_per_block: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 3


def gemv_config(rows: int, packed: AwqdW4, device: torch.device) -> GemvConfig:
    """Small heuristic, not autotuned: a fixed tile, split-K only when the row blocks leave SMs idle."""
    groups_per_block = GEMV_BLOCK_K // packed.group_size
    groups = packed.in_features // packed.group_size
    tiles = rows * triton.cdiv(packed.out_features, GEMV_BLOCK_N)
    split_k = split_k_for(tiles, triton.cdiv(groups, groups_per_block), device)
    return GemvConfig(GEMV_BLOCK_N, groups_per_block, split_k)


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
    GROUPS_PER_BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    row = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    WORDS: tl.constexpr = GROUP_SIZE // 8  # int32 per group per weight row
    groups = K // GROUP_SIZE

    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    word = tl.arange(0, WORDS)
    nibble = tl.arange(0, 8)
    x_row = x_ptr + row.to(tl.int64) * K
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for first_group in range(pid_k * GROUPS_PER_BLOCK, groups, SPLIT_K * GROUPS_PER_BLOCK):
        group = first_group + tl.arange(0, GROUPS_PER_BLOCK)
        g_mask = group < groups
        k = group[:, None, None] * GROUP_SIZE + word[None, :, None] * 8 + nibble[None, None, :]
        x = tl.load(x_row + k, mask=g_mask[:, None, None], other=0.0).to(tl.float32)  # [G, WORDS, 8]
        w_offsets = n[:, None, None] * (K // 8) + group[None, :, None] * WORDS + word[None, None, :]
        w_mask = n_mask[:, None, None] & g_mask[None, :, None]
        w = tl.load(qweight_ptr + w_offsets, mask=w_mask, other=0)  # [N, G, WORDS]
        q = (w[:, :, :, None] >> (nibble * 4)) & 0xF
        # 0x4B000000 | q is the float 2^23 + q: exact, and cheaper than an int->float conversion.
        q = (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0  # [N, G, WORDS, 8]
        xq = tl.sum(tl.sum(q * x[None, :, :, :], axis=3), axis=2)  # [N, G]
        x_sum = tl.sum(tl.sum(x, axis=2), axis=1)  # [G]
        sz = scale_zero_ptr + (n[:, None] * groups + group[None, :]) * 2
        sz_mask = n_mask[:, None] & g_mask[None, :]
        scale = tl.load(sz, mask=sz_mask, other=0.0).to(tl.float32)
        zero = tl.load(sz + 1, mask=sz_mask, other=0.0).to(tl.float32)
        acc += tl.sum(scale * (xq - zero * x_sum[None, :]), axis=1)

    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + n, mask=n_mask, other=0.0)
        tl.store(out_ptr + row.to(tl.int64) * N + n, acc.to(out_ptr.dtype.element_ty), mask=n_mask)
    else:
        rows = tl.num_programs(0)
        tl.store(out_ptr + (pid_k * rows + row).to(tl.int64) * N + n, acc, mask=n_mask)


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
        GROUPS_PER_BLOCK=config.groups_per_block,
        BLOCK_N=config.block_n,
        SPLIT_K=config.split_k,
        HAS_BIAS=packed.bias is not None,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return finish_split_k(target, packed.bias, out)
