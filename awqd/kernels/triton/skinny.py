"""awqd's W4A16 kernel for skinny batches (1 to ~64 tokens, and tuned to 512): each weight tile is read and unpacked
once per program and multiplied against all of its tokens on the tensor cores, so the cost is nearly flat in M.

The product is computed transposed, out.T = W @ x.T, as in gemm.py: the unpacked weight tile [BLOCK_N, BLOCK_K]
is the MMA's A operand from registers, the few activation rows (padded to BLOCK_M >= 16) the B operand.
Per K step a program covers at most one quantization group per weight row (BLOCK_K <= group size), so the scale
and zero are one value per row: the tile is unpacked to the exact small integers q - z (1024 + q minus 1024 + z in
fp16, unpack.py), the tensor cores form sum_k (q_k - z) x_k in fp32, and the step's fp32 result is scaled by s
into the accumulator. That is sum_k x_k (q_k - z) s, the layout's semantics, with one rounding fewer than
dequantizing to fp16 first; and q - z is exact in bf16 too. From 128 tokens the MMAs weigh more, and scale-first
tiles (SkinnyConfig.scale_first) dequantize to (q - z) * s instead, so that the MMAs chain on one accumulator.

Memory, not math, bounds this regime, so the kernel's job is to keep enough bytes in flight per SM (an H200 needs
~40 KB). With TMA (sm_90) the weight and activation tiles are tensor-descriptor loads that Triton's pipeliner stages
num_stages deep through shared memory (checked in Triton's sm_90 output: multi-buffered TMA copies, wgmma with the
weights from registers); without it (the config's tma off, or GPUs before sm_90) they are pointer loads issued two
steps ahead by hand into registers. With TMA the per-row (scale, zero) words are a descriptor load too, from their
group-major copy (layout.py), staged with the tiles: 1.3-7.4% faster per layer than pointer loads one step ahead on
an H100 (bench/results/h100-2026-12-06-scale-zero-tma), within 1% of them on a second H100
(bench/results/h100-2026-12-06-own-kernels). Pointer loads two steps ahead instead made Triton 3.6 stop staging the
tiles (47-74% slower: bench/results/h100-2026-12-06-scale-zero-ahead). The pointer path loads them one step ahead by
hand.
The layout packs each int32 word with the eight K values one thread holds of the MMA's A fragment over two k16
steps (layout.FRAGMENT_COLUMNS), so putting the unpacked tile in K order (natural_order) only relabels its axis:
Triton reads each word from the staged tile straight into the operand's register layout, and neither the
weights nor the activations make a round trip through shared memory (Triton 3.6 and 3.9 sm_90 output: no
local_alloc in the loop, for tiles of 32 weight rows per warp); the activation tile goes from its TMA stage to
the MMA as it lies. The pointer path keeps the weight tile as packed and relabels the activations to match
(packed_order): Triton does not re-lay out loads held in registers across steps, so there the activation tile goes
through shared memory anyway, and relabeling the larger weight tile costs more stores.
From 64 tokens one warpgroup both unpacks and waits for its own MMAs: barrier is then the top stall (Nsight Compute,
bench/results/h100-2026-12-05-ncu-skinny), and at 512 tokens the tensor pipe is busy 55-69% of the active cycles,
against 81-92% in fbgemm's CUTLASS kernels (bench/results/h100-2026-12-06-own-kernels). Triton 3.6's Hopper warp
specialization cannot split the two: on this loop it aborts, or leaves the loop whole (8 warps). Split by hand in Gluon
(a TMA loader warp, the unpack and wgmma in the default partition) it ran 7-23% slower, and a wgmma whose weights stay
in flight in registers across the next unpack is unsafe there: ptxas reuses the registers
(bench/results/h200-2026-12-05-gluon-warp-specialized). On mma.sync instead (Gluon, a TMA loader warp, contiguous
stages), whose MMAs do not block the unpacking warp, it was correct but 1.36-1.57x slower from 16 to 128 tokens: two
consumer warps a scheduler cannot hide each warp's chain of unpack, operand reads and MMAs
(bench/results/h100-2026-12-05-mma2-sync).
Split-K (splitk.py: fp32 partials added in slice order, no atomic adds) fills the SMs when N alone gives too few
tiles, bounded so that the partials stay small next to the weights. The partials are added by the slice that
completes a tile last where the launch has split counters (and the tile's merge is on), else by a reduce launch.
Grid (M tiles * N tiles, SPLIT_K), M tiles fastest, so programs sharing a weight tile run together.
"""

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from awqd.kernels import split_counters
from awqd.kernels.triton.gemm import dot_in_fp32
from awqd.kernels.triton.layout import AwqdW4, interpreting
from awqd.kernels.triton.splitk import (
    finish_split_k,
    merge_if_last,
    output_buffers,
    program_tile,
    sm_count,
    store_transposed,
)
from awqd.kernels.triton.unpack import join_words, natural_order, packed_order, split_scale_zero, unpack_plus_1024


