"""One launch of a w4_mma kernel on one Llama-2-7B linear, for Nsight Compute.

ncu --clock-control none -k regex:w4mma --launch-skip 2 --launch-count 1 ... \
    python3 ncu_w4_mma.py NAME SPLITS TILES ROWS N K
"""

import sys

import torch
from w4_mma import Config, Kernels, all_configs

from awqd.kernels.measure import random_weight
from awqd.kernels.triton.layout import pack_awqd_w4

DEVICE = torch.device("cuda")
name, splits, tiles, rows, n, k = sys.argv[1], *map(int, sys.argv[2:])
config: Config = next(c for c in all_configs() if c.name == name)
kernels = Kernels(DEVICE)
generator = torch.Generator(device=DEVICE).manual_seed(1)
packed = pack_awqd_w4(random_weight(n, k, 128, DEVICE, generator, bias=False), DEVICE)
x = torch.randn(rows, k, device=DEVICE, generator=generator).half()
for _ in range(3):
    kernels(x, packed, config, splits, tiles)
torch.cuda.synchronize()
print(config, splits, tiles)
