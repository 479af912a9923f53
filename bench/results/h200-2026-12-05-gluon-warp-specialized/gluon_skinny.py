"""Experiment (issue 15): the skinny W4A16 product as a warp-specialized Gluon kernel for sm_90 (Triton 3.6's
triton.experimental.gluon), to split the unpack from the tensor-core MMAs, which Triton's own Hopper warp
specialization cannot do on awqd's skinny loop (../h100-2026-12-05-ncu-skinny).

out.T [N, M] = W [N, K] @ x.T, W in the awqd_w4 layout (awqd/kernels/triton/layout.py), scale first: each step's
tile is dequantized to (q - z) * s in fp16 and the MMAs chain on one fp32 accumulator.
- A loader partition (1 warp, 24 registers) streams each K step's weight words [BLOCK_N, BLOCK_K / 8] and activation
  tile [BLOCK_M, BLOCK_K] through STAGES shared-memory buffers with TMA, paced by ready/empty mbarriers.
- The default partition (num_warps warps) loads the words into the registers of the wgmma A fragment (word_layout:
  the layout's FRAGMENT_COLUMNS make that an exact relabeling, asserted trivial at compile time), unpacks them
  (lop3, as awqd/kernels/triton/unpack.py), and runs wgmma with the activations from shared memory.
A_MODE says how the MMAs meet the unpack:
- SYNC: wgmma with the weights from registers, waited at once.
- SMEM: the unpacked tile goes to a double-buffered shared tile, and wgmma reads it there asynchronously while the
  warps unpack the next step (one MMA group in flight).
- ASYNC: wgmma with the weights from registers, in flight while the next step unpacks. UNSAFE: ptxas reuses the
  in-flight fragment's registers (see README.md); kept to reproduce that.
Split-K writes fp32 partials that the host adds. Not a product kernel: fp16 only, no bias, BLOCK_K = 128.
"""

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

SYNC, SMEM, ASYNC = 0, 1, 2
MODES = {"sync": SYNC, "smem": SMEM, "async": ASYNC}


@gluon.constexpr_function
def word_layout(block_n, words, num_warps):
    """[BLOCK_N, WORDS] int32 words as the wgmma A fragment holds them: lane 4r + q of warp w holds rows 16w + r and
    16w + r + 8, and word q of every run of four (the eight K values it holds over two k16 steps)."""
    rows_per_pass = 16 * num_warps
    registers = [[8, 0]]
    word = 4
    while word < words:
        registers.append([0, word])
        word *= 2
    row = rows_per_pass
    while row < block_n:
        registers.append([row, 0])
        row *= 2
    lanes = [[0, 1], [0, 2], [1, 0], [2, 0], [4, 0]]
    warps = []
    row = 16
    while row < rows_per_pass:
        warps.append([row, 0])
        row *= 2
    return gl.DistributedLinearLayout(registers, lanes, warps, [], [block_n, words])