@dataclass(frozen=True)
class SkinnyConfig:
    block_m: int
    block_n: int
    block_k: int  # capped at the group size at launch: one (scale, zero) per row per step
    split_k: int  # 0: chosen by shape at launch (skinny_split_k)
    num_warps: int
    num_stages: int
    tma: bool = True
    merge: bool = False  # split-K partials added by the tile's last slice where the launch has split counters
    # The scale goes into the weight tile before the MMA, so the MMAs chain on one accumulator and Triton runs each
    # one behind the next step's unpack (sm_90: async wgmma, several pending).
    scale_first: bool = False


SKINNY_MAX_ROWS = 512  # the largest bucket it is tuned for; above it, it runs its default tile untuned
SCALE_FIRST_MIN_ROWS = 128
PROGRAMS_PER_SM = 2  # the default tiles' registers and shared memory let two or three programs share an SM
MAX_SPLIT_K = 16
MIN_STEPS_PER_SLICE = 2  # a K slice shorter than this is all pipeline prologue
# Split-K partials are written and read once in fp32 (8 bytes per output per slice), mostly within L2: keep them
# within the int4 weight bytes the kernel streams (at 64 tokens and N = 4096 that still allows split-K 4).
MAX_PARTIAL_FRACTION = 1.0
MIN_WAVE_FILL = 0.85
# Up to 16 tokens the last slice's merge costs less than the reduce launch it replaces (layers 3-7% faster); from
# 32 its longer tail costs more (4-9% slower) (H200, bench/results/h200-2026-12-03-merged-split-k).
MERGE_MAX_ROWS = 16


def block_m_for(rows: int) -> int:
    return 16 if rows <= 16 else 32 if rows <= 32 else 64


def default_tile(rows: int) -> SkinnyConfig:
    """128 weight rows x 128 columns (8 KB of int4 per step) on 4 warps: 32 weight rows per warp is the tile for
    which Triton reads the words straight into the MMA operand (see natural_order). In an H200 sweep over the
    four Llama-2-7B linears at 1-128 tokens, this shape (with 3-5 stages and various splits) won 29 of the 32
    (linear, bucket) pairs (bench/results/h200-2026-12-03-fragment-order)."""
    block_m = block_m_for(rows)
    return SkinnyConfig(block_m, 128, 128, 0, 4, 4 if block_m <= 32 else 3, merge=rows <= MERGE_MAX_ROWS)


def tuning_space(bucket: int) -> tuple[SkinnyConfig, ...]:
    """What boot-time tuning times at a bucket: the default and the tiles that beat it on some linear in the same
    sweep. From 64 rows a program holds twice the product, and splitting K less than the shape's default won on
    the large linears. The pointer-load tile, for GPUs without TMA, has 8 warps: with 4 its two register-held
    look-ahead steps need ~250 registers. Where the tiles merge split-K partials in-kernel, the default also
    competes with its reduce-launch form, so that a shape where the merge loses keeps the launch."""
    if bucket > SKINNY_MAX_ROWS:
        return ()
    default = default_tile(bucket)
    block_m, merge = default.block_m, default.merge
    pointers = SkinnyConfig(block_m, 128, 128, 0, 8, 2, tma=False, merge=merge)
    if block_m <= 32:
        others = (
            SkinnyConfig(block_m, 128, 128, 0, 4, 3, merge=merge),
            SkinnyConfig(block_m, 128, 64, 0, 4, 3, merge=merge),
            SkinnyConfig(block_m, 64, 128, 0, 4, 4, merge=merge),
        )
    else:
        others = (
            SkinnyConfig(block_m, 128, 128, 0, 4, 5),
            SkinnyConfig(block_m, 128, 128, 2, 4, 3),
            SkinnyConfig(block_m, 128, 128, 1, 4, 3),
        )
    reduced = (dataclasses.replace(default, merge=False),) if merge else ()
    return (default, *others, *reduced, *scale_first_tiles(bucket), pointers)


