"""Offline (no GPU): does Triton's Hopper warp specialization split the skinny kernel's loop? Compiles a copy of
awqd/kernels/triton/skinny.py whose K loop asks for it (tl.range(..., warp_specialize=True)) for sm_90 and counts
the warp_specialize partitions in the Triton GPU IR.

    PYTHONPATH=<triton 3.6>:. python3 bench/results/h100-2026-12-05-ncu-skinny/warp_specialize_check.py
"""

import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
LOOP = "for k0 in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):"
source = Path("awqd/kernels/triton/skinny.py").read_text()
assert LOOP in source
variant = Path(tempfile.mkdtemp()) / "skinny_ws.py"
variant.write_text(source.replace(LOOP, LOOP[:-2] + ", warp_specialize=True):"))
spec = importlib.util.spec_from_file_location("skinny_ws", variant)
skinny = importlib.util.module_from_spec(spec)
sys.modules["skinny_ws"] = skinny
spec.loader.exec_module(skinny)


def compile_sm90(config, num_warps: int) -> str:
    kernel = skinny.awqd_w4_skinny_kernel
    tensors = {
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
        "SPLIT_K": 1,
        "NUM_STAGES": config.num_stages,
        "HAS_BIAS": False,
        "IS_BF16": False,
        "USE_TMA": True,
        "USE_ASM": True,
        "DOT_IN_FP32": False,
        "MERGE": False,
        "SCALE_FIRST": config.scale_first,
    }
    signature = {**tensors, **dict.fromkeys(constants, "constexpr")}
    attrs = {(kernel.arg_names.index("K_WORDS"),): [["tt.divisibility", 16]]}
    compiled = triton.compile(
        triton.compiler.ASTSource(kernel, signature, constants, attrs),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": num_warps, "num_stages": config.num_stages},
    )
    return compiled.asm["ttgir"]


print("triton", triton.__version__)
for config, num_warps in (
    (skinny.SkinnyConfig(64, 128, 128, 1, 4, 3), 4),
    (skinny.SkinnyConfig(128, 128, 64, 1, 4, 4, scale_first=True), 4),
    (skinny.SkinnyConfig(128, 128, 64, 1, 8, 4, scale_first=True), 8),
):
    try:
        partitions = len(re.findall(r"ttg\.warp_specialize", compile_sm90(config, num_warps)))
        print(f"{config}, {num_warps} warps: {partitions} warp_specialize ops")
    except RuntimeError as error:
        print(f"{config}, {num_warps} warps: the compiler failed ({error})")
