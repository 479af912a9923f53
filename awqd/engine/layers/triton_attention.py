"""Triton kernel for decode_attention (awqd.engine.layers.attention).

SPLITS programs per (row, kv head) do the layer's attention for that head's query group: rotary on q and k, the new
k and v stored at the row's position in its sequence's block (by the first program), then an online softmax over
the sequence's earlier positions in BLOCK_N steps, each step gathering its positions' blocks through the row's block
table (awqd.engine.kv_cache: [blocks, kv_heads, BLOCK_TOKENS, head_dim] per layer). The new token's own key is the
first program's starting point, so the kernel never reads back what it just stored. Rotary and scaling round to
the model's dtype at the same points as the torch path.

With one row, one program per kv head leaves most SMs idle: Llama-2-7B has 32 such programs, Llama-3-8B 8. So a few
rows split each row's steps over SPLITS programs (flash-decoding): program s takes steps s, s + SPLITS, ... and
writes its partial softmax to a scratch buffer; the program that arrives last, counted on a per-(row, kv head)
counter, merges the SPLITS partials in program order and resets the counter to 0 for the next launch. The split
count is fixed per row count, so a row's result depends on its batch's size; --batch-invariant runs unsplit.
"""

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from awqd.kernels.triton.layout import interpreting

if TYPE_CHECKING:  # attention.py imports this module when it runs on Triton
    from awqd.engine.layers.attention import AttentionShape

# Cached positions per step, and the step loop's software-pipelining depth. Against 64 and 3, at one row and KV past
# L2, 128 and 2 took 18-22% less time; at 8-256 rows, -14% to +6% (bench/results/h200-2026-12-02-decode-attention).
BLOCK_N = 128
STAGES = 2
WARPS = 4
MIN_DOT = 16  # tl.dot's smallest M, N and K
# Splitting: up to MAX_SPLITS programs per (row, kv head), while rows x kv heads x splits stays within SPLIT_PROGRAMS,
# each split program stepping SPLIT_BLOCK_N positions at a time. On an H200, from 256 (row, kv head) pairs on a split
# was slower; below, this rule cut one row's attention by 14% at 256 positions and 52-81% at 1024-4096, and added
# 18-22% at 128 (bench/results/h200-2026-12-03-split-decode-attention).
SPLIT_PROGRAMS = 256
MAX_SPLITS = 16
SPLIT_BLOCK_N = 64
# A split program walks few steps, so pipeline buffers only take shared memory from the other programs: one stage and
# 8 warps took 8-11% less than 2 and 4 at one row and 128-512 positions, about the same at 2048, on an H200
# (bench/results/h200-2026-12-03-gated-gemv).
SPLIT_STAGES = 1
SPLIT_WARPS = 8


def split_count(rows: int, kv_heads: int) -> int:
    """Programs per (row, kv head): the largest power of two up to MAX_SPLITS that keeps the grid within
    SPLIT_PROGRAMS; 1 once rows x kv heads fill it."""
    splits = 1
    while splits < MAX_SPLITS and rows * kv_heads * splits * 2 <= SPLIT_PROGRAMS:
        splits *= 2
    return splits


@triton.jit
def rotate(x_ptr, columns, partner, sign, cos, sin, mask):
    """x * cos + rotate_half(x) * sin, rounded to x's dtype after each op as torch does."""
    x = tl.load(x_ptr + columns, mask=mask, other=0.0)
    dtype = x.dtype
    rotated = tl.load(x_ptr + partner, mask=mask, other=0.0).to(tl.float32) * sign
    return ((x.to(tl.float32) * cos).to(dtype).to(tl.float32) + (rotated * sin).to(dtype).to(tl.float32)).to(dtype)


