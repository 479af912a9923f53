"""Triton kernel for batch-invariant logits (awqd.engine.layers.logits): a dense tensor-core GEMM computed
transposed (logits.T = W @ hidden.T), one fixed tile at every row count, no split-K."""

import torch
import triton
import triton.language as tl

from awqd.kernels.triton.layout import interpreting

BLOCK_M, BLOCK_N, BLOCK_K = 16, 64, 64  # rows, vocab entries, hidden per step


@triton.jit
def logits_kernel(
    hidden_ptr,
    weight_ptr,
    out_ptr,
    M,
    N,
    K,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    pid = tl.program_id(0)
    m_tiles = tl.cdiv(M, BLOCK_M)
    m = (pid % m_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = (pid // m_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.arange(0, BLOCK_K)
    m_mask, n_mask = m < M, n < N
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = k0 + k < K
        w = tl.load(
            weight_ptr + n.to(tl.int64)[:, None] * K + (k0 + k)[None, :], mask=n_mask[:, None] & k_mask[None, :]
        )
        h = tl.load(
            hidden_ptr + m.to(tl.int64)[:, None] * K + (k0 + k)[None, :], mask=m_mask[:, None] & k_mask[None, :]
        )
        if DOT_IN_FP32:  # the interpreter's bf16 dot is wrong; fp32 models get exact products, not TF32
            acc = tl.dot(w.to(tl.float32), tl.trans(h.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(w, tl.trans(h), acc)
    offsets = m.to(tl.int64)[None, :] * N + n[:, None]
    tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=n_mask[:, None] & m_mask[None, :])


def logits_rows(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    hidden = hidden.contiguous()
    rows, vocab = hidden.shape[0], weight.shape[0]
    out = torch.empty(rows, vocab, dtype=hidden.dtype, device=hidden.device)
    grid = (triton.cdiv(rows, BLOCK_M) * triton.cdiv(vocab, BLOCK_N),)
    logits_kernel[grid](
        hidden,
        weight,
        out,
        rows,
        vocab,
        hidden.shape[1],
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
        DOT_IN_FP32=interpreting() or hidden.dtype == torch.float32,
        num_warps=4,
        num_stages=3,
    )
    return out