def scale_first_tiles(bucket: int) -> tuple[SkinnyConfig, ...]:
    """The scale-first tiles that won a linear in an H200 sweep at 128-512 tokens with the fragment-packed layout
    (bench/results/h200-2026-12-05-fragment-packed): 64 x 128 on qkv and gate_up at 128 tokens and on qkv at 256
    (15% ahead of the next tile there), 128 x 128 and 256 x 64 (BLOCK_K 64) on gate_up at 512. Below 128 one came
    within 1% of the plain tiles (gate_up at 64 tokens): they are tuned from 128."""
    if bucket < SCALE_FIRST_MIN_ROWS:
        return ()
    tiles = (
        SkinnyConfig(64, 128, 128, 0, 4, 3, scale_first=True),
        SkinnyConfig(128, 128, 64, 0, 4, 4, scale_first=True),
        SkinnyConfig(256, 64, 64, 0, 4, 3, scale_first=True),
    )
    return tuple(tile for tile in tiles if tile.block_m <= bucket)


@functools.cache
def use_tma(device: torch.device) -> bool:
    """TMA exists from sm_90 (Hopper); under the interpreter descriptors are emulated, so both paths are tested."""
    return interpreting() or torch.cuda.get_device_capability(device) >= (9, 0)


def wave_fill(programs: int, sms: int) -> float:
    """How evenly `programs` equal programs spread over the SMs: 1.0 when every SM gets as many as the busiest."""
    waves = programs / sms
    return waves / math.ceil(waves)


def skinny_split_k(rows: int, packed: AwqdW4, block_m: int, block_n: int, block_k: int, device: torch.device) -> int:
    """The smallest power of two that gives the SMs about PROGRAMS_PER_SM programs each, evenly (MIN_WAVE_FILL),
    within the step and partial bounds; failing that, the allowed split that spreads the programs most evenly."""
    tiles = triton.cdiv(rows, block_m) * triton.cdiv(packed.out_features, block_n)
    k_steps = triton.cdiv(packed.in_features, block_k)
    partial_budget = MAX_PARTIAL_FRACTION * packed.out_features * packed.in_features // 2
    sms = sm_count(device)
    allowed = [
        split
        for split in (2**power for power in range(MAX_SPLIT_K.bit_length()))
        if split == 1
        or (k_steps >= split * MIN_STEPS_PER_SLICE and split * 8 * rows * packed.out_features <= partial_budget)
    ]
    enough = [
        split
        for split in allowed
        if tiles * split >= MIN_WAVE_FILL * PROGRAMS_PER_SM * sms and wave_fill(tiles * split, sms) >= MIN_WAVE_FILL
    ]
    return enough[0] if enough else max(allowed, key=lambda split: (wave_fill(tiles * split, sms), -split))


