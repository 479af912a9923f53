"""The GEMV's inner product: int32 words of the awqd_w4 layout (8 weights each) against their 8 activations.

word_dot returns s * sum_j (q_j - z) x_j in fp32 per word. The weights are never put back in column order: a lop3
(unpack.py) leaves two nibbles in the two fp16 halves of one register, and the layout's NIBBLE_ORDER puts a word's
columns 2p and 2p + 1 in nibbles (0, 4), (2, 6), (1, 5), (3, 7) for p = 0, 2, 1, 3 (the bits 0-3, 8-11, 4-7 and
12-15 of each half), so each register meets one int32 of two consecutive activations, loaded as they lie in memory
(the word's four pairs are 4 pairs apart: layout.FRAGMENT_COLUMNS).

fp16 activations on a GPU, per word: 1 shift, 4 lop3 (the nibbles at bits 4-7 and 12-15 are masked in place, which
gives 1024 + 16 q: exact, the fp16 unit there is 1), 4 fma.f16x2 that scale those by 1/16 or 1/256 and subtract
the zero scaled alike, each giving (q - z) / 16 exactly, 4 fma.f16x2 with the activation pairs as loaded, one add
of the two halves, one conversion to fp32 and one fp32 multiply-add with the group's scale: 16 instructions for 8
weights, and none per activation (pre-scaling the activations instead cost one mul.f16x2 per pair that a thread
holds, 1.4 instructions per word at the default tile). Every product is (q - z) x / 16: a word's fp16 half-sums
stay below |x| * 4 (no overflow for any finite fp16 x), and its relative error is a few 1e-4, averaging out over K.
Words and groups are summed in fp32. The 16 comes back in the scale.
bf16 activations (bf16 products would lose 3 bits) and the interpreter (which cannot run PTX) use plain Triton:
bf16 sums in fp32; the interpreter's fp16 path does the GPU path's fp16 arithmetic, product by product.
"""

import triton
import triton.language as tl

from awqd.kernels.triton.unpack import split_scale_zero, unpack_plus_1024

NIBBLE_UNIT = tl.constexpr(0.0625)  # (1024 + q) / 16 - (1024 + z) / 16 = (q - z) / 16, exact in fp16


@triton.jit
def _pair_of(half):
    """fp16 tensor -> int32 holding it in both halves: an f16x2 operand."""
    bits = half.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return bits | (bits << 16)


@triton.jit
def _low_fp16(pair):
    return (pair & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def _high_fp16(pair):
    return ((pair >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def _fp16_pair_dot(q_low, q_high, zero_plus_1024, x_pair, acc_low, acc_high):
    """The interpreter's fma.f16x2s: each half's (q - z) / 16 (exact) times x, added to its fp16 running sum."""
    acc_low += (q_low - zero_plus_1024) * NIBBLE_UNIT * _low_fp16(x_pair)
    return acc_low, acc_high + (q_high - zero_plus_1024) * NIBBLE_UNIT * _high_fp16(x_pair)


@triton.jit
def _fp32_pair_dot(q_low, q_high, zero, x_pair, acc):
    """bf16 activations: (q - z) x for the pair's two columns, summed in fp32 (bf16 -> fp32 is a shift)."""
    x_low = (x_pair << 16).to(tl.float32, bitcast=True)
    x_high = (x_pair & -65536).to(tl.float32, bitcast=True)
    return acc + (q_low - zero).to(tl.float32) * x_low + (q_high - zero).to(tl.float32) * x_high


@triton.jit
def word_dot(w, sz, x01, x23, x45, x67, IS_FP16: tl.constexpr, USE_ASM: tl.constexpr):
    """s * sum_j (q_j - z) x_j in fp32 for int32 words w and their groups' (scale, zero) words sz; x01..x67 are int32
    tensors holding activation columns (0, 1), (2, 3), (4, 5), (6, 7) of each word. All broadcast to w's shape."""
    scale, zero_plus_1024 = split_scale_zero(sz)
    if IS_FP16 and USE_ASM:
        word_sum = tl.inline_asm_elementwise(
            # lop3 immLut 0xEA is (a & b) | c. h0 = nibbles (0, 4) = columns (0, 1), h1 = (1, 5) x16 = (4, 5),
            # h2 = (2, 6) = (2, 3), h3 = (3, 7) x16 = (6, 7). Each fma is exact: (1024 + q) / 16 - (1024 + z) / 16
            # and (1024 + 16 q) / 256 - (1024 + 16 z) / 256 are both (q - z) / 16.
            (
                "{\n"
                ".reg .b32 w8, h0, h1, h2, h3, acc, u4, u8;\n"
                ".reg .f16 lo, hi, sum;\n"
                "mov.b32 u4, 0x2C002C00;\n"
                "mov.b32 u8, 0x1C001C00;\n"
                "shr.u32 w8, $1, 8;\n"
                "lop3.b32 h0, $1, 0x000F000F, 0x64006400, 0xea;\n"
                "lop3.b32 h1, $1, 0x00F000F0, 0x64006400, 0xea;\n"
                "lop3.b32 h2, w8, 0x000F000F, 0x64006400, 0xea;\n"
                "lop3.b32 h3, w8, 0x00F000F0, 0x64006400, 0xea;\n"
                "fma.rn.f16x2 h0, h0, u4, $2;\n"
                "fma.rn.f16x2 h1, h1, u8, $3;\n"
                "fma.rn.f16x2 h2, h2, u4, $2;\n"
                "fma.rn.f16x2 h3, h3, u8, $3;\n"
                "mul.rn.f16x2 acc, h0, $4;\n"
                "fma.rn.f16x2 acc, h2, $5, acc;\n"
                "fma.rn.f16x2 acc, h1, $6, acc;\n"
                "fma.rn.f16x2 acc, h3, $7, acc;\n"
                "mov.b32 {lo, hi}, acc;\n"
                "add.rn.f16 sum, lo, hi;\n"
                "cvt.f32.f16 $0, sum;\n"
                "}\n"
            ),
            "=r,r,r,r,r,r,r,r",
            [
                w,
                _pair_of(zero_plus_1024 * -NIBBLE_UNIT),  # -(1024 + z) / 16
                _pair_of(60.0 - zero_plus_1024 * NIBBLE_UNIT),  # -(1024 + 16 z) / 256, exact
                x01,
                x23,
                x45,
                x67,
            ],
            dtype=tl.float32,
            is_pure=True,
            pack=1,
        )
        return word_sum * (scale.to(tl.float32) * 16.0)
    q0, q1, q2, q3, q4, q5, q6, q7 = unpack_plus_1024(w, USE_ASM)
    if IS_FP16:
        low, high = _fp16_pair_dot(q0, q4, zero_plus_1024, x01, 0.0, 0.0)
        low, high = _fp16_pair_dot(q2, q6, zero_plus_1024, x23, low, high)
        low, high = _fp16_pair_dot(q1, q5, zero_plus_1024, x45, low, high)
        low, high = _fp16_pair_dot(q3, q7, zero_plus_1024, x67, low, high)
        return (low + high).to(tl.float32) * (scale.to(tl.float32) * 16.0)
    acc = _fp32_pair_dot(q0, q4, zero_plus_1024, x01, 0.0)
    acc = _fp32_pair_dot(q2, q6, zero_plus_1024, x23, acc)
    acc = _fp32_pair_dot(q1, q5, zero_plus_1024, x45, acc)
    return _fp32_pair_dot(q3, q7, zero_plus_1024, x67, acc) * scale.to(tl.float32)
