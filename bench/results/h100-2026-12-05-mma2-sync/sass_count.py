"""Offline (no GPU): SASS instructions in the K loop per 1,000 weights a warp, for the mma.sync Gluon kernel here and
for awqd's skinny kernel, compiled for sm_90 by Triton 3.6 (cuobjdump from Triton's bundled CUDA tools).

    PYTHONPATH=<triton 3.6>:<this folder>:. python3 bench/results/h100-2026-12-05-mma2-sync/sass_count.py

The loop is the smallest range of a conditional backward branch that holds an MMA instruction (unconditional backward
branches return from the out-of-line retries of barrier waits). Its instruction count is divided by the weights one
warp unpacks per iteration: a quantization group (128 columns) of BLOCK_N / warps rows here, a BLOCK_K step of
BLOCK_N / warps rows in the skinny kernel.
"""

import collections
import re
import subprocess
import tempfile
from pathlib import Path

import gluon_mma2
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton.runtime.jit import mangle_type

from awqd.kernels.triton import skinny

TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
TARGET = GPUTarget("cuda", 90, 32)
ADDRESS = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?);")
BRANCH = re.compile(r"BRA 0x([0-9a-f]+)")
# (bucket, (BLOCK_M, BLOCK_N, STAGES, steps a stage, warps, maxnreg)), as mma2_check.tiles picks them.
MMA2_TILES = (
    (16, (16, 128, 32, 1, 4, 128)),
    (16, (16, 128, 8, 4, 4, 128)),
    (16, (16, 64, 32, 1, 4, 128)),
    (64, (64, 128, 16, 1, 4, 128)),
    (64, (64, 128, 4, 4, 4, 128)),
    (128, (128, 128, 9, 1, 8, 128)),
    (128, (128, 128, 9, 1, 4, 128)),
    (128, (128, 128, 2, 4, 4, 128)),
)
# The skinny kernel's default tiles; at 128 tokens it runs two 64-row M tiles, each unpacking all the weights.
SKINNY_TILES = ((16, skinny.default_tile(16)), (64, skinny.default_tile(64)), (128, skinny.default_tile(128)))
SKINNY_TILES += ((128, skinny.scale_first_tiles(128)[0]),)
# Tiles below 64 rows a warpgroup, for which Triton itself picks mma.sync over wgmma.
SKINNY_TILES += ((16, skinny.SkinnyConfig(16, 32, 128, 0, 2, 4)), (64, skinny.SkinnyConfig(64, 32, 128, 0, 2, 4)))


