"""On a CPU: w4_mma.cu's index mapping, replayed in float64 for one 16-row x 128-column step and 8 tokens, against
the plain product. It follows the kernel's staging (the permuted, unswizzled activation chunks), each lane's A
registers (nibble pairs of run t's words) and ldmatrix's B fragments, with the m16n8k16 fragment layouts from the
PTX ISA.

    PYTHONPATH=<repo> python3 emulate.py
"""

import torch

from awqd.kernels.triton.layout import PACK_ORDER
from awqd.quant.packing import pack_int4


def nibble_pair(word: int, i: int) -> tuple[int, int]:
    return (word >> (4 * i)) & 0xF, (word >> (4 * (i + 4))) & 0xF


def staged(x: torch.Tensor) -> torch.Tensor:
    """The kernel's staging loop: source chunk (run, hp) word j goes to chunk 4 j + hp, slot run."""
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for source in range(16):
            run, hp = (source >> 2) & 3, source & 3
            for j in range(4):
                to, source_column = (4 * j + hp) * 8 + run * 2, source * 8 + 2 * j
                out[n, to : to + 2] = x[n, source_column : source_column + 2]
    return out


def emulate(words: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    xp = staged(x)
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
            # ldmatrix.x4: matrix m is chunk 2 kk + m (m = 0, 1 here); the lane gets row g, elements 2t, 2t + 1
            b[2 * t : 2 * t + 2, g] = xp[g, 16 * kk + 2 * t : 16 * kk + 2 * t + 2]
            b[2 * t + 8 : 2 * t + 10, g] = xp[g, 16 * kk + 8 + 2 * t : 16 * kk + 8 + 2 * t + 2]
        c += a @ b
    return c


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (16, 128), dtype=torch.int32, generator=generator)
    x = torch.randn(8, 128, dtype=torch.float64, generator=generator)
    words = pack_int4(q, PACK_ORDER)
    error = (emulate(words, x) - q.double() @ x.T).abs().max().item()
    print(f"max |emulated - q @ x.T| = {error:.3g}")
    assert error < 1e-9


if __name__ == "__main__":
    main()
