"""The least time one launch needs just to read each linear's weights: the floor under any GEMV that reads them once.

    PYTHONPATH=. python3 bench/read_floor.py --out DIR [--device cuda:0]
A dry run on a CPU (tiny shapes, the Triton interpreter):
    TRITON_INTERPRET=1 PYTHONPATH=. python3 bench/read_floor.py --out /tmp/floor --device cpu

For each of the engine's four Llama-2-7B linears (W4 g128 with a zero point), a Triton kernel reads as many bytes
as awqd's GEMV reads (the awqd_w4 qweight and scale_zero) and keeps only one max per program, so nothing but the
reads reaches DRAM. It is tuned over block sizes and warps. Beside it, in the same run, awqd's GEMV at 1 token on
each linear's fastest tile of its tuning space. A timed pass (CUDA-graph replay) launches the kernel on every copy
of the linear back to back, with enough copies to read past L2, and the time is per launch: so neither the timing
events nor L2 hits enter it. Then the whole layer, the four linears in order, copy after copy, each on its fastest.
The kernel reports' roofline assumes the steady-state copy bandwidth; this asks what one launch of each size can
reach, its ramp-up and tail included. Writes DIR/read-floor.json and .md.
"""

import argparse
import itertools
import json
from functools import partial

import torch
import triton
import triton.language as tl
from graph_timing import parse_out_and_device

from awqd.kernels.measure import measure_copy_bandwidth_gbps, per_launch_ms, random_layer_weights, rotation_copies
from awqd.kernels.triton.gemv import gemv, tuning_space
from awqd.kernels.triton.layout import pack_awqd_w4

SHAPES = {
    "cuda": ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)),
    "cpu": ((96, 256), (64, 512)),
}
GROUP_SIZE = {"cuda": 128, "cpu": 64}
READ_CONFIGS = {"cuda": tuple(itertools.product((1024, 2048, 4096, 8192), (4, 8))), "cpu": ((256, 4),)}
REPETITIONS = (5, 50)  # (warm-up, timed) passes


@triton.jit
def read_kernel(src, out, n_words, BLOCK: tl.constexpr):
    """Program p reads words [p * BLOCK, (p + 1) * BLOCK) and stores their max: the loads cannot be dropped."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    words = tl.load(src + offsets, mask=offsets < n_words, other=0)
    tl.store(out + tl.program_id(0), tl.max(words, axis=0))


def read(src: torch.Tensor, out: torch.Tensor, block: int, warps: int) -> None:
    read_kernel[(triton.cdiv(src.numel(), block),)](src, out, src.numel(), BLOCK=block, num_warps=warps)


def fastest(label: str, launches_by_config: dict, device: torch.device) -> tuple[str, float, dict]:
    timings = {
        config: per_launch_ms(label, launches, device, REPETITIONS) for config, launches in launches_by_config.items()
    }
    best = min(timings, key=timings.get)
    return best, timings[best], timings


def main() -> None:
    _, out, device = parse_out_and_device(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    shapes = SHAPES[device.type]
    rows, layer_reads, layer_gemvs = [], [], []
    for out_features, in_features in shapes:
        # Enough copies of this linear alone that cycling through them reads past L2 (up to the measure's cap).
        copies = rotation_copies([(out_features, in_features)], device)
        weights = random_layer_weights([(out_features, in_features)], GROUP_SIZE[device.type], device, copies)
        layers = [pack_awqd_w4(copy[0], device) for copy in weights]
        del weights
        # The GEMV's bytes as one buffer per copy: what it reads, without its layout.
        buffers = [torch.cat([layer.qweight.flatten(), layer.scale_zero.flatten()]) for layer in layers]
        words = buffers[0].numel()
        sink = torch.empty(triton.cdiv(words, min(b for b, _ in READ_CONFIGS[device.type])), dtype=torch.int32)
        sink = sink.to(device)
        reads = {
            f"{block} words, {warps} warps": [partial(read, buffer, sink, block, warps) for buffer in buffers]
            for block, warps in READ_CONFIGS[device.type]
        }
        x = torch.randn(1, in_features, device=device, dtype=torch.float16)
        gemvs = {
            f"{t.block_n}x{t.block_k}, {t.num_warps} warps": [partial(gemv, x, layer, t) for layer in layers]
            for t in tuning_space(1)
        }
        read_best, read_ms, read_all = fastest("read", reads, device)
        gemv_best, gemv_ms, gemv_all = fastest("gemv", gemvs, device)
        layer_reads.append(reads[read_best])
        layer_gemvs.append(gemvs[gemv_best])
        rows.append(
            {
                "linear": f"{out_features}x{in_features}",
                "copies": copies,
                "bytes": words * 4,
                "read_floor_ms": read_ms,
                "read_config": read_best,
                "gemv_ms": gemv_ms,
                "gemv_tile": gemv_best,
                "read_ms": read_all,
                "gemv_tiles_ms": gemv_all,
            }
        )
        print(rows[-1]["linear"], read_ms, gemv_ms, flush=True)
    # The layer as the engine runs it: the four linears in order, copy after copy, each on its fastest; ms per layer.
    layer_copies = min(row["copies"] for row in rows)
    layer = {}
    for kind, by_linear in (("read", layer_reads), ("gemv", layer_gemvs)):
        launches = [linear[copy] for copy in range(layer_copies) for linear in by_linear]
        layer[kind] = per_launch_ms(kind, launches, device, REPETITIONS) * len(shapes)
    copy_gbps = measure_copy_bandwidth_gbps(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {"device": name, "copy_bandwidth_gbps": copy_gbps, "linears": rows, "layer_ms": layer}
    (out / "read-floor.json").write_text(json.dumps(report, indent=1))
    lines = [
        f"# One launch's read floor against awqd's GEMV at 1 token ({name})",
        "",
        f"Steady-state copy bandwidth {copy_gbps:.0f} GB/s. µs per linear (CUDA-graph replay on a GPU; each linear's "
        "copies launched back to back, past L2).",
        "",
        "| linear | MB read | read floor µs (GB/s) | at copy bandwidth µs | GEMV µs (tile) | GEMV / floor |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        floor_us, gemv_us = row["read_floor_ms"] * 1000, row["gemv_ms"] * 1000
        lines.append(
            f"| {row['linear']} | {row['bytes'] / 1e6:.2f} | {floor_us:.2f} ({row['bytes'] / floor_us / 1e3:.0f}) | "
            f"{row['bytes'] / copy_gbps / 1e3:.2f} | {gemv_us:.2f} ({row['gemv_tile']}) | {gemv_us / floor_us:.2f} |"
        )
    floor, served = (sum(row[key] for row in rows) * 1000 for key in ("read_floor_ms", "gemv_ms"))
    lines.append(f"| sum of the above | | {floor:.2f} | | {served:.2f} | {served / floor:.2f} |")
    read_us, gemv_us = layer["read"] * 1000, layer["gemv"] * 1000
    lines.append(
        f"| **the layer, in order** | | **{read_us:.2f}** | | **{gemv_us:.2f}** | **{gemv_us / read_us:.2f}** |"
    )
    (out / "read-floor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