def compile_mma2(block_m: int, block_n: int, stages: int, sps: int, warps: int, maxnreg: int):
    x = torch.zeros(block_m, 4096, dtype=torch.float16)
    w = torch.zeros(4096 * 128 // 64, 64, dtype=torch.int32)  # tile_words of a 4096 x 4096 weight
    x_layout = gl.NVMMASharedLayout.get_default_for([block_m, 32], gl.float16)
    w_layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
    descriptors = {
        "x_desc": TensorDescriptor(x, list(x.shape), list(x.stride()), [block_m, 32], x_layout),
        "w_desc": TensorDescriptor(w, list(w.shape), list(w.stride()), [sps * block_n // 16, 64], w_layout),
    }
    constants = {"GROUP_SIZE": 128, "BLOCK_M": block_m, "BLOCK_N": block_n, "STAGES": stages, "SPS": sps}
    constants |= {"SPLIT_K": 1, "num_warps": warps}
    signature = {name: mangle_type(value) for name, value in descriptors.items()}
    signature |= {"sz_ptr": "*i32", "out_ptr": "*fp16", "M": "i32", "N": "i32", "K": "i32"}
    signature |= dict.fromkeys(constants, "constexpr")
    source = GluonASTSource(gluon_mma2.w4_mma2_kernel, signature, constants, {})
    return triton.compile(source, target=TARGET, options={"num_warps": warps, "maxnreg": maxnreg})


def compile_skinny(config: skinny.SkinnyConfig):
    kernel = skinny.awqd_w4_skinny_kernel
    signature = {
        "x_src": f"tensordesc<fp16[{config.block_m},{config.block_k}]>",
        "w_src": f"tensordesc<i32[{config.block_n},{config.block_k // 8}]>",
        **dict.fromkeys(("scale_zero_ptr", "counters_ptr"), "*i32"),
        **dict.fromkeys(("bias_ptr", "target_ptr", "out_ptr"), "*fp16"),
        **dict.fromkeys(("M", "N", "K", "K_WORDS"), "i32"),
    }
    constants = {
        "GROUP_SIZE": 128,
        "BLOCK_M": config.block_m,
        "BLOCK_N": config.block_n,
        "BLOCK_K": config.block_k,
        "SPLIT_K": 4,
        "NUM_STAGES": config.num_stages,
        "HAS_BIAS": False,
        "IS_BF16": False,
        "USE_TMA": True,
        "USE_ASM": True,
        "DOT_IN_FP32": False,
        "MERGE": False,
        "SCALE_FIRST": config.scale_first,
    }
    signature |= dict.fromkeys(constants, "constexpr")
    attrs = {(kernel.arg_names.index("K_WORDS"),): [["tt.divisibility", 16]]}
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    return triton.compile(ASTSource(kernel, signature, constants, attrs), target=TARGET, options=options)


def cuobjdump(cubin: bytes, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        return subprocess.run([TOOLS / "cuobjdump", flag, file.name], capture_output=True, text=True, check=True).stdout


def describe(compiled, weights_per_warp: int, m_tiles: int) -> str:
    """The loop's length and mix, per 1,000 weights a warp and per 1,000 of the layer's weights (times the M tiles
    that each unpack all of them), with the kernel's registers and local memory (spills)."""
    sass = cuobjdump(compiled.asm["cubin"], "-sass")
    lines = [(int(m.group(1), 16), m.group(2)) for m in map(ADDRESS.match, sass.splitlines()) if m]
    mma = [address for address, text in lines if "MMA" in text]
    loops = [
        (start, address)
        for address, text in lines
        if text.startswith("@") and (branch := BRANCH.search(text)) and (start := int(branch.group(1), 16)) < address
        if any(start <= at <= address for at in mma)
    ]
    start, end = min(loops, key=lambda loop: loop[1] - loop[0])
    body = [text for address, text in lines if start <= address <= end]
    ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", text).split()[0] for text in body)
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", cuobjdump(compiled.asm["cubin"], "-res-usage"))
    registers, stack, local = usage.groups()
    top = ", ".join(f"{op} {count}" for op, count in ops.most_common(8))
    per_1k = len(body) * 1000 / weights_per_warp
    return (
        f"{len(body)} a loop, {per_1k:.0f} per 1k weights a warp, {per_1k * m_tiles:.0f} per 1k layer weights; "
        f"{sum(text.startswith('BAR.SYNC') for text in body)} BAR.SYNC; "
        f"{registers} registers at launch, stack {stack}, local {local}; {top}"
    )


def main() -> None:
    print("triton", triton.__version__)
    for bucket, (block_m, block_n, stages, sps, warps, maxnreg) in MMA2_TILES:
        compiled = compile_mma2(block_m, block_n, stages, sps, warps, maxnreg)
        tile = f"mma2 {block_n}x{block_m}, {warps} warps, {stages} stages of {sps} steps, maxnreg {maxnreg}"
        weights = block_n // warps * 128
        print(f"{bucket} tokens, {tile}: {describe(compiled, weights, -(-bucket // block_m))}")
    for bucket, config in SKINNY_TILES:
        compiled = compile_skinny(config)
        weights = config.block_n // config.num_warps * config.block_k
        print(f"{bucket} tokens, skinny {config}: {describe(compiled, weights, -(-bucket // config.block_m))}")


if __name__ == "__main__":
    main()
