"""awqd's W4A16 GEMV: CUDA-core dot products for one or a few tokens, int4 unpacked in registers.

Grid (rows, N / BLOCK_N, SPLIT_K). A program owns BLOCK_N weight rows and one contiguous K slice, and reads the
slice BLOCK_K columns at a time as [segments, BLOCK_N, words] int32 tiles (a segment: the step's words of one
group; one word: 8 weights of one row), with each word's 8 activations as 4 int32 pairs of fp16 (the layout puts
pairs 4 apart in one word).
Nsight Compute on an H200 (bench/results/h200-2026-12-02-own-kernels) found an earlier version issue-bound: its warps
waited to issue (stall reasons selected / not_selected) at 22-36% of DRAM peak, at ~47 SASS instructions per word
in its loop. So this one spends as few instructions per weight as it can (worddot.py, ~19 per word at the default
tile, counted in the sm_90 SASS by bench/gemv_sass.py), and now waits mostly on its global loads (long_scoreboard),
at 54-62% of DRAM peak on the large linears (bench/results/h200-2026-12-05-gemv-fma-unroll):
- no weights put back in column order (the old tl.join / tl.reshape cost shared-memory round trips): each unpacked
  register of two nibbles meets the int32 of the two activations the layout put there;
- fp16 activations: packed f16x2 arithmetic per word, one conversion to fp32, one fp32 multiply-add by the scale;
- the scale and zero are read and prepared once per (row, segment), not per word;
- no masks on the loads when every K step is whole (EVEN_K; true for the Llama shapes), tail rows clamped.
The next step's loads (weights, scales and zeros, activations) are still issued before the current step is
computed, and the loop runs two steps per iteration, so that no register is copied from one step to the next.
The [segments, BLOCK_N, words] fp32 accumulator is summed once at the end.
Activation rows are the fastest grid axis, so programs sharing a weight tile run together and read it from L2.
(One program per row: a version holding several rows' [BLOCK_N, BLOCK_K] products per program measured 2.6x
slower at batch 1 on the H200, so rows stay apart.)
Gated (gemv_gated): for the MLP's fused [gate; up] weight, a program takes BLOCK_N / 2 gate rows and the up rows
of the same columns, interleaved, and ends in silu(gate) * up: the gating costs no launch of its own and the
[rows, 2 x intermediate] product is never written. It rounds where the GEMV and the gating kernel would.
Deferred norm (gemv_add_norm, then gemv or gemv_gated with norm=): the residual add and RMS norm between decoder
sublayers without a launch of their own. The GEMV before them (o, down) adds its columns to the residual stream and
writes them times the norm weight, with one sum of squares per program; the GEMV after them (gate_up, the next qkv)
takes those rows and scales its products by 1/rms from the sums. No program waits on another (a norm run by the
program that completes a row was 7% slower per decode step: bench/results/h200-2026-12-04-gemv-norm-epilogue).
"""

import dataclasses
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from awqd.errors import InvalidArgument
from awqd.kernels.base import DeferredNorm
from awqd.kernels.triton.gating import silu_mul
from awqd.kernels.triton.layout import AwqdW4, interpreting
from awqd.kernels.triton.splitk import finish_split_k, k_slice, output_buffers, split_k_for
from awqd.kernels.triton.worddot import word_dot


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 1  # the kernel prefetches by hand; Triton's pipeliner adds nothing here


