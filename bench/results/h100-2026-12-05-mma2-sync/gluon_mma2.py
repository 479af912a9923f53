"""Experiment (issue 15): the skinny W4A16 product on mma.sync (MMAv2) instead of wgmma, in Gluon for sm_90.

On wgmma the warpgroup that unpacks a step's weights waits for that step's MMAs, and keeping a register operand in
flight across the next unpack is unsafe in Triton 3.6 (../h200-2026-12-05-gluon-warp-specialized). mma.sync takes
both operands from registers and returns like any instruction, so ptxas can interleave one step's MMAs with the next
step's unpack within each warp, with no wait to place by hand. Its peak is lower than wgmma's, and at 16-128 tokens
the skinny kernel's tensor pipes are far from either peak (../h100-2026-12-05-ncu-l2).

out.T [N, M] = W [N, K] @ x.T, W in the awqd_w4 words regrouped by tile_words, scale first ((q - z) * s in fp16, fp32
accumulators). Each K step is one run of 32 columns: one int32 word per lane and row pair, which is the m16n8k16 A
fragment over two k16 steps (layout.FRAGMENT_COLUMNS). A loader warp streams stages of SPS steps (the words
[SPS * BLOCK_N, 4] and the activations SPS x [BLOCK_M, 32]) through STAGES shared-memory buffers with TMA. Each warp
of the consumer partition owns 16-row strips of the weights: it reads its words into the A fragment (asserted
trivial at compile time) and the activations into B fragments, releases the stage after its last step, unpacks and
multiplies. The steps of one quantization group share one (scale, zero) load, made a group ahead. Split-K slices
are whole groups; their fp32 partials are added by the host. fp16 only, no bias. Offline SASS counts and
measurements: README.md.
"""

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

BLOCK_K = 32  # one run of the layout's fragment order per step: one int32 word per lane and row pair


@gluon.constexpr_function
def word_layout(block_n, num_warps):
    """[BLOCK_N, 4] int32 words as the MMA A fragment holds them: lane 4r + q of warp w holds word q of rows
    16w + r and 16w + r + 8, repeated every 16 * num_warps rows."""
    registers = [[8, 0]]
    row = 16 * num_warps
    while row < block_n:
        registers.append([row, 0])
        row *= 2
    warps = []
    row = 16
    while row < 16 * num_warps:
        warps.append([row, 0])
        row *= 2
    return gl.DistributedLinearLayout(registers, [[0, 1], [0, 2], [1, 0], [2, 0], [4, 0]], warps, [], [block_n, 4])


@gluon.jit
def group_constants(sz):
    """A row's packed (scale, zero) word -> (z + 1024, z + 1024) and (s, s) as fp16 pairs, once per group."""
    return gl.inline_asm_elementwise(
        (
            "{\n"
            ".reg .b16 s, z, c;\n"
            "mov.b32 {s, z}, $2;\n"
            "mov.b16 c, 0x6400;\n"
            "add.rn.f16 z, z, c;\n"
            "mov.b32 $0, {z, z};\n"
            "mov.b32 $1, {s, s};\n"
            "}\n"
        ),
        "=r,=r,r",
        [sz],
        dtype=(gl.int32, gl.int32),
        is_pure=True,
        pack=1,
    )