@gluon.jit
def dequantize(words, sz, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr):
    """Words [BLOCK_N, BLOCK_K / 8] and their rows' (scale, zero) -> (q - z) * s [BLOCK_N, BLOCK_K] in K order."""
    s = gl.expand_dims((sz & 0xFFFF).to(gl.int16).to(gl.float16, bitcast=True), 1)
    z = gl.expand_dims(((sz >> 16) & 0xFFFF).to(gl.int16).to(gl.float16, bitcast=True) + 1024.0, 1)
    n0, n1, n2, n3, n4, n5, n6, n7 = gl.inline_asm_elementwise(
        (
            "{\n"
            ".reg .b32 w4, w8, w12, h0, h1, h2, h3;\n"
            "shr.u32 w4, $8, 4;\n"
            "shr.u32 w8, $8, 8;\n"
            "shr.u32 w12, $8, 12;\n"
            "lop3.b32 h0, $8, 0x000F000F, 0x64006400, 0xea;\n"
            "lop3.b32 h1, w4, 0x000F000F, 0x64006400, 0xea;\n"
            "lop3.b32 h2, w8, 0x000F000F, 0x64006400, 0xea;\n"
            "lop3.b32 h3, w12, 0x000F000F, 0x64006400, 0xea;\n"
            "mov.b32 {$0, $4}, h0;\n"
            "mov.b32 {$1, $5}, h1;\n"
            "mov.b32 {$2, $6}, h2;\n"
            "mov.b32 {$3, $7}, h3;\n"
            "}\n"
        ),
        "=h,=h,=h,=h,=h,=h,=h,=h,r",
        [words],
        dtype=(gl.int16,) * 8,
        is_pure=True,
        pack=1,
    )
    v0 = (n0.to(gl.float16, bitcast=True) - z) * s
    v1 = (n1.to(gl.float16, bitcast=True) - z) * s
    v2 = (n2.to(gl.float16, bitcast=True) - z) * s
    v3 = (n3.to(gl.float16, bitcast=True) - z) * s
    v4 = (n4.to(gl.float16, bitcast=True) - z) * s
    v5 = (n5.to(gl.float16, bitcast=True) - z) * s
    v6 = (n6.to(gl.float16, bitcast=True) - z) * s
    v7 = (n7.to(gl.float16, bitcast=True) - z) * s
    low = gl.join(gl.join(v0, v1), gl.join(v2, v3))
    high = gl.join(gl.join(v4, v5), gl.join(v6, v7))
    t = gl.reshape(gl.join(low, high), [BLOCK_N, BLOCK_K // 32, 4, 2, 2, 2])  # (row, run, q, c, h, p)
    t = gl.permute(t, [0, 1, 3, 4, 2, 5])  # (row, run, c, h, q, p): input column order
    return gl.reshape(t, [BLOCK_N, BLOCK_K])


@gluon.jit
def load_partition(x_desc, w_desc, x_bufs, w_bufs, ready, empty, m0, n0, step0, steps, BLOCK_K: gl.constexpr):
    STAGES: gl.constexpr = x_bufs.type.shape[0]
    for i in range(steps):
        s = i % STAGES
        mbarrier.wait(empty.index(s), ((i // STAGES) & 1) ^ 1)
        k0 = (step0 + i) * BLOCK_K
        mbarrier.expect(ready.index(s), x_desc.block_type.nbytes + w_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(w_desc, [n0, k0 // 8], ready.index(s), w_bufs.index(s))
        tma.async_copy_global_to_shared(x_desc, [m0, k0], ready.index(s), x_bufs.index(s))


@gluon.jit
def mma_partition(
    x_bufs,
    w_bufs,
    ready,
    empty,
    sz_ptr,
    out_ptr,
    M,
    N,
    groups,
    m0,
    n0,
    pid_k,
    step0,
    steps,
    GROUP_SIZE: gl.constexpr,
    BLOCK_M: gl.constexpr,
    BLOCK_N: gl.constexpr,
    BLOCK_K: gl.constexpr,
    A_MODE: gl.constexpr,
    num_warps: gl.constexpr,
):
    STAGES: gl.constexpr = x_bufs.type.shape[0]
    WL: gl.constexpr = word_layout(BLOCK_N, BLOCK_K // 8, num_warps)
    MMA: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_M, 16]
    )
    A_REGS: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    rows = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, WL))
    row_mask = rows < N
    sz_rows = sz_ptr + rows * groups
    last = steps - 1
    # Each step's (scale, zero) words, loaded two steps ahead.
    sz0 = gl.load(sz_rows + (step0 * BLOCK_K) // GROUP_SIZE, mask=row_mask, other=0)
    sz1 = gl.load(sz_rows + ((step0 + gl.minimum(1, last)) * BLOCK_K) // GROUP_SIZE, mask=row_mask, other=0)
    acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, MMA)
    if A_MODE == 1:  # SMEM
        A_SMEM: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], gl.float16)
        a_smem = gl.allocate_shared_memory(gl.float16, [2, BLOCK_N, BLOCK_K], A_SMEM)
        for i in range(steps):
            s = i % STAGES
            mbarrier.wait(ready.index(s), (i // STAGES) & 1)
            a = dequantize(w_bufs.index(s).load(WL), sz0, BLOCK_N, BLOCK_K)
            sz0 = sz1
            sz1 = gl.load(sz_rows + ((step0 + gl.minimum(i + 2, last)) * BLOCK_K) // GROUP_SIZE, mask=row_mask, other=0)
            a_smem.index(i % 2).store(a)
            fence_async_shared()
            acc = warpgroup_mma(a_smem.index(i % 2), x_bufs.index(s).permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            mbarrier.arrive(empty.index((i + STAGES - 1) % STAGES), count=1, pred=i > 0)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    elif A_MODE == 2:  # ASYNC (unsafe)
        mbarrier.wait(ready.index(0), 0)
        a = gl.convert_layout(dequantize(w_bufs.index(0).load(WL), sz0, BLOCK_N, BLOCK_K), A_REGS, assert_trivial=True)
        acc = warpgroup_mma(a, x_bufs.index(0).permute((1, 0)), acc, is_async=True)
        sz0 = sz1
        sz1 = gl.load(sz_rows + ((step0 + gl.minimum(2, last)) * BLOCK_K) // GROUP_SIZE, mask=row_mask, other=0)
        for i in range(1, steps):
            s = i % STAGES
            mbarrier.wait(ready.index(s), (i // STAGES) & 1)
            a_next = dequantize(w_bufs.index(s).load(WL), sz0, BLOCK_N, BLOCK_K)
            a_next = gl.convert_layout(a_next, A_REGS, assert_trivial=True)
            sz0 = sz1
            sz1 = gl.load(sz_rows + ((step0 + gl.minimum(i + 2, last)) * BLOCK_K) // GROUP_SIZE, mask=row_mask, other=0)
            acc, a = warpgroup_mma_wait(num_outstanding=0, deps=(acc, a))
            fence_async_shared()
            mbarrier.arrive(empty.index((i - 1) % STAGES), count=1)
            acc = warpgroup_mma(a_next, x_bufs.index(s).permute((1, 0)), acc, is_async=True)
            a = a_next
        acc, a = warpgroup_mma_wait(num_outstanding=0, deps=(acc, a))
    else:  # SYNC
        for i in range(steps):
            s = i % STAGES
            mbarrier.wait(ready.index(s), (i // STAGES) & 1)
            a = gl.convert_layout(
                dequantize(w_bufs.index(s).load(WL), sz0, BLOCK_N, BLOCK_K), A_REGS, assert_trivial=True
            )
            sz0 = sz1
            sz1 = gl.load(sz_rows + ((step0 + gl.minimum(i + 2, last)) * BLOCK_K) // GROUP_SIZE, mask=row_mask, other=0)
            acc = warpgroup_mma(a, x_bufs.index(s).permute((1, 0)), acc)
            fence_async_shared()
            mbarrier.arrive(empty.index(s), count=1)

    STORE: gl.constexpr = gl.BlockedLayout([1, 1], [32, 1], [1, num_warps], [0, 1])  # lanes along N: coalesced
    out = gl.convert_layout(acc, STORE)
    n_idx = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, STORE))
    m_idx = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, STORE))
    ptrs = out_ptr + pid_k * M * N + gl.expand_dims(m_idx, 0) * N + gl.expand_dims(n_idx, 1)
    mask = gl.expand_dims(n_idx < N, 1) & gl.expand_dims(m_idx < M, 0)
    gl.store(ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)


@gluon.jit
def w4_ws_kernel(
    x_desc,
    w_desc,
    sz_ptr,
    out_ptr,
    M,
    N,
    K,
    GROUP_SIZE: gl.constexpr,
    BLOCK_M: gl.constexpr,
    BLOCK_N: gl.constexpr,
    BLOCK_K: gl.constexpr,
    STAGES: gl.constexpr,
    SPLIT_K: gl.constexpr,
    A_MODE: gl.constexpr,
    num_warps: gl.constexpr,
):
    pid = gl.program_id(0)
    pid_k = gl.program_id(1)
    m_tiles = gl.cdiv(M, BLOCK_M)
    m0 = (pid % m_tiles) * BLOCK_M
    n0 = (pid // m_tiles) * BLOCK_N
    k_steps = K // BLOCK_K
    per_slice = gl.cdiv(k_steps, SPLIT_K)
    step0 = pid_k * per_slice
    steps = gl.minimum(per_slice, k_steps - step0)
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], x_desc.layout)
    w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BLOCK_N, BLOCK_K // 8], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=1)
    groups = K // GROUP_SIZE
    load_args = (x_desc, w_desc, x_bufs, w_bufs, ready, empty, m0, n0, step0, steps, BLOCK_K)
    gl.warp_specialize(
        [
            (
                mma_partition,
                (
                    x_bufs,
                    w_bufs,
                    ready,
                    empty,
                    sz_ptr,
                    out_ptr,
                    M,
                    N,
                    groups,
                    m0,
                    n0,
                    pid_k,
                    step0,
                    steps,
                    GROUP_SIZE,
                    BLOCK_M,
                    BLOCK_N,
                    BLOCK_K,
                    A_MODE,
                    num_warps,
                ),
            ),
            (load_partition, load_args),
        ],
        [1],
        [24],
    )


def w4_ws(x, packed, block_m, block_n, stages, split_k, num_warps, maxnreg, mode):
    """y = x @ W.T for fp16 x [rows, K] and an awqd_w4 weight; split_k K slices (each at least one step)."""
    rows, n, k, block_k = x.shape[0], packed.out_features, packed.in_features, 128
    assert packed.group_size == block_k, "one (scale, zero) per row per step"
    k_steps = k // block_k
    split_k = triton.cdiv(k_steps, triton.cdiv(k_steps, split_k))  # no empty slice
    x_layout = gl.NVMMASharedLayout.get_default_for([block_m, block_k], gl.float16)
    w_layout = gl.NVMMASharedLayout.get_default_for([block_n, block_k // 8], gl.int32)
    x_desc = TensorDescriptor(x, list(x.shape), list(x.stride()), [block_m, block_k], x_layout)
    w = packed.qweight
    w_desc = TensorDescriptor(w, list(w.shape), list(w.stride()), [block_n, block_k // 8], w_layout)
    if split_k == 1:
        target = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    else:
        target = torch.empty((split_k, rows, n), dtype=torch.float32, device=x.device)
    tiles = triton.cdiv(rows, block_m) * triton.cdiv(n, block_n)
    w4_ws_kernel[(tiles, split_k)](
        x_desc,
        w_desc,
        packed.scale_zero,
        target,
        rows,
        n,
        k,
        packed.group_size,
        block_m,
        block_n,
        block_k,
        stages,
        split_k,
        mode,
        num_warps=num_warps,
        maxnreg=maxnreg,
    )
    return target if split_k == 1 else target.sum(0).to(x.dtype)
