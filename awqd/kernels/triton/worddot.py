"""The GEMV's inner product: one int32 word of the awqd_w4 layout (8 weights) against its 8 activations.

word_dot returns sum_j (q_j - z) x_j in fp32; the caller multiplies by the group's scale. The weights are never
put back in column order: unpack.py's lop3 leaves nibbles j and j + 4 in the two halves of one register, and the
layout's NIBBLE_ORDER puts columns 2p and 2p + 1 there (slots (0, 4), (2, 6), (1, 5), (3, 7) hold the column
pairs 0, 1, 2, 3), so each register meets one int32 of two consecutive activations, loaded as they lie in memory.

fp16 activations (USE_ASM): per word 3 shifts and 4 lop3 (1024 + q, two per register), 4 sub.f16x2 of 1024 + z
(exact: |q - z| <= 15), 4 fma.f16x2 with the activation pairs, one add of the two halves and one conversion to
fp32: 17 instructions for 8 weights. A word's 8 products are summed in fp16 (a relative error of a few 1e-4 on
a word's sum, averaging out over K); words and groups are summed in fp32 by the caller.
bf16 activations and the interpreter: the same pairing in plain Triton. bf16 sums in fp32 (bf16 products would
lose 3 bits); the interpreter's fp16 path rounds each product and sum in fp16, as the GPU path does.
"""

import triton
import triton.language as tl

from awqd.kernels.triton.unpack import unpack_plus_1024


@triton.jit
def zero_pair(zero_plus_1024):
    """fp16 1024 + z -> int32 holding it in both halves: the operand of sub.f16x2."""
    bits = zero_plus_1024.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return bits | (bits << 16)


@triton.jit
def _low_fp16(pair):
    return (pair & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def _high_fp16(pair):
    return ((pair >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def _fp16_pair_dot(q_low, q_high, zero, x_pair, acc_low, acc_high):
    """The interpreter's fma.f16x2: each half's (q - z) x added to its fp16 running sum."""
    return acc_low + (q_low - zero) * _low_fp16(x_pair), acc_high + (q_high - zero) * _high_fp16(x_pair)


@triton.jit
def _fp32_pair_dot(q_low, q_high, zero, x_pair, acc):
    """bf16 activations: (q - z) x for the pair's two columns, summed in fp32 (bf16 -> fp32 is a shift)."""
    x_low = (x_pair << 16).to(tl.float32, bitcast=True)
    x_high = (x_pair & -65536).to(tl.float32, bitcast=True)
    return acc + (q_low - zero).to(tl.float32) * x_low + (q_high - zero).to(tl.float32) * x_high


@triton.jit
def word_dot(w, zero_plus_1024, x01, x23, x45, x67, IS_FP16: tl.constexpr, USE_ASM: tl.constexpr):
    """sum_j (q_j - z) x_j in fp32 for int32 words w; zero_plus_1024 is fp16 1024 + z; x01..x67 are int32
    tensors holding activation columns (0, 1), (2, 3), (4, 5), (6, 7) of each word, broadcastable to w."""
    if IS_FP16 and USE_ASM:
        return tl.inline_asm_elementwise(
            # lop3 immLut 0xEA is (a & b) | c. Registers: h0 = slots (0, 4) = columns (0, 1), h1 = (1, 5) = (4, 5),
            # h2 = (2, 6) = (2, 3), h3 = (3, 7) = (6, 7). jit functions only read constexpr globals: PTX inline.
            (
                "{\n"
                ".reg .b32 w4, w8, w12, h0, h1, h2, h3, acc;\n"
                ".reg .f16 lo, hi, sum;\n"
                "shr.u32 w4, $1, 4;\n"
                "shr.u32 w8, $1, 8;\n"
                "shr.u32 w12, $1, 12;\n"
                "lop3.b32 h0, $1, 0x000F000F, 0x64006400, 0xea;\n"
                "lop3.b32 h1, w4, 0x000F000F, 0x64006400, 0xea;\n"
                "lop3.b32 h2, w8, 0x000F000F, 0x64006400, 0xea;\n"
                "lop3.b32 h3, w12, 0x000F000F, 0x64006400, 0xea;\n"
                "sub.f16x2 h0, h0, $2;\n"
                "sub.f16x2 h1, h1, $2;\n"
                "sub.f16x2 h2, h2, $2;\n"
                "sub.f16x2 h3, h3, $2;\n"
                "mul.rn.f16x2 acc, h0, $3;\n"
                "fma.rn.f16x2 acc, h2, $4, acc;\n"
                "fma.rn.f16x2 acc, h1, $5, acc;\n"
                "fma.rn.f16x2 acc, h3, $6, acc;\n"
                "mov.b32 {lo, hi}, acc;\n"
                "add.rn.f16 sum, lo, hi;\n"
                "cvt.f32.f16 $0, sum;\n"
                "}\n"
            ),
            "=r,r,r,r,r,r,r",
            [w, zero_pair(zero_plus_1024), x01, x23, x45, x67],
            dtype=tl.float32,
            is_pure=True,
            pack=1,
        )
    q0, q1, q2, q3, q4, q5, q6, q7 = unpack_plus_1024(w, USE_ASM)
    if IS_FP16:
        low, high = _fp16_pair_dot(q0, q4, zero_plus_1024, x01, 0.0, 0.0)
        low, high = _fp16_pair_dot(q2, q6, zero_plus_1024, x23, low, high)
        low, high = _fp16_pair_dot(q1, q5, zero_plus_1024, x45, low, high)
        low, high = _fp16_pair_dot(q3, q7, zero_plus_1024, x67, low, high)
        return (low + high).to(tl.float32)
    acc = _fp32_pair_dot(q0, q4, zero_plus_1024, x01, 0.0)
    acc = _fp32_pair_dot(q2, q6, zero_plus_1024, x23, acc)
    acc = _fp32_pair_dot(q1, q5, zero_plus_1024, x45, acc)
    return _fp32_pair_dot(q3, q7, zero_plus_1024, x67, acc)
