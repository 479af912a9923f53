"""Offline (no GPU): does loading (scale, zero) two steps ahead stop Triton's pipeliner from staging the skinny
kernel's TMA tiles? Compiles the 16-token default tile (3 stages) for sm_90 with SZ_AHEAD 1 and 2, and counts the
TMA copies and the shared memory in the Triton GPU IR.

    git apply bench/results/h100-2026-12-06-scale-zero-ahead/sz-ahead.patch
    PYTHONPATH=<triton 3.6>:. python3 bench/results/h100-2026-12-06-scale-zero-ahead/ttgir_check.py
"""

import os
import re

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton
from triton.backends.compiler import GPUTarget

from awqd.kernels.triton import skinny

CONFIG = skinny.SkinnyConfig(16, 128, 128, 1, 4, 3)


def compile_sm90(ahead: int):
    kernel = skinny.awqd_w4_skinny_kernel
    tensors = {
        "x_src": f"tensordesc<fp16[{CONFIG.block_m},{CONFIG.block_k}]>",
        "w_src": f"tensordesc<i32[{CONFIG.block_n},{CONFIG.block_k // 8}]>",
        **dict.fromkeys(("scale_zero_ptr", "counters_ptr"), "*i32"),
        **dict.fromkeys(("bias_ptr", "target_ptr", "out_ptr"), "*fp16"),
        **dict.fromkeys(("M", "N", "K", "K_WORDS"), "i32"),
    }
    constants = {
        "GROUP_SIZE": 128,
        "BLOCK_M": CONFIG.block_m,
        "BLOCK_N": CONFIG.block_n,
        "BLOCK_K": CONFIG.block_k,
        "SPLIT_K": 1,
        "NUM_STAGES": CONFIG.num_stages,
        "HAS_BIAS": False,
        "IS_BF16": False,
        "USE_TMA": True,
        "USE_ASM": True,
        "DOT_IN_FP32": False,
        "MERGE": False,
        "SCALE_FIRST": False,
        "SZ_AHEAD": ahead,
    }
    signature = {**tensors, **dict.fromkeys(constants, "constexpr")}
    attrs = {(kernel.arg_names.index("K_WORDS"),): [["tt.divisibility", 16]]}
    return triton.compile(
        triton.compiler.ASTSource(kernel, signature, constants, attrs),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": CONFIG.num_warps, "num_stages": CONFIG.num_stages},
    )


print("triton", triton.__version__, CONFIG)
for ahead in (1, 2):
    compiled = compile_sm90(ahead)
    copies = len(re.findall(r"async_tma_copy_global_to_local", compiled.asm["ttgir"]))
    shared = compiled.metadata.shared
    print(f"(scale, zero) {ahead} step(s) ahead: {copies} TMA copies, {shared} bytes of shared memory")