@triton.jit
def decode_attention_kernel(
    qkv_ptr,
    positions_ptr,
    tables_ptr,
    cos_ptr,
    sin_ptr,
    cache_k_ptr,
    cache_v_ptr,
    out_ptr,
    partial_acc_ptr,  # fp32 [rows * kv_heads * SPLITS, BLOCK_G, BLOCK_D]; unused unsplit
    partial_stats_ptr,  # fp32 [rows * kv_heads * SPLITS, 2, BLOCK_G]: running max and sum; unused unsplit
    counters_ptr,  # int32 [rows * kv_heads], zero between launches; unused unsplit
    qkv_stride,
    tables_stride,
    window,  # positions back a row may attend to; the context length when there is no sliding window
    scale,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_TOKENS: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLITS: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    row = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    first_program = split == 0
    position = tl.load(positions_ptr + row)
    dtype = qkv_ptr.dtype.element_ty

    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    half = HEAD_DIM // 2
    partner = tl.where(d < half, d + half, d - half)
    sign = tl.where(d < half, -1.0, 1.0)
    cos = tl.load(cos_ptr + position * HEAD_DIM + d, mask=d_mask, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + position * HEAD_DIM + d, mask=d_mask, other=0.0).to(tl.float32)

    qkv_row = qkv_ptr + row.to(tl.int64) * qkv_stride
    g = tl.arange(0, BLOCK_G)
    g_mask = g < GROUP
    q_offsets = ((kv_head * GROUP + g) * HEAD_DIM)[:, None]
    q_mask = g_mask[:, None] & d_mask[None, :]
    q = rotate(qkv_row + q_offsets, d[None, :], partner[None, :], sign[None, :], cos[None, :], sin[None, :], q_mask)
    q = (q.to(tl.float32) * scale).to(dtype)  # scaled before the dot products, as the torch path
    k_row = qkv_row + (NUM_HEADS + kv_head) * HEAD_DIM
    k = rotate(k_row, d, partner, sign, cos, sin, d_mask)
    v = tl.load(qkv_row + (NUM_HEADS + NUM_KV_HEADS + kv_head) * HEAD_DIM + d, mask=d_mask, other=0.0)

    table = tables_ptr + row.to(tl.int64) * tables_stride
    block = tl.load(table + position // BLOCK_TOKENS).to(tl.int64)
    block_stride = NUM_KV_HEADS * BLOCK_TOKENS * HEAD_DIM
    head_offset = kv_head * BLOCK_TOKENS * HEAD_DIM
    new_offset = block * block_stride + head_offset + (position % BLOCK_TOKENS) * HEAD_DIM
    if first_program:
        tl.store(cache_k_ptr + new_offset + d, k, mask=d_mask)
        tl.store(cache_v_ptr + new_offset + d, v, mask=d_mask)

    # The first program starts from the new token: its score starts the running maximum, with weight 1. The others
    # start empty.
    new_score = tl.sum(q.to(tl.float32) * k.to(tl.float32)[None, :], axis=1)
    running_max = tl.where(first_program, new_score, float("-inf"))
    running_sum = tl.where(first_program, tl.full([BLOCK_G], 1.0, tl.float32), 0.0)
    acc = tl.where(first_program, tl.zeros([BLOCK_G, BLOCK_D], tl.float32) + v.to(tl.float32)[None, :], 0.0)

    first = tl.maximum(position - window + 1, 0)
    for start in range(first // BLOCK_N * BLOCK_N + split * BLOCK_N, position, SPLITS * BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_mask = (n >= first) & (n < position)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        blocks = tl.load(table + n // BLOCK_TOKENS, mask=n_mask, other=0).to(tl.int64)
        offsets = blocks * block_stride + head_offset + (n % BLOCK_TOKENS) * HEAD_DIM
        keys = tl.load(cache_k_ptr + offsets[:, None] + d[None, :], mask=kv_mask, other=0.0)
        values = tl.load(cache_v_ptr + offsets[:, None] + d[None, :], mask=kv_mask, other=0.0)
        if DOT_IN_FP32:  # exact fp32 products: no TF32 for fp32 models, none of the interpreter's bf16 issue
            scores = tl.dot(q.to(tl.float32), tl.trans(keys.to(tl.float32)), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(keys))
        scores = tl.where(n_mask[None, :], scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        correction = tl.exp(running_max - new_max)
        weights = tl.exp(scores - new_max[:, None])
        running_sum = running_sum * correction + tl.sum(weights, axis=1)
        weights, acc = weights.to(dtype), acc * correction[:, None]
        if DOT_IN_FP32:
            acc = tl.dot(weights.to(tl.float32), values.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(weights, values, acc)
        running_max = new_max

    out_ptrs = out_ptr + row.to(tl.int64) * NUM_HEADS * HEAD_DIM + q_offsets + d[None, :]
    if SPLITS == 1:
        tl.store(out_ptrs, (acc / running_sum[:, None]).to(dtype), mask=q_mask)
    else:
        pair = row * NUM_KV_HEADS + kv_head
        partials = pair.to(tl.int64) * SPLITS  # this pair's first partial
        acc_ptrs = partial_acc_ptr + partials * BLOCK_G * BLOCK_D + g[:, None] * BLOCK_D + d[None, :]
        stats_ptrs = partial_stats_ptr + partials * 2 * BLOCK_G + g
        tl.store(acc_ptrs + split * BLOCK_G * BLOCK_D, acc, mask=q_mask)
        tl.store(stats_ptrs + split * 2 * BLOCK_G, running_max, mask=g_mask)
        tl.store(stats_ptrs + split * 2 * BLOCK_G + BLOCK_G, running_sum, mask=g_mask)
        tl.debug_barrier()  # every thread's partial is written before the counter says so
        if tl.atomic_add(counters_ptr + pair, 1) == SPLITS - 1:  # acq_rel: the other programs' partials are visible
            tl.store(counters_ptr + pair, 0)
            out = merge(acc_ptrs, stats_ptrs, q_mask, g_mask, BLOCK_G, BLOCK_D, SPLITS)
            tl.store(out_ptrs, out.to(dtype), mask=q_mask)


@triton.jit
def merge(acc_ptrs, stats_ptrs, acc_mask, g_mask, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS: tl.constexpr):
    """The SPLITS partial softmaxes, merged in program order (program 0 holds the new token, so the running maximum
    is finite from the start), normalized. Read past L1: the other programs wrote them from other SMs."""
    acc = tl.load(acc_ptrs, mask=acc_mask, other=0.0, cache_modifier=".cg")
    running_max = tl.load(stats_ptrs, mask=g_mask, other=0.0, cache_modifier=".cg")
    running_sum = tl.load(stats_ptrs + BLOCK_G, mask=g_mask, other=0.0, cache_modifier=".cg")
    for s in tl.static_range(1, SPLITS):
        split_acc = tl.load(acc_ptrs + s * BLOCK_G * BLOCK_D, mask=acc_mask, other=0.0, cache_modifier=".cg")
        split_max = tl.load(stats_ptrs + s * 2 * BLOCK_G, mask=g_mask, other=0.0, cache_modifier=".cg")
        split_sum = tl.load(stats_ptrs + s * 2 * BLOCK_G + BLOCK_G, mask=g_mask, other=0.0, cache_modifier=".cg")
        new_max = tl.maximum(running_max, split_max)
        ours, theirs = tl.exp(running_max - new_max), tl.exp(split_max - new_max)
        running_sum = running_sum * ours + split_sum * theirs
        acc = acc * ours[:, None] + split_acc * theirs[:, None]
        running_max = new_max
    return acc / running_sum[:, None]


def decode_attention_rows(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    tables: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    shape: "AttentionShape",
    counters: torch.Tensor | None,
    splits: int | None = None,
    block_n: int | None = None,
    stages: int | None = None,
    warps: int | None = None,
) -> torch.Tensor:
    """counters: int32 [>= rows * kv_heads], all zero, which the split launches leave zero again; None runs unsplit.
    splits (default split_count), block_n, stages and warps (defaults BLOCK_N, STAGES and WARPS unsplit, the SPLIT_
    ones split) other than the defaults are for bench/decode_attention_tune.py, which compares each setting's output
    and time."""
    rows = qkv.shape[0]
    group = shape.num_heads // shape.num_kv_heads
    if splits is None:
        splits = 1 if counters is None else split_count(rows, shape.num_kv_heads)
    block_n = block_n or (BLOCK_N if splits == 1 else SPLIT_BLOCK_N)
    stages = stages or (STAGES if splits == 1 else SPLIT_STAGES)
    warps = warps or (WARPS if splits == 1 else SPLIT_WARPS)
    block_g, block_d = max(MIN_DOT, triton.next_power_of_2(group)), max(MIN_DOT, triton.next_power_of_2(shape.head_dim))
    out = torch.empty(rows, shape.num_heads * shape.head_dim, dtype=qkv.dtype, device=qkv.device)
    partials = rows * shape.num_kv_heads * splits if splits > 1 else 0
    partial_acc = torch.empty(partials, block_g, block_d, dtype=torch.float32, device=qkv.device)
    partial_stats = torch.empty(partials, 2, block_g, dtype=torch.float32, device=qkv.device)
    if counters is None:
        if splits > 1:
            raise ValueError("a split launch needs counters")
        counters = torch.empty(0, dtype=torch.int32, device=qkv.device)  # never touched unsplit
    block_tokens = cache_k.shape[2]
    decode_attention_kernel[(rows, shape.num_kv_heads, splits)](
        qkv,
        positions,
        tables,
        cos,
        sin,
        cache_k,
        cache_v,
        out,
        partial_acc,
        partial_stats,
        counters,
        qkv.stride(0),
        tables.stride(0),
        shape.sliding_window or tables.shape[1] * block_tokens,
        shape.head_dim**-0.5,
        NUM_HEADS=shape.num_heads,
        NUM_KV_HEADS=shape.num_kv_heads,
        HEAD_DIM=shape.head_dim,
        GROUP=group,
        BLOCK_TOKENS=block_tokens,
        BLOCK_G=block_g,
        BLOCK_D=block_d,
        BLOCK_N=block_n,
        SPLITS=splits,
        DOT_IN_FP32=interpreting() or qkv.dtype == torch.float32,
        num_warps=warps,
        num_stages=stages,
    )
    return out


@triton.jit
def rotate_and_store_kernel(
    qkv_ptr,
    sequences_ptr,
    positions_ptr,
    tables_ptr,
    cos_ptr,
    sin_ptr,
    cache_k_ptr,
    cache_v_ptr,
    q_out_ptr,
    k_out_ptr,
    qkv_stride,
    tables_stride,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_TOKENS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HEADS_PER_PROGRAM: tl.constexpr,
):
    """One program per (row, HEADS_PER_PROGRAM heads): the query heads' groups, then the kv heads'."""
    row = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1)
    Q_GROUPS: tl.constexpr = NUM_HEADS // HEADS_PER_PROGRAM
    position = tl.load(positions_ptr + row)
    d = tl.arange(0, BLOCK_D)
    half = HEAD_DIM // 2
    partner = tl.where(d < half, d + half, d - half)[None, :]
    sign = tl.where(d < half, -1.0, 1.0)[None, :]
    cos = tl.load(cos_ptr + position * HEAD_DIM + d, mask=d < HEAD_DIM, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + position * HEAD_DIM + d, mask=d < HEAD_DIM, other=0.0).to(tl.float32)[None, :]
    h = tl.arange(0, HEADS_PER_PROGRAM)[:, None]
    mask = (h < HEADS_PER_PROGRAM) & (d < HEAD_DIM)[None, :]
    row_ptr = qkv_ptr + row * qkv_stride
    if group < Q_GROUPS:
        heads = group * HEADS_PER_PROGRAM + h  # [HEADS_PER_PROGRAM, 1]
        q = rotate(row_ptr + heads * HEAD_DIM, d[None, :], partner, sign, cos, sin, mask)
        tl.store(q_out_ptr + (row * NUM_HEADS + heads) * HEAD_DIM + d[None, :], q, mask=mask)
    else:
        kv_heads = (group - Q_GROUPS) * HEADS_PER_PROGRAM + h
        k_ptr = row_ptr + (NUM_HEADS + kv_heads) * HEAD_DIM
        k = rotate(k_ptr, d[None, :], partner, sign, cos, sin, mask)
        v = tl.load(k_ptr + NUM_KV_HEADS * HEAD_DIM + d[None, :], mask=mask, other=0.0)
        tl.store(k_out_ptr + (row * NUM_KV_HEADS + kv_heads) * HEAD_DIM + d[None, :], k, mask=mask)
        sequence = tl.load(sequences_ptr + row).to(tl.int64)
        block = tl.load(tables_ptr + sequence * tables_stride + position // BLOCK_TOKENS).to(tl.int64)
        slot = (block * NUM_KV_HEADS + kv_heads) * BLOCK_TOKENS + position % BLOCK_TOKENS
        tl.store(cache_k_ptr + slot * HEAD_DIM + d[None, :], k, mask=mask)
        tl.store(cache_v_ptr + slot * HEAD_DIM + d[None, :], v, mask=mask)


def heads_per_program(shape: "AttentionShape") -> int:
    """Up to 8 heads per program, a power of two dividing both head counts: with one head per program this kernel
    took 10.1 ms of an 8192-token Llama-2-7B prefill step on an H200, with 8 it took 4.0 ms
    (bench/results/h200-2026-12-02-prefill)."""
    return next(n for n in (8, 4, 2, 1) if shape.num_heads % n == 0 and shape.num_kv_heads % n == 0)


def rotate_and_store_rows(
    qkv: torch.Tensor,
    sequences: torch.Tensor,
    positions: torch.Tensor,
    tables: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    shape: "AttentionShape",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = qkv.shape[0]
    heads, kv_heads, head_dim = shape.num_heads, shape.num_kv_heads, shape.head_dim
    q = torch.empty(rows, heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    k = torch.empty(rows, kv_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    per_program = heads_per_program(shape)
    rotate_and_store_kernel[(rows, (heads + kv_heads) // per_program)](
        qkv,
        sequences.contiguous(),
        positions.contiguous(),
        tables,
        cos,
        sin,
        cache_k,
        cache_v,
        q,
        k,
        qkv.stride(0),
        tables.stride(0),
        NUM_HEADS=heads,
        NUM_KV_HEADS=kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_TOKENS=cache_k.shape[2],
        BLOCK_D=triton.next_power_of_2(head_dim),
        HEADS_PER_PROGRAM=per_program,
        num_warps=max(1, per_program // 2),
    )
    return q, k, shape.split(qkv)[2]