@triton.jit
def load_step(w_rows, x_rows, n_mask, m_mask, k0, word, k):
    """The pointer path's loads of one K step: the [BLOCK_N, BLOCK_K / 8] int32 weight words (16-byte vectors
    along K) and the [BLOCK_M, BLOCK_K] activations; rows past N or M read as zero."""
    w = tl.load(w_rows + (k0 // 8 + word)[None, :], mask=n_mask[:, None], other=0)
    x = tl.load(x_rows + (k0 + k)[None, :], mask=m_mask[:, None], other=0.0)
    return w, x


@triton.jit
def tile_values(q_plus_1024, zero_plus_1024, scale, dtype: tl.constexpr, SCALE_FIRST: tl.constexpr):
    """One nibble slot of the MMA's weight operand: the integers q - z (-15..15, exact in fp16 and bf16), or with
    SCALE_FIRST the dequantized (q - z) * s, rounded once in fp16."""
    if SCALE_FIRST:
        return ((q_plus_1024 - zero_plus_1024) * scale).to(dtype)
    return (q_plus_1024 - zero_plus_1024).to(dtype)


@triton.jit
def mma(weights, x, acc, DOT_IN_FP32: tl.constexpr):
    """acc + weights @ x.T on the tensor cores (in fp32 under the interpreter's bf16, see dot_in_fp32)."""
    if DOT_IN_FP32:
        return tl.dot(weights, tl.trans(x.to(tl.float32)), acc, input_precision="ieee")
    return tl.dot(weights, tl.trans(x), acc)


@triton.jit
def awqd_w4_skinny_kernel(
    x_src,  # a [M, K] tensor descriptor (USE_TMA) or pointer
    w_src,  # a [N, K / 8] int32 tensor descriptor (USE_TMA) or pointer: the awqd_w4 qweight
    sz_src,  # (scale, zero) words: a [K / GROUP_SIZE, N] tensor descriptor (USE_TMA), else [N, K / GROUP_SIZE]
    bias_ptr,
    target_ptr,  # out, or under split-K fp32 partials [SPLIT_K, M, N]
    out_ptr,
    counters_ptr,  # under MERGE: split counters, one per output tile (program_id 0); else never read
    M,
    N,
    K,
    K_WORDS,  # K / 8, its own argument so that Triton sees its divisibility by 16: 16-byte weight loads
    GROUP_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IS_BF16: tl.constexpr,
    USE_TMA: tl.constexpr,
    USE_ASM: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    MERGE: tl.constexpr,
    SCALE_FIRST: tl.constexpr,
):
    tl.static_assert(GROUP_SIZE % BLOCK_K == 0, "a K step must stay within one quantization group")
    pid_m, pid_n, pid_k, k_start, k_end = program_tile(M, K, BLOCK_M, BLOCK_K, SPLIT_K)
    WORDS: tl.constexpr = BLOCK_K // 8
    operand_dtype: tl.constexpr = tl.float32 if DOT_IN_FP32 else tl.bfloat16 if IS_BF16 else tl.float16

    m0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    m = m0 + tl.arange(0, BLOCK_M)
    n = n0 + tl.arange(0, BLOCK_N)
    m_mask = m < M
    n_mask = n < N
    if not USE_TMA:
        sz_rows = sz_src + n * (K // GROUP_SIZE)
        word = tl.arange(0, WORDS)
        k = tl.arange(0, BLOCK_K)
        x_rows = x_src + m.to(tl.int64)[:, None] * K
        w_rows = w_src + n[:, None] * K_WORDS
        w_next, x_next = load_step(w_rows, x_rows, n_mask, m_mask, tl.minimum(k_start, K - BLOCK_K), word, k)
        ahead = tl.minimum(k_start + BLOCK_K, K - BLOCK_K)
        w_after, x_after = load_step(w_rows, x_rows, n_mask, m_mask, ahead, word, k)
        # Look-aheads past the slice (or an empty slice's) re-read K's last step: in bounds and unused, so no masks.
        sz_next = tl.load(sz_rows + tl.minimum(k_start, K - 1) // GROUP_SIZE, mask=n_mask, other=0)

    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)  # out.T
    for k0 in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
        if USE_TMA:  # one row segment of the group-major copy, staged with the tiles
            sz = tl.reshape(sz_src.load([k0 // GROUP_SIZE, n0]), [BLOCK_N])
        else:
            sz = sz_next
            next_k = k0 + BLOCK_K
            sz_next = tl.load(sz_rows + tl.minimum(next_k, K - 1) // GROUP_SIZE, mask=n_mask, other=0)
        # K is a multiple of the group size and so of BLOCK_K: every step is whole, only rows need masks.
        if USE_TMA:  # staged num_stages deep by the pipeliner; rows past the tensor's edge come back zero
            w = w_src.load([n0, k0 // 8])
            x = x_src.load([m0, k0])
        else:  # two steps ahead by hand, in registers: pointer loads feeding the unpack are not pipelined
            w, x = w_next, x_next
            w_next, x_next = w_after, x_after
            ahead = tl.minimum(next_k + BLOCK_K, K - BLOCK_K)
            w_after, x_after = load_step(w_rows, x_rows, n_mask, m_mask, ahead, word, k)

        scale, zero_plus_1024 = split_scale_zero(sz)  # [BLOCK_N] each: this step's one group per row
        z = zero_plus_1024[:, None]
        s = scale[:, None]
        q0, q1, q2, q3, q4, q5, q6, q7 = unpack_plus_1024(w, USE_ASM)
        weights = join_words(
            tile_values(q0, z, s, operand_dtype, SCALE_FIRST),
            tile_values(q1, z, s, operand_dtype, SCALE_FIRST),
            tile_values(q2, z, s, operand_dtype, SCALE_FIRST),
            tile_values(q3, z, s, operand_dtype, SCALE_FIRST),
            tile_values(q4, z, s, operand_dtype, SCALE_FIRST),
            tile_values(q5, z, s, operand_dtype, SCALE_FIRST),
            tile_values(q6, z, s, operand_dtype, SCALE_FIRST),
            tile_values(q7, z, s, operand_dtype, SCALE_FIRST),
            BLOCK_N,
            BLOCK_K,
        )  # [BLOCK_N, BLOCK_K]
        if USE_TMA:
            weights = natural_order(weights, BLOCK_N, BLOCK_K)
        else:
            x = packed_order(x, BLOCK_M, BLOCK_K)
        if SCALE_FIRST:  # the accumulator chains through the MMAs, which can then run behind the next unpack
            acc = mma(weights, x, acc, DOT_IN_FP32)
        else:  # each step's exact integer product, scaled in fp32: one rounding fewer, but the MMA is waited on
            acc += mma(weights, x, tl.zeros_like(acc), DOT_IN_FP32) * scale.to(tl.float32)[:, None]

    store_transposed(target_ptr, bias_ptr, acc, m, n, m_mask, n_mask, M, N, pid_k, SPLIT_K, HAS_BIAS)
    if MERGE:
        tile = tl.program_id(0)
        merge_if_last(target_ptr, out_ptr, counters_ptr, bias_ptr, m, n, m_mask, n_mask, M, N, tile, SPLIT_K, HAS_BIAS)


def resolve(config: SkinnyConfig, rows: int, packed: AwqdW4, device: torch.device) -> SkinnyConfig:
    """The launch's concrete tile: BLOCK_K within a group, split-K by shape where the config leaves it open, and
    pointer loads where the device has no TMA."""
    block_k = min(config.block_k, packed.group_size)
    split_k = config.split_k or skinny_split_k(rows, packed, config.block_m, config.block_n, block_k, device)
    return dataclasses.replace(config, block_k=block_k, split_k=split_k, tma=config.tma and use_tma(device))


def skinny(
    x: torch.Tensor, packed: AwqdW4, config: SkinnyConfig | None = None, compile_only: bool = False
) -> torch.Tensor | None:
    """y = x @ W.T + bias for contiguous x [rows, in_features] in fp16 or bf16; y [rows, out_features] in x's dtype.
    compile_only compiles the launch's kernel and runs nothing (tuning compiles on threads); it returns None."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    rows = x.shape[0]
    config = resolve(config or default_tile(rows), rows, packed, x.device)
    # A tensor descriptor needs a 16-byte aligned base (a view into a larger buffer may not be) and 16-byte row
    # strides (the group-major (scale, zero) rows are out_features words).
    if x.data_ptr() % 16 or packed.out_features % 4 or packed.scale_zero_by_group is None:
        config = dataclasses.replace(config, tma=False)
    target, out = output_buffers(rows, packed.out_features, config.split_k, x.dtype, x.device)
    tiles = triton.cdiv(rows, config.block_m) * triton.cdiv(packed.out_features, config.block_n)
    merging = config.split_k > 1 and config.merge
    counters = split_counters.for_launch(x.device, tiles) if merging else None
    if config.tma:
        x_src = TensorDescriptor(x, list(x.shape), list(x.stride()), [config.block_m, config.block_k])
        w = packed.qweight
        w_src = TensorDescriptor(w, list(w.shape), list(w.stride()), [config.block_n, config.block_k // 8])
        sz = packed.scale_zero_by_group
        sz_src = TensorDescriptor(sz, list(sz.shape), list(sz.stride()), [1, config.block_n])
    else:
        x_src, w_src, sz_src = x, packed.qweight, packed.scale_zero
    grid = (tiles, config.split_k)
    kernel = functools.partial(awqd_w4_skinny_kernel.warmup, grid=grid) if compile_only else awqd_w4_skinny_kernel[grid]
    kernel(
        x_src,
        w_src,
        sz_src,
        packed.bias if packed.bias is not None else packed.scale_zero,  # never read without HAS_BIAS
        target,
        out,
        counters if counters is not None else out,
        rows,
        packed.out_features,
        packed.in_features,
        packed.in_features // 8,
        GROUP_SIZE=packed.group_size,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        SPLIT_K=config.split_k,
        NUM_STAGES=config.num_stages,
        HAS_BIAS=packed.bias is not None,
        IS_BF16=x.dtype == torch.bfloat16,
        USE_TMA=config.tma,
        USE_ASM=not interpreting(),
        DOT_IN_FP32=dot_in_fp32(x.dtype),
        MERGE=counters is not None,
        SCALE_FIRST=config.scale_first,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if compile_only:
        return None
    return out if counters is not None else finish_split_k(target, packed.bias, out)
