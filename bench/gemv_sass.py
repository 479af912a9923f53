"""SASS instructions per int32 word (8 weights) in the GEMV's inner K loop, compiled ahead of time: no GPU needed.

    PYTHONPATH=<triton 3.6>:. python3 bench/gemv_sass.py [--cc 90] [--out DIR]

Compiles awqd_w4_gemv_kernel for every tile of gemv.TILES on the qkv (12288x4096) and down (4096x11008) shapes at
batch 1, fp16 and bf16, and reads the cubin's SASS (cuobjdump, from Triton's bundled CUDA tools): the loop is the
longest backward branch's body, and its instruction count is divided by the words a thread handles per
iteration (BLOCK_N * BLOCK_K / 8 / threads, times gemv.LOOP_UNROLL steps). Also per kernel: registers, the loop's
shared-memory traffic and barriers (layout conversions), and whether each step's layout conversions come after its
loads of the following step (the TTGIR), which the hand-written prefetch needs. Use the GPU machine's Triton
version (3.6): codegen differs between versions. --out keeps each kernel's TTGIR, PTX and SASS.
"""

import argparse
import collections
import re
import subprocess
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import mangle_type

from awqd.kernels.triton.gemv import LOOP_UNROLL, TILES, GemvConfig, awqd_w4_gemv_kernel

SHAPES = {"qkv": (12288, 4096), "down": (4096, 11008)}
GROUP_SIZE = 128
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
ADDRESS = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?);")


def compile_gemv(tile: GemvConfig, shape: tuple[int, int], dtype: torch.dtype, cc: int):
    out_features, in_features = shape
    args = {
        "x_ptr": torch.empty(1, in_features, dtype=dtype),
        "qweight_ptr": torch.empty(out_features, in_features // 8, dtype=torch.int32),
        "scale_zero_ptr": torch.empty(out_features, in_features // GROUP_SIZE, dtype=torch.int32),
        "bias_ptr": torch.empty(1, dtype=torch.float32),
        "out_ptr": torch.empty(1, out_features, dtype=dtype),
        "N": out_features,
        "K_WORDS": in_features // 8,
    }
    constants = {
        "GROUP_SIZE": GROUP_SIZE,
        "SEGMENT": min(GROUP_SIZE, tile.block_k),
        "BLOCK_N": tile.block_n,
        "BLOCK_K": tile.block_k,
        "SPLIT_K": 1,
        "EVEN_K": in_features % tile.block_k == 0,
        "HAS_BIAS": False,
        "IS_FP16": dtype == torch.float16,
        "USE_ASM": True,
        "GATED": False,
    }
    names = awqd_w4_gemv_kernel.arg_names
    signature = {name: mangle_type(args[name]) if name in args else "constexpr" for name in names}
    # As Triton specializes at launch: pointers and sizes divisible by 16 (the Llama shapes' are).
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(names) if name in args}
    source = ASTSource(fn=awqd_w4_gemv_kernel, signature=signature, constexprs=constants, attrs=attrs)
    options = {"num_warps": tile.num_warps, "num_stages": tile.num_stages}
    return triton.compile(source, target=GPUTarget("cuda", cc, 32), options=options)


def loop_body(sass: str) -> list[str]:
    """The instructions of the longest loop: from a backward branch's target to the branch."""
    instructions = [(int(m.group(1), 16), m.group(2)) for m in map(ADDRESS.match, sass.splitlines()) if m]
    best: list[str] = []
    for address, text in instructions:
        target = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)
        if target and int(target.group(1), 16) < address:
            body = [t for a, t in instructions if int(target.group(1), 16) <= a <= address]
            best = max(best, body, key=len)
    return best


def opcode(instruction: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0].split(".")[0]


def converts_after_loads(ttgir: str) -> bool:
    """Each of the unrolled loop's steps issues its loads before any layout conversion of its own."""
    loop = ttgir[ttgir.index("scf.for") : ttgir.index("scf.yield")].splitlines()
    events = "".join(
        "L" if "tt.load" in line else "C" for line in loop if "tt.load" in line or "convert_layout" in line
    )
    return re.fullmatch(f"(L+C*){{{LOOP_UNROLL.value}}}", events) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cc", type=int, default=90)
    parser.add_argument("--out")
    args = parser.parse_args()
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    print(f"triton {triton.__version__}, sm_{args.cc}")
    print("| tile | shape | dtype | instr/word | registers | STS+LDS+BAR in loop | converts after loads |")
    print("|---|---|---|---|---|---|---|")
    for tile in TILES:
        for shape_name, shape in SHAPES.items():
            for dtype in (torch.float16, torch.bfloat16):
                kernel = compile_gemv(tile, shape, dtype, args.cc)
                tag = f"{tile.block_n}x{tile.block_k}w{tile.num_warps}-{shape_name}-{str(dtype)[6:]}"
                cubin = Path(out or "/tmp") / f"gemv-{tag}.cubin"
                cubin.write_bytes(kernel.asm["cubin"])
                sass = subprocess.run([TOOLS / "cuobjdump", "-sass", cubin], capture_output=True, text=True).stdout
                usage = subprocess.run([TOOLS / "cuobjdump", "-res-usage", cubin], capture_output=True, text=True)
                registers = re.search(r"REG:(\d+)", usage.stdout).group(1)
                if out:
                    for kind in ("ttgir", "ptx"):
                        (out / f"gemv-{tag}.{kind}").write_text(kernel.asm[kind])
                    (out / f"gemv-{tag}.sass").write_text(sass)
                else:
                    cubin.unlink()
                body = loop_body(sass)
                ops = collections.Counter(opcode(instruction) for instruction in body)
                words = tile.block_n * tile.block_k / 8 / (tile.num_warps * 32) * LOOP_UNROLL.value
                shared = ops["STS"] + ops["LDS"] + ops["STSM"] + ops["LDSM"] + ops["BAR"]
                print(
                    f"| {tile.block_n}x{tile.block_k}, {tile.num_warps} warps | {shape_name} | {str(dtype)[6:]} | "
                    f"{len(body) / words:.2f} | {registers} | {shared} | {converts_after_loads(kernel.asm['ttgir'])} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