# Two steps per loop iteration: the prefetched step's registers then need no copy into the current step's (21
# MOVs per step at the default tile, in the sm_90 SASS).
LOOP_UNROLL = tl.constexpr(2)
GEMV_MAX_TUNED_ROWS = 4  # each row re-reads the weights from L2; beyond a few rows the GEMM wins (bench/results)
# Chosen from the sm_90 SASS: (SASS instructions per word in the loop, registers) on the qkv shape, the 256-column
# tiles on down's. A thread holds BLOCK_N / num_warps rows of 4 words per segment, so rows per thread amortise the
# activations; the smaller tiles give N = 4096 more programs. 256-column steps are whole on K = 11008.
# Timed on an H100, ms per Llama-2-7B layer at 1 / 2 tokens, two rounds (bench/results/h100-2026-12-05-gemv-fma-
# unroll): the first, the untuned default, is the best at 2 tokens and within 5-16% of the best at 1.
TILES = (
    GemvConfig(16, 512, 1, 2),  # (19.3, 168): 0.056-0.062 / 0.066-0.067
    GemvConfig(8, 1024, 1, 2),  # (19.7, 166): 0.053 / 0.071-0.072
    GemvConfig(32, 256, 1, 2),  # (19.3, 128): 0.075 / 0.082
    GemvConfig(16, 256, 1, 2),  # (22.1, 96): 0.065-0.066 / 0.078
    GemvConfig(4, 1024, 1, 2),  # (23.1, 95): 0.056 / 0.088-0.089
    GemvConfig(16, 1024, 1, 4),  # (19.9, 143): 0.056 / 0.079-0.080
    GemvConfig(8, 512, 1, 1),  # (20.7, 136): 0.059-0.060 / 0.073; one warp: its layout conversions' barriers cost least
)
DEFAULT_TILE = TILES[0]
# Tried and rejected on an H200 (bench/results/h200-2026-12-02-gemv-splitk-pdl): split-K 2 and 4 tiles, slower on
# every linear at 1-4 tokens (more resident warps did not raise DRAM throughput; the reduce pass costs 2-3 µs), and
# programmatic dependent launch, which slowed the engine's decode step by 16%. Also a 128-register cap (Triton's
# maxnreg: 25% occupancy instead of 18.75%, no spills), on an H200 before the unroll and on an H100 after it: no
# linear was faster capped by more than the spread between runs, and most were slower
# (bench/results/h200-2026-12-03-gemv-register-cap, h100-2026-12-05-dequant-tiles). And tiles of 2048-4096-column
# K steps, 1-2 per program: 5-73% slower on every linear (bench/results/h100-2026-12-05-gemv-long-steps). Nor is
# split-K worth an in-kernel merge (splitk.merge_if_last): the split launches alone, as if the merge were free, took
# 2.3% less per layer on an H100, all on o and down (bench/results/h100-2026-12-06-gemv-split-bound).


