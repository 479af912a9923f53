"""Experiment: dequantize + cuBLAS in row chunks small enough that the fp16 chunk stays in L2 between the
dequantize and the matmul, against the whole-weight form and fp16 cuBLAS. ms per Llama-2-7B layer, graph replay."""

import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, "bench")
from awqd.kernels.measure import random_layer_weights, rotation_copies, time_dense_baseline, time_passes
from awqd.kernels.triton.dequant import DequantConfig, dequantize
from awqd.kernels.triton.layout import AwqdW4, pack_awqd_w4

SHAPES = ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008))
device = torch.device("cuda")
weights = random_layer_weights(SHAPES, 128, device, rotation_copies(SHAPES, device))
packed = [[pack_awqd_w4(w, device) for w in copy] for copy in weights]
tile = DequantConfig(*[int(v) for v in sys.argv[1:4]]) if len(sys.argv) > 3 else DequantConfig()
print("L2", torch.cuda.get_device_properties(device).L2_cache_size >> 20, "MiB; tile", tile)


def rows_of(p: AwqdW4, a: int, b: int) -> AwqdW4:
    return AwqdW4(p.qweight[a:b], p.scale_zero[a:b], None, p.in_features, b - a, p.group_size)


def chunked(x, p: AwqdW4, chunk_bytes: int):
    rows = max(256, chunk_bytes // (2 * p.in_features) // 256 * 256)
    if rows >= p.out_features:
        return F.linear(x, dequantize(p, x.dtype, tile))
    parts = [
        F.linear(x, dequantize(rows_of(p, a, min(a + rows, p.out_features)), x.dtype, tile))
        for a in range(0, p.out_features, rows)
    ]
    return torch.cat(parts, dim=1)


for tokens in (256, 512, 2048):
    xs = [torch.randn(tokens, k, device=device).half() for _, k in SHAPES]
    # correctness of the chunked form against the whole form
    worst = max(
        (
            (chunked(x, p, 8 << 20).float() - F.linear(x, dequantize(p, x.dtype, tile)).float()).norm()
            / F.linear(x, dequantize(p, x.dtype, tile)).float().norm()
        ).item()
        for x, p in zip(xs, packed[0], strict=True)
    )
    line = [f"tokens {tokens}: fp16 {time_dense_baseline(SHAPES, 128, device, tokens, 3, 20).median_ms:.4f}"]
    for mib in (0, 8, 16, 24, 32):

        def make(copy, mib=mib, xs=xs):
            def run():
                for x, p in zip(xs, copy, strict=True):
                    chunked(x, p, mib << 20) if mib else F.linear(x, dequantize(p, x.dtype, tile))

            return run

        ms = time_passes(f"chunk {mib}", [make(c) for c in packed], device, 3, 20).median_ms
        line.append(f"{'whole' if not mib else f'{mib} MiB chunks'} {ms:.4f}")
    print(", ".join(line), f"(chunked vs whole relative diff {worst:.2g})", flush=True)