@gluon.jit
def dequantize(words, zz, ss, BLOCK_N: gl.constexpr):
    """Words [BLOCK_N, 4] -> (q - z) * s [BLOCK_N, 32] in K order. The fp16 pairs are formed inside the asm, as the
    MMA fragment holds them (two K-adjacent weights of one row): left to LLVM, the second step of a group paired
    two rows' scales in one register and shuffled every product back with PRMT."""
    zz = gl.broadcast(gl.expand_dims(zz, 1), words)[0]
    ss = gl.broadcast(gl.expand_dims(ss, 1), words)[0]
    h0, h1, h2, h3 = gl.inline_asm_elementwise(
        (
            "{\n"
            ".reg .b32 t0, t1, t2, t3;\n"
            "shr.u32 t1, $4, 4;\n"
            "shr.u32 t2, $4, 8;\n"
            "shr.u32 t3, $4, 12;\n"
            "lop3.b32 t0, $4, 0x000F000F, 0x64006400, 0xea;\n"
            "lop3.b32 t1, t1, 0x000F000F, 0x64006400, 0xea;\n"
            "lop3.b32 t2, t2, 0x000F000F, 0x64006400, 0xea;\n"
            "lop3.b32 t3, t3, 0x000F000F, 0x64006400, 0xea;\n"
            "sub.rn.f16x2 t0, t0, $5;\n"
            "sub.rn.f16x2 t1, t1, $5;\n"
            "sub.rn.f16x2 t2, t2, $5;\n"
            "sub.rn.f16x2 t3, t3, $5;\n"
            "mul.rn.f16x2 $0, t0, $6;\n"
            "mul.rn.f16x2 $1, t1, $6;\n"
            "mul.rn.f16x2 $2, t2, $6;\n"
            "mul.rn.f16x2 $3, t3, $6;\n"
            "}\n"
        ),
        "=r,=r,=r,=r,r,r,r",
        [words, zz, ss],
        dtype=(gl.int32,) * 4,
        is_pure=True,
        pack=1,
    )
    v0 = h0.to(gl.int16).to(gl.float16, bitcast=True)
    v1 = h1.to(gl.int16).to(gl.float16, bitcast=True)
    v2 = h2.to(gl.int16).to(gl.float16, bitcast=True)
    v3 = h3.to(gl.int16).to(gl.float16, bitcast=True)
    v4 = (h0 >> 16).to(gl.int16).to(gl.float16, bitcast=True)
    v5 = (h1 >> 16).to(gl.int16).to(gl.float16, bitcast=True)
    v6 = (h2 >> 16).to(gl.int16).to(gl.float16, bitcast=True)
    v7 = (h3 >> 16).to(gl.int16).to(gl.float16, bitcast=True)
    low = gl.join(gl.join(v0, v1), gl.join(v2, v3))
    high = gl.join(gl.join(v4, v5), gl.join(v6, v7))
    t = gl.reshape(gl.join(low, high), [BLOCK_N, 1, 4, 2, 2, 2])  # (row, run, q, c, h, p)
    t = gl.permute(t, [0, 1, 3, 4, 2, 5])  # (row, run, c, h, q, p): input column order
    return gl.reshape(t, [BLOCK_N, 32])


@gluon.jit
def load_partition(x_desc, w_desc, x_bufs, w_bufs, ready, empty, m0, n0, step0, steps, k_steps):
    """One stage holds SPS steps: the program's words for them, SPS * BLOCK_N * 16 bytes contiguous in the tiled
    layout (tile_words), in one copy, and the activations, one copy a step."""
    STAGES: gl.constexpr = ready.type.shape[0]
    SPS: gl.constexpr = x_bufs.type.shape[0] // STAGES
    LINES: gl.constexpr = w_bufs.type.shape[1] // SPS  # 256-byte lines a step: BLOCK_N / 16
    for i in range(steps // SPS):
        s = i % STAGES
        mbarrier.wait(empty.index(s), ((i // STAGES) & 1) ^ 1)
        step = step0 + i * SPS
        mbarrier.expect(ready.index(s), SPS * x_desc.block_type.nbytes + w_desc.block_type.nbytes)
        line = ((n0 // (LINES * 16)) * k_steps + step) * LINES
        tma.async_copy_global_to_shared(w_desc, [line, 0], ready.index(s), w_bufs.index(s))
        for j in gl.static_range(SPS):
            tma.async_copy_global_to_shared(x_desc, [m0, (step + j) * 32], ready.index(s), x_bufs.index(s * SPS + j))


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
    num_warps: gl.constexpr,
):
    STAGES: gl.constexpr = ready.type.shape[0]
    SPS: gl.constexpr = x_bufs.type.shape[0] // STAGES
    WL: gl.constexpr = word_layout(BLOCK_N, num_warps)
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
    A_REGS: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    B_REGS: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
    SUB: gl.constexpr = GROUP_SIZE // 32  # steps per quantization group: one (scale, zero) load serves them all
    gl.static_assert(SUB % SPS == 0, "a stage's steps lie in one group")
    rows = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, WL))
    row_mask = rows < N
    sz_rows = sz_ptr + rows * groups
    acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, MMA)
    # Not software-pipelined: mma.sync blocks only an instruction that reads its accumulator, so each warp goes on
    # to the next step's loads and unpack while its MMAs run. Carrying operands across iterations instead made
    # ptxas move every operand register once a step (PRMT and IMAD.MOV copies), more than doubling the loop.
    group0 = step0 // SUB
    last = steps // SUB - 1
    sz_next = gl.load(sz_rows + group0, mask=row_mask, other=0)
    for g in range(steps // SUB):
        # One group ahead: a global load's latency is about a whole group's work.
        zz, ss = group_constants(sz_next)
        sz_next = gl.load(sz_rows + group0 + gl.minimum(g + 1, last), mask=row_mask, other=0)
        for j in gl.static_range(SUB):
            stage = (g * SUB + j) // SPS
            s = stage % STAGES
            if j % SPS == 0:  # one wait a stage: its steps' loads are free to move ahead of each other
                mbarrier.wait(ready.index(s), (stage // STAGES) & 1)
            words = w_bufs.index(s).reshape([SPS * BLOCK_N, 4]).slice((j % SPS) * BLOCK_N, BLOCK_N).load(WL)
            x = x_bufs.index(s * SPS + j % SPS).permute((1, 0)).load(B_REGS)
            if j % SPS == SPS - 1:
                fence_async_shared()
                mbarrier.arrive(empty.index(s), count=1)
            a = gl.convert_layout(dequantize(words, zz, ss, BLOCK_N), A_REGS, assert_trivial=True)
            acc = mma_v2(a, x, acc)

    STORE: gl.constexpr = gl.BlockedLayout([1, 1], [32, 1], [1, num_warps], [0, 1])  # lanes along N: coalesced
    out = gl.convert_layout(acc, STORE)
    n_idx = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, STORE))
    m_idx = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, STORE))
    ptrs = out_ptr + pid_k * M * N + gl.expand_dims(m_idx, 0) * N + gl.expand_dims(n_idx, 1)
    mask = gl.expand_dims(n_idx < N, 1) & gl.expand_dims(m_idx < M, 0)
    gl.store(ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)


@gluon.jit
def w4_mma2_kernel(
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
    STAGES: gl.constexpr,
    SPS: gl.constexpr,
    SPLIT_K: gl.constexpr,
    num_warps: gl.constexpr,
):
    """STAGES stages of SPS 32-column steps each; a loader warp beside num_warps consumer warps."""
    pid = gl.program_id(0)
    pid_k = gl.program_id(1)
    m_tiles = gl.cdiv(M, BLOCK_M)
    m0 = (pid % m_tiles) * BLOCK_M
    n0 = (pid // m_tiles) * BLOCK_N
    groups = K // GROUP_SIZE
    per_slice = gl.cdiv(groups, SPLIT_K)  # K slices of whole groups
    step0 = pid_k * per_slice * (GROUP_SIZE // 32)
    steps = gl.minimum(per_slice, groups - pid_k * per_slice) * (GROUP_SIZE // 32)
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES * SPS, BLOCK_M, 32], x_desc.layout)
    w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, SPS * BLOCK_N // 16, 64], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=1)
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
                    num_warps,
                ),
            ),
            (load_partition, (x_desc, w_desc, x_bufs, w_bufs, ready, empty, m0, n0, step0, steps, K // 32)),
        ],
        [1],
        [24],
    )


