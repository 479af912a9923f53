"""Unpacking eight 4-bit weights from one int32 of the awqd_w4 layout into fp16, for both kernels.

Each value comes out as the fp16 number 1024 + q: 0x6400 is 1024.0 in fp16 and its mantissa's unit is 1, so
OR-ing q into the low bits is an exact int->float conversion with no conversion instruction. Callers subtract
1024 + zero (also exact) instead of the zero. On a GPU one PTX lop3 does the mask and the OR for two nibbles at
once (nibbles j and j + 4 sit in the two 16-bit halves under the mask 0x000F000F): 7 integer instructions per
8 weights instead of 24. The Triton interpreter cannot run PTX, so there the same values come from plain shifts.
"""

import triton
import triton.language as tl


@triton.jit
def load_words(w_rows, sz_rows, n_mask, words, words_end, GROUP_SIZE: tl.constexpr):
    """Weight rows' int32 words [rows, len(words)] and each word's (scale, zero) pair; 0 past words_end or n_mask.

    w_rows and sz_rows point at each weight row's start in qweight and scale_zero ([rows, 1] pointer tensors)."""
    mask = n_mask[:, None] & (words < words_end)[None, :]
    w = tl.load(w_rows + words[None, :], mask=mask, other=0)
    sz = tl.load(sz_rows + (words * 8 // GROUP_SIZE)[None, :], mask=mask, other=0)
    return w, sz


@triton.jit
def _nibble_plus_1024(w, j: tl.constexpr):
    return (((w >> (4 * j)) & 0xF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def unpack_plus_1024(w, USE_ASM: tl.constexpr):
    """int32 tensor -> eight fp16 tensors of its shape: 1024 + nibble j, for j = 0..7."""
    if USE_ASM:
        n0, n1, n2, n3, n4, n5, n6, n7 = tl.inline_asm_elementwise(
            # lop3 immLut 0xEA is (a & b) | c; jit functions only read constexpr globals, so the PTX is inline.
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
            [w],
            dtype=(tl.int16,) * 8,
            is_pure=True,
            pack=1,
        )
        return (
            n0.to(tl.float16, bitcast=True),
            n1.to(tl.float16, bitcast=True),
            n2.to(tl.float16, bitcast=True),
            n3.to(tl.float16, bitcast=True),
            n4.to(tl.float16, bitcast=True),
            n5.to(tl.float16, bitcast=True),
            n6.to(tl.float16, bitcast=True),
            n7.to(tl.float16, bitcast=True),
        )
    return (
        _nibble_plus_1024(w, 0),
        _nibble_plus_1024(w, 1),
        _nibble_plus_1024(w, 2),
        _nibble_plus_1024(w, 3),
        _nibble_plus_1024(w, 4),
        _nibble_plus_1024(w, 5),
        _nibble_plus_1024(w, 6),
        _nibble_plus_1024(w, 7),
    )


@triton.jit
def split_scale_zero(sz):
    """The layout's (scale, zero) fp16 pair read as one int32 -> (scale, 1024 + zero) as fp16 tensors."""
    scale = (sz & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
    zero = ((sz >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
    return scale, zero + 1024.0


@triton.jit
def _dequantize_slot(q_plus_1024, zero_plus_1024, scale, dtype: tl.constexpr):
    """(q - z) * s from the 1024-offset values: the subtraction is exact, the product rounds once in fp16."""
    return ((q_plus_1024 - zero_plus_1024) * scale).to(dtype)


@triton.jit
def join_words(v0, v1, v2, v3, v4, v5, v6, v7, ROWS: tl.constexpr, COLUMNS: tl.constexpr):
    """Eight [ROWS, COLUMNS / 8] tensors, one per nibble slot -> [ROWS, COLUMNS] in column order.

    Each join appends a trailing axis of 2, so three levels give [ROWS, words, 2, 2, 2] where slot j lands at
    offset bitreverse3(j) within its word, which is exactly the position the layout put there (NIBBLE_ORDER). The
    columns come out as packed: natural_order puts them in input column order.
    """
    low = tl.join(tl.join(v0, v1), tl.join(v2, v3))
    high = tl.join(tl.join(v4, v5), tl.join(v6, v7))
    return tl.reshape(tl.join(low, high), (ROWS, COLUMNS))


@triton.jit
def natural_order(t, ROWS: tl.constexpr, COLUMNS: tl.constexpr):
    """A tile joined from awqd_w4 words ([ROWS, COLUMNS], columns as packed) -> the same values in input column order.

    Packed position 8q + 4c + 2h + p of each run of 32 holds column 16c + 8h + 2q + p (layout.FRAGMENT_COLUMNS), so
    this only relabels the axis: where each lane holds whole words, as the MMA's 16-bit A fragment does (one word,
    one lane's values over two k16 steps), Triton moves no data."""
    tl.static_assert(COLUMNS % 32 == 0, "a tile holds whole runs of 32 columns")
    t = tl.reshape(t, (ROWS, COLUMNS // 32, 4, 2, 2, 2))  # (row, run, q, c, h, p)
    t = tl.permute(t, (0, 1, 3, 4, 2, 5))  # (row, run, c, h, q, p)
    return tl.reshape(t, (ROWS, COLUMNS))


@triton.jit
def packed_order(t, ROWS: tl.constexpr, COLUMNS: tl.constexpr):
    """natural_order's inverse: a [ROWS, COLUMNS] tile in input column order (activations) -> its columns as packed,
    to meet a weight tile kept as packed."""
    tl.static_assert(COLUMNS % 32 == 0, "a tile holds whole runs of 32 columns")
    t = tl.reshape(t, (ROWS, COLUMNS // 32, 2, 2, 4, 2))  # (row, run, c, h, q, p)
    t = tl.permute(t, (0, 1, 4, 2, 3, 5))  # (row, run, q, c, h, p)
    return tl.reshape(t, (ROWS, COLUMNS))


@triton.jit
def dequantize_tile(w, sz, dtype: tl.constexpr, ROWS: tl.constexpr, COLUMNS: tl.constexpr, USE_ASM: tl.constexpr):
    """A [ROWS, COLUMNS / 8] int32 tile and its per-word (scale, zero) -> W [ROWS, COLUMNS] in `dtype`, its columns
    as packed."""
    scale, zero_plus_1024 = split_scale_zero(sz)
    q0, q1, q2, q3, q4, q5, q6, q7 = unpack_plus_1024(w, USE_ASM)
    return join_words(
        _dequantize_slot(q0, zero_plus_1024, scale, dtype),
        _dequantize_slot(q1, zero_plus_1024, scale, dtype),
        _dequantize_slot(q2, zero_plus_1024, scale, dtype),
        _dequantize_slot(q3, zero_plus_1024, scale, dtype),
        _dequantize_slot(q4, zero_plus_1024, scale, dtype),
        _dequantize_slot(q5, zero_plus_1024, scale, dtype),
        _dequantize_slot(q6, zero_plus_1024, scale, dtype),
        _dequantize_slot(q7, zero_plus_1024, scale, dtype),
        ROWS,
        COLUMNS,
    )
