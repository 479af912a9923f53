"""On a CPU: w4_mma.cu's index mapping, replayed in float64 for one 16-row x 128-column step and 8 tokens, against
the plain product. It follows the kernel's staging (16-byte chunks, swizzled), each lane's A registers (nibble pairs
of run t's words) and B registers (word j of its token's chunks 4t + 2h + p), with the m16n8k16 fragment layouts
from the PTX ISA. It also checks that each quarter warp's 16-byte shared reads meet eight distinct bank groups.

    PYTHONPATH=<repo> python3 emulate.py
"""

import torch

from awqd.kernels.triton.layout import PACK_ORDER
from awqd.quant.packing import pack_int4

CHUNKS = 16  # 16-byte chunks in a staged token row (one step)


def nibble_pair(word: int, i: int) -> tuple[int, int]:
    return (word >> (4 * i)) & 0xF, (word >> (4 * (i + 4))) & 0xF


def swizzle(chunk: int, token: int) -> int:
    return ((chunk >> 3) & 1) << 1 | (token & 1)


def staged(x: torch.Tensor) -> torch.Tensor:
    """The kernel's cp.async loop: chunk c of token n lands at chunk c ^ swizzle(c, n) of row n."""
    out = torch.zeros(x.shape[0], CHUNKS, 8, dtype=x.dtype)
    for n in range(x.shape[0]):
        for c in range(CHUNKS):
            out[n, c ^ swizzle(c, n)] = x[n, 8 * c : 8 * c + 8]
    return out


def b_chunk(g: int, t: int, h: int, p: int) -> int:
    """The staged chunk lane (g, t) reads as B register p of k16 steps 2j + h."""
    return 4 * t + ((2 * h + p) ^ swizzle(4 * t, g))


def emulate(words: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    xs = staged(x)
    c = torch.zeros(16, 8, dtype=torch.float64)
    for kk in range(8):  # k16 step 2 j + h
        j, h = kk // 2, kk % 2
        a = torch.zeros(16, 16, dtype=torch.float64)
        b = torch.zeros(16, 8, dtype=torch.float64)
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            w0, w1 = int(words[g, 4 * t + j]), int(words[g + 8, 4 * t + j])
            a[g, 2 * t : 2 * t + 2] = torch.tensor(nibble_pair(w0, h), dtype=torch.float64)  # a[0]
            a[g + 8, 2 * t : 2 * t + 2] = torch.tensor(nibble_pair(w1, h), dtype=torch.float64)  # a[1]
            a[g, 2 * t + 8 : 2 * t + 10] = torch.tensor(nibble_pair(w0, 2 + h), dtype=torch.float64)  # a[2]
            a[g + 8, 2 * t + 8 : 2 * t + 10] = torch.tensor(nibble_pair(w1, 2 + h), dtype=torch.float64)  # a[3]
            b[2 * t : 2 * t + 2, g] = xs[g, b_chunk(g, t, h, 0), 2 * j : 2 * j + 2]  # b0: k 2t + e
            b[2 * t + 8 : 2 * t + 10, g] = xs[g, b_chunk(g, t, h, 1), 2 * j : 2 * j + 2]  # b1: k 8 + 2t + e
        c += a @ b
    return c


def conflict_free() -> bool:
    """Each quarter warp (lanes 8i..8i+7) of each 16-byte read meets eight distinct bank groups (chunk mod 8; a
    staged row is a whole number of 128-byte lines)."""
    for h in range(2):
        for p in range(2):
            for quarter in range(4):
                lanes = range(8 * quarter, 8 * quarter + 8)
                groups = {(g * CHUNKS + b_chunk(g, t, h, p)) % 8 for g, t in ((lane >> 2, lane & 3) for lane in lanes)}
                if len(groups) != 8:
                    return False
    return True


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (16, 128), dtype=torch.int32, generator=generator)
    x = torch.randn(8, 128, dtype=torch.float64, generator=generator)
    words = pack_int4(q, PACK_ORDER)
    error = (emulate(words, x) - q.double() @ x.T).abs().max().item()
    print(f"max |emulated - q @ x.T| = {error:.3g}; quarter warps conflict-free: {conflict_free()}")
    assert error < 1e-9 and conflict_free()


if __name__ == "__main__":
    main()
