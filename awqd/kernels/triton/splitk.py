"""Split-K without atomic adds: each K slice writes fp32 partial sums, which are then added in slice order, with the
bias, and cast. So the output needs no zero-filling launch, partial sums stay fp32, and the result does not depend
on the order the slices finish in.

The partials are added by one of two:
- a second, small launch (finish_split_k);
- where the launch has split counters (awqd.kernels.split_counters), the slice that completes a tile last
  (merge_if_last). That saves the launch (at 16 tokens, a fifth of the skinny kernel's time under Nsight
  Compute), but the tile's last slice then works longer, which is why the skinny tiles merge only at few rows.
"""

import functools

import torch
import triton
import triton.language as tl

REDUCE_BLOCK = 1024
INTERPRETER_SM_COUNT = 4  # small, so that the tests' tiny shapes still exercise split-K on the CPU


@functools.cache
def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_k_for(tiles: int, k_blocks: int, device: torch.device, max_split: int = 8) -> int:
    """Split K only when the output tiles leave SMs idle: the power of two that brings the grid to ~2 waves."""
    target = 2 * sm_count(device)
    split = 1
    while tiles * split * 2 <= target and split * 2 <= min(max_split, k_blocks):
        split *= 2
    return split


@triton.jit
def program_tile(M, K, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """A GEMM program's work on grid (M tiles x N tiles, SPLIT_K): its output tile (pid_m, pid_n), M tiles fastest
    so that the programs sharing a weight tile run together, and its K slice pid_k, [k_start, k_end)."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    m_tiles = tl.cdiv(M, BLOCK_M)
    k_start, k_end = k_slice(K, pid_k, BLOCK_K, SPLIT_K)
    return pid % m_tiles, pid // m_tiles, pid_k, k_start, k_end


@triton.jit
def k_slice(K, pid_k, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """[k_start, k_end) of K slice pid_k: whole BLOCK_K steps, the last slice taking the remainder."""
    slice_k = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_start = pid_k * slice_k
    return k_start, tl.minimum(K, k_start + slice_k)


@triton.jit
def store_transposed(
    out_ptr, bias_ptr, acc, m, n, m_mask, n_mask, M, N, pid_k, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr
):
    """A transposed product's tile acc [BLOCK_N, BLOCK_M] (rows m, columns n of out [M, N]): cast with the bias
    added, or, under split-K, K slice pid_k's fp32 partial sums (output_buffers)."""
    offsets = m.to(tl.int64)[None, :] * N + n[:, None]
    mask = n_mask[:, None] & m_mask[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + n, mask=n_mask, other=0.0)[:, None]
        tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + pid_k.to(tl.int64) * M * N + offsets, acc, mask=mask)


@triton.jit
def merge_if_last(
    partial_ptr,
    out_ptr,
    counters_ptr,
    bias_ptr,
    m,
    n,
    m_mask,
    n_mask,
    M,
    N,
    tile,
    SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    """After store_transposed of a split tile: the slice that counts SPLIT_K on the tile's counter adds its SPLIT_K
    partials in slice order, with the bias, into out [M, N], and leaves the counter zero for the next launch."""
    tl.debug_barrier()  # every thread's partial is written before the counter says so
    if tl.atomic_add(counters_ptr + tile, 1) == SPLIT_K - 1:  # acq_rel: the other slices' partials are visible
        tl.store(counters_ptr + tile, 0)
        offsets = m.to(tl.int64)[None, :] * N + n[:, None]
        mask = n_mask[:, None] & m_mask[None, :]
        partials = partial_ptr + offsets
        # Read past L1: the other slices wrote them from other SMs.
        total = tl.load(partials, mask=mask, other=0.0, cache_modifier=".cg")
        for _ in tl.static_range(1, SPLIT_K):
            partials += M * N  # the next slice's; offsets are 64-bit, so this is too
            total += tl.load(partials, mask=mask, other=0.0, cache_modifier=".cg")
        if HAS_BIAS:
            total += tl.load(bias_ptr + n, mask=n_mask, other=0.0)[:, None]
        tl.store(out_ptr + offsets, total.to(out_ptr.dtype.element_ty), mask=mask)


def output_buffers(
    rows: int, cols: int, split_k: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the kernel writes, the output): one tensor without split-K, else fp32 partials [split_k, rows, cols]."""
    out = torch.empty((rows, cols), dtype=dtype, device=device)
    if split_k == 1:
        return out, out
    return torch.empty((split_k, rows, cols), dtype=torch.float32, device=device), out


@triton.jit
def split_k_reduce_kernel(
    partial_ptr, bias_ptr, out_ptr, numel, cols, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr
):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for split in tl.static_range(SPLIT_K):
        acc += tl.load(partial_ptr + split * numel + offsets, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offsets % cols, mask=mask, other=0.0)
    tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)


def finish_split_k(partial: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    if partial is out:
        return out
    numel = out.numel()
    split_k_reduce_kernel[(triton.cdiv(numel, REDUCE_BLOCK),)](
        partial,
        bias if bias is not None else partial,  # never read without HAS_BIAS
        out,
        numel,
        out.shape[1],
        SPLIT_K=partial.shape[0],
        HAS_BIAS=bias is not None,
        BLOCK=REDUCE_BLOCK,
    )
    return out
