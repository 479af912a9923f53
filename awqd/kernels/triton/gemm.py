"""awqd's W4A16 GEMM: tensor-core tiles (tl.dot) with int4 unpacked in registers, for 16 to 512+ tokens.

Grid (M tiles * N tiles, SPLIT_K). M tiles are the fastest grid axis, so the programs sharing a weight tile run
together and the int4 tile is read from memory once. BLOCK_K divides the group size, so a K step lies in one
group: the raw 4-bit values (exact in fp16/bf16) go to tl.dot, and scale and zero are applied to the fp32
partial product once per step (layout.py): acc += s * (x @ q.T - z * rowsum(x)).
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from awqd.kernels.triton.layout import AwqdW4, interpreting
from awqd.kernels.triton.splitk import finish_split_k, output_buffers, split_k_for


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int


# (largest M, BLOCK_M, BLOCK_N, largest BLOCK_K, num_warps, num_stages); BLOCK_K also stays <= the group size.
GEMM_TILES = (
    (16, 16, 64, 128, 4, 4),
    (32, 32, 64, 128, 4, 4),
    (64, 64, 64, 64, 4, 4),
    (128, 64, 128, 64, 4, 4),
    (None, 128, 128, 64, 8, 3),
)


def gemm_config(rows: int, packed: AwqdW4, device: torch.device) -> GemmConfig:
    """Tiles by M bucket from GEMM_TILES (not autotuned); split-K only when the output tiles leave SMs idle."""
    _, block_m, block_n, max_block_k, num_warps, num_stages = next(
        tile for tile in GEMM_TILES if tile[0] is None or rows <= tile[0]
    )
    block_k = min(max_block_k, packed.group_size)
    tiles = triton.cdiv(rows, block_m) * triton.cdiv(packed.out_features, block_n)
    split_k = split_k_for(tiles, packed.in_features // block_k, device)
    return GemmConfig(block_m, block_n, block_k, split_k, num_warps, num_stages)


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
    DOT_IN_FP32: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    m_tiles = tl.cdiv(M, BLOCK_M)
    pid_m = pid % m_tiles
    pid_n = pid // m_tiles
    groups = K // GROUP_SIZE

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = m < M
    n_mask = n < N
    k = tl.arange(0, BLOCK_K)
    word = tl.arange(0, BLOCK_K // 8)
    nibble = tl.arange(0, 8)
    x_rows = x_ptr + m.to(tl.int64)[:, None] * K
    w_rows = qweight_ptr + n[:, None] * (K // 8)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, SPLIT_K * BLOCK_K):
        x = tl.load(x_rows + (k0 + k)[None, :], mask=m_mask[:, None], other=0.0)  # [M, K]
        w = tl.load(w_rows + (k0 // 8 + word)[None, :], mask=n_mask[:, None], other=0)  # [N, K / 8]
        q = tl.reshape((w[:, :, None] >> (nibble * 4)) & 0xF, (BLOCK_N, BLOCK_K))
        if DOT_IN_FP32:
            xq = tl.dot(x.to(tl.float32), tl.trans(q.to(tl.float32)), input_precision="ieee")
        else:
            xq = tl.dot(x, tl.trans(q.to(x.dtype)))
        x_sum = tl.sum(x.to(tl.float32), axis=1)
        sz = scale_zero_ptr + (n * groups + k0 // GROUP_SIZE) * 2
        scale = tl.load(sz, mask=n_mask, other=0.0).to(tl.float32)
        zero = tl.load(sz + 1, mask=n_mask, other=0.0).to(tl.float32)
        acc += scale[None, :] * (xq - x_sum[:, None] * zero[None, :])

    offsets = m.to(tl.int64)[:, None] * N + n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + n, mask=n_mask, other=0.0)[None, :]
        tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + pid_k.to(tl.int64) * M * N + offsets, acc, mask=mask)


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
        DOT_IN_FP32=dot_in_fp32(x.dtype),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return finish_split_k(target, packed.bias, out)
