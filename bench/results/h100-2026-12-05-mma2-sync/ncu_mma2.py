"""One launch of the mma.sync kernel's fastest tile per bucket on gate_up (22016 x 4096), for Nsight Compute.

ncu --clock-control none -k regex:w4_mma2 --launch-skip 2 --launch-count 1 ... python3 ncu_mma2.py ROWS
"""

import sys

import torch
from mma2_check import DEVICE, launch, tiles

from awqd.kernels.measure import random_weight
from awqd.kernels.triton.layout import pack_awqd_w4

rows = int(sys.argv[1])
tile = next(
    t for t in tiles(rows) if (t["block_n"], t["warps"], t["sps"], t["per_sm"]) == (128, 4, int(sys.argv[2]), 1)
)
generator = torch.Generator(device=DEVICE).manual_seed(1)
packed = pack_awqd_w4(random_weight(22016, 4096, 128, DEVICE, generator, bias=False), DEVICE)
x = torch.randn(rows, 4096, device=DEVICE, generator=generator).half()
for _ in range(3):
    launch(x, packed, tile)
torch.cuda.synchronize()
print(tile)