def gemv_config(rows: int, packed: AwqdW4, device: torch.device) -> GemvConfig:
    """The untuned default: TILES[0]; split-K only when SMs would idle."""
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
    residual_ptr,  # ADD_NORM: the residual stream [rows, N] that the output joins; out_ptr gets the sum
    norm_weight_ptr,  # ADD_NORM: [N]
    weighted_ptr,  # ADD_NORM: the sum times the norm weight [rows, N]
    squares_ptr,  # ADD_NORM: fp32 [rows, N / BLOCK_N] written, one per program; DEFERRED_NORM: [rows, SQUARES] read
    SQUARES,
    eps,
    N,
    K_WORDS,
    GROUP_SIZE: tl.constexpr,
    SEGMENT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IS_FP16: tl.constexpr,
    USE_ASM: tl.constexpr,
    GATED: tl.constexpr,
    ADD_NORM: tl.constexpr,
    DEFERRED_NORM: tl.constexpr,
    BLOCK_SQUARES: tl.constexpr,
):
    row = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    SEG_WORDS: tl.constexpr = SEGMENT // 8
    SEGS: tl.constexpr = BLOCK_K // SEGMENT
    WORDS: tl.constexpr = BLOCK_K // 8
    GROUP_WORDS: tl.constexpr = GROUP_SIZE // 8
    # In words, not columns: K_WORDS is divisible by 16 where K is, so Triton proves the 16-byte alignment.
    start, end = k_slice(K_WORDS, pid_k, WORDS, SPLIT_K)

    lane = tl.arange(0, BLOCK_N)
    if GATED:  # lanes 2c and 2c + 1: gate and up rows of column c; N is the gate's and the up's rows together
        columns = pid_n * (BLOCK_N // 2) + lane // 2
        n_mask = columns < N // 2
        n = tl.minimum(columns, N // 2 - 1) + (lane % 2) * (N // 2)
    else:
        n = pid_n * BLOCK_N + lane
        n_mask = n < N
    # Tiles are [SEGS, BLOCK_N, SEG_WORDS]: segments (a step's words in one group) outermost, so that Triton lays a
    # warp's lanes over words and segments and each thread keeps several rows, which share its activations.
    n_rows = tl.minimum(n, N - 1)[None, :, None]  # tail rows re-read the last row: no mask on the weight loads
    segments = (tl.arange(0, SEGS) * SEG_WORDS)[:, None, None]
    words = segments + tl.arange(0, SEG_WORDS)[None, None, :]
    w_rows = qweight_ptr + n_rows * K_WORDS + words
    sz_rows = scale_zero_ptr + n_rows * (K_WORDS // GROUP_WORDS) + segments // GROUP_WORDS
    # A word's 8 activations as 4 int32 pairs: word q of a run of 32 columns holds pairs q, q + 4, q + 8 and q + 12
    # of the run's 16 (layout.FRAGMENT_COLUMNS).
    run_pairs = (words // 4 * 16 + words % 4)[:, :, :, None]
    pairs = run_pairs + 4 * tl.arange(0, 4)[None, None, None, :]
    x_pairs = x_ptr.to(tl.pointer_type(tl.int32)) + row.to(tl.int64) * (K_WORDS * 4) + pairs

    # With whole steps the loads are unmasked, so the first and the last steps' reads are kept inside the slice.
    first = tl.minimum(start, end - WORDS) if EVEN_K else start
    w_next, sz_next, x_next = load_step(w_rows, sz_rows, x_pairs, words, segments, first, end, GROUP_WORDS, EVEN_K)
    acc = tl.zeros([SEGS, BLOCK_N, SEG_WORDS], dtype=tl.float32)
    for word0 in tl.range(start, end, WORDS, loop_unroll_factor=LOOP_UNROLL):
        w, sz, x = w_next, sz_next, x_next
        following = tl.minimum(word0 + WORDS, end - WORDS) if EVEN_K else word0 + WORDS
        w_next, sz_next, x_next = load_step(
            w_rows, sz_rows, x_pairs, words, segments, following, end, GROUP_WORDS, EVEN_K
        )
        even_pairs, odd_pairs = tl.split(tl.reshape(x, (SEGS, 1, SEG_WORDS, 2, 2)))
        x01, x45 = tl.split(even_pairs)
        x23, x67 = tl.split(odd_pairs)
        acc += word_dot(w, sz, x01, x23, x45, x67, IS_FP16, USE_ASM)
    result = tl.sum(tl.sum(acc, axis=2), axis=0)

    # Read and added after the loop: added before it, the reduction's wait came before the loop's loads, and a
    # layer took up to 17% longer; read before it, the sums held registers through the loop and saved nothing
    # (bench/results/h200-2026-12-04-deferred-norm).
    if DEFERRED_NORM:
        p = tl.arange(0, BLOCK_SQUARES)
        squares = tl.load(squares_ptr + row.to(tl.int64) * SQUARES + p, mask=p < SQUARES, other=0.0)
        result *= 1.0 / tl.sqrt(tl.sum(squares, axis=0) / (K_WORDS * 8) + eps)
    if HAS_BIAS and SPLIT_K == 1:
        result += tl.load(bias_ptr + n, mask=n_mask, other=0.0)
    if GATED:  # split-K is never gated (gemv_gated)
        gate, up = tl.split(tl.reshape(result.to(out_ptr.dtype.element_ty), (BLOCK_N // 2, 2)))
        columns = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        tl.store(out_ptr + row.to(tl.int64) * (N // 2) + columns, silu_mul(gate, up), mask=columns < N // 2)
    elif ADD_NORM:  # never split (gemv_add_norm); the sum rounds as the GEMV's output and the norm kernel's add do
        offsets = row.to(tl.int64) * N + n
        residual = tl.load(residual_ptr + offsets, mask=n_mask, other=0.0)
        norm_weight = tl.load(norm_weight_ptr + n, mask=n_mask, other=0.0)
        total = (residual.to(tl.float32) + result.to(residual.dtype).to(tl.float32)).to(residual.dtype)
        tl.store(out_ptr + offsets, total, mask=n_mask)
        tl.store(weighted_ptr + offsets, (total.to(tl.float32) * norm_weight.to(tl.float32)).to(total.dtype), n_mask)
        squares = tl.where(n_mask, total.to(tl.float32) * total.to(tl.float32), 0.0)
        tl.store(squares_ptr + row.to(tl.int64) * tl.num_programs(1) + pid_n, tl.sum(squares, axis=0))
    elif SPLIT_K == 1:
        tl.store(out_ptr + row.to(tl.int64) * N + n, result.to(out_ptr.dtype.element_ty), mask=n_mask)
    else:
        rows = tl.num_programs(0)
        tl.store(out_ptr + (pid_k * rows + row).to(tl.int64) * N + n, result, mask=n_mask)


@triton.jit
def load_step(w_rows, sz_rows, x_pairs, words, segments, word0, end, GROUP_WORDS: tl.constexpr, EVEN_K: tl.constexpr):
    """The step at word0: weight words, their groups' (scale, zero) words and each word's 4 activation pairs, masked
    to 0 past end unless every step is whole (a masked word meets zero activations).

    The activations are loaded first: Triton then moves them into the weights' register layout after the next step's
    loads are issued. Loaded last, they win and the weights move instead, at the top of the loop or right after
    their load, which waits on the loads the prefetch meant to leave in flight (the sm_90 TTGIR of either order)."""
    if EVEN_K:
        x = tl.load(x_pairs + word0 * 4)
        sz = tl.load(sz_rows + word0 // GROUP_WORDS)
        w = tl.load(w_rows + word0)
    else:
        inside = word0 + words < end
        x = tl.load(x_pairs + word0 * 4, mask=inside[:, :, :, None], other=0)
        sz = tl.load(sz_rows + word0 // GROUP_WORDS, mask=word0 + segments < end, other=0)
        w = tl.load(w_rows + word0, mask=inside, other=0)
    return w, sz, x


def gemv(
    x: torch.Tensor, packed: AwqdW4, config: GemvConfig | None = None, norm: DeferredNorm | None = None
) -> torch.Tensor:
    """y = x @ W.T + bias for contiguous x [rows, in_features] in fp16 or bf16; y [rows, out_features] in x's dtype.
    With a norm, x is its weighted rows, and its 1/rms scales each row's products before the bias."""
    config = config or gemv_config(x.shape[0], packed, x.device)
    target, out = output_buffers(x.shape[0], packed.out_features, config.split_k, x.dtype, x.device)
    launch(x, packed, config, target, gated=False, norm=norm)
    return finish_split_k(target, packed.bias, out)


def gemv_gated(
    x: torch.Tensor, packed: AwqdW4, config: GemvConfig | None = None, norm: DeferredNorm | None = None
) -> torch.Tensor:
    """silu(gate) * up for the fused [gate; up] weight (gate the first out_features / 2 rows): [rows, out_features /
    2] in x's dtype, as gemv and then the gating would give it. The config's tile, unsplit."""
    if packed.out_features % 2:
        raise InvalidArgument("weight", f"a gated GEMV needs [gate; up] rows, got {packed.out_features} (odd)")
    config = dataclasses.replace(config or DEFAULT_TILE, split_k=1)
    out = torch.empty((x.shape[0], packed.out_features // 2), dtype=x.dtype, device=x.device)
    launch(x, packed, config, out, gated=True, norm=norm)
    return out


def gemv_add_norm(
    x: torch.Tensor,
    packed: AwqdW4,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    config: GemvConfig | None = None,
) -> tuple[torch.Tensor, DeferredNorm]:
    """(residual + gemv(x), that sum's RMS norm deferred): each program adds its columns to the residual stream and
    writes their weighted values and their sum of squares, so no program waits on another and the norm costs no
    launch. The config's tile, unsplit."""
    if tuple(residual.shape) != (x.shape[0], packed.out_features) or residual.dtype != x.dtype:
        raise InvalidArgument(
            "residual",
            f"expected {x.dtype} {[x.shape[0], packed.out_features]}, got {residual.dtype} {list(residual.shape)}",
        )
    config = dataclasses.replace(config or DEFAULT_TILE, split_k=1)
    total = torch.empty_like(residual)
    programs = triton.cdiv(packed.out_features, config.block_n)
    squares = torch.empty((x.shape[0], programs), dtype=torch.float32, device=x.device)
    added = AddedNorm(residual.contiguous(), norm_weight, DeferredNorm(torch.empty_like(residual), squares, eps))
    launch(x, packed, config, total, gated=False, added=added)
    return total, added.norm


@dataclass(frozen=True)
class AddedNorm:
    """gemv_add_norm's operands: the residual stream and norm weight it reads, and the DeferredNorm it writes."""

    residual: torch.Tensor
    norm_weight: torch.Tensor
    norm: DeferredNorm


def launch(
    x: torch.Tensor,
    packed: AwqdW4,
    config: GemvConfig,
    target: torch.Tensor,
    gated: bool,
    norm: DeferredNorm | None = None,
    added: AddedNorm | None = None,
) -> None:
    """norm: x is that DeferredNorm's weighted rows; added: gemv_add_norm's operands."""
    rows = x.shape[0]
    if x.data_ptr() % 4:  # the kernel reads activations as int32 pairs: a view 2 bytes into a buffer is copied
        x = x.clone()
    if added is not None:
        made = added.norm
        norm_args = (added.residual, added.norm_weight, made.weighted, made.partial_squares, 0, made.eps)
    elif norm is not None:
        squares = norm.partial_squares.contiguous()
        norm_args = (target, target, target, squares, squares.shape[-1], norm.eps)
    else:
        norm_args = (target, target, target, target, 0, 0.0)  # never read nor written
    # A gated program covers block_n / 2 columns of the gate and of the up rows: as many programs as ungated.
    grid = (rows, triton.cdiv(packed.out_features, config.block_n), config.split_k)
    awqd_w4_gemv_kernel[grid](
        x,
        packed.qweight,
        packed.scale_zero,
        packed.bias if packed.bias is not None else packed.scale_zero,  # never read without HAS_BIAS
        target,
        *norm_args,
        packed.out_features,
        packed.in_features // 8,
        GROUP_SIZE=packed.group_size,
        SEGMENT=min(packed.group_size, config.block_k),
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        SPLIT_K=config.split_k,
        EVEN_K=packed.in_features % config.block_k == 0,
        HAS_BIAS=packed.bias is not None,
        IS_FP16=x.dtype == torch.float16,
        USE_ASM=not interpreting(),
        GATED=gated,
        ADD_NORM=added is not None,
        DEFERRED_NORM=norm is not None,
        BLOCK_SQUARES=triton.next_power_of_2(norm_args[4]) if norm is not None else 1,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