def tile_words(packed, block_n: int) -> torch.Tensor:
    """The awqd_w4 words regrouped so that one step's stage is contiguous: [N / block_n, K / 32, block_n, 4] (rows
    padded with zeros to whole tiles), seen as lines of 64 words for TMA. Read as [block_n, 4] rows of 16 bytes, the
    stages cost L2 two sectors a line's 32 bytes; the row-major words cost it a 32-byte sector per 16 bytes read."""
    n, words = packed.qweight.shape
    padded = torch.zeros(triton.cdiv(n, block_n) * block_n, words, dtype=torch.int32, device=packed.qweight.device)
    padded[:n] = packed.qweight
    tiled = padded.view(-1, block_n, words // 4, 4).permute(0, 2, 1, 3).contiguous()
    return tiled.view(-1, 64)


def w4_mma2(x, packed, words, block_m, block_n, stages, steps_per_stage, split_k, num_warps, maxnreg):
    """y = x @ W.T for fp16 x [rows, K] and an awqd_w4 weight whose words are tile_words(packed, block_n), K split
    into split_k slices of whole groups."""
    rows, n, k = x.shape[0], packed.out_features, packed.in_features
    groups = k // packed.group_size
    split_k = triton.cdiv(groups, triton.cdiv(groups, split_k))  # no empty slice
    x_layout = gl.NVMMASharedLayout.get_default_for([block_m, BLOCK_K], gl.float16)
    w_layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)  # row-major: 16-byte rows
    x_desc = TensorDescriptor(x, list(x.shape), list(x.stride()), [block_m, BLOCK_K], x_layout)
    w_box = [steps_per_stage * block_n // 16, 64]
    w_desc = TensorDescriptor(words, list(words.shape), list(words.stride()), w_box, w_layout)
    if split_k == 1:
        target = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    else:
        target = torch.empty((split_k, rows, n), dtype=torch.float32, device=x.device)
    tiles = triton.cdiv(rows, block_m) * triton.cdiv(n, block_n)
    w4_mma2_kernel[(tiles, split_k)](
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
        stages,
        steps_per_stage,
        split_k,
        num_warps=num_warps,
        maxnreg=maxnreg,
    )
    return target if split_k == 1 else target.sum(0).to(x.dtype)
