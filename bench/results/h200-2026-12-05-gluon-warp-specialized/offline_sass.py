"""Offline (no GPU): gluon_skinny's ASYNC loop compiled for sm_90, and the SASS lines that show the hazard: the loop's
last HGMMA issue, the back edge, and the next step's unpack writing registers of that HGMMA's A fragment before
the WARPGROUP.DEPBAR that waits for it.

    PYTHONPATH=<triton 3.6>:<this folder>:<repo> python3 offline_sass.py > sass-async.txt
"""

import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from gluon_skinny import ASYNC, w4_ws_kernel
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton.runtime.jit import mangle_type

BLOCK_M, BLOCK_N, BLOCK_K, STAGES, WARPS = 64, 64, 128, 4, 4


def descriptor(tensor: torch.Tensor, block: list[int], dtype) -> TensorDescriptor:
    layout = gl.NVMMASharedLayout.get_default_for(block, dtype)
    return TensorDescriptor(tensor, list(tensor.shape), list(tensor.stride()), block, layout)


x_desc = descriptor(torch.zeros(BLOCK_M, 4096, dtype=torch.float16), [BLOCK_M, BLOCK_K], gl.float16)
w_desc = descriptor(torch.zeros(4096, 512, dtype=torch.int32), [BLOCK_N, BLOCK_K // 8], gl.int32)
constants = {"GROUP_SIZE": 128, "BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "BLOCK_K": BLOCK_K, "STAGES": STAGES}
constants |= {"SPLIT_K": 1, "A_MODE": ASYNC, "num_warps": WARPS}
signature = {"x_desc": mangle_type(x_desc), "w_desc": mangle_type(w_desc), "sz_ptr": "*i32", "out_ptr": "*fp16"}
signature |= dict.fromkeys(("M", "N", "K"), "i32") | dict.fromkeys(constants, "constexpr")
compiled = triton.compile(
    GluonASTSource(w4_ws_kernel, signature, constants, {}),
    target=GPUTarget("cuda", 90, 32),
    options={"num_warps": WARPS, "maxnreg": 128},
)
cubin = Path(tempfile.mkdtemp()) / "kernel.cubin"
cubin.write_bytes(compiled.asm["cubin"])
cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
sass = [
    line.split(";")[0].strip() for line in subprocess.check_output([cuobjdump, "-sass", cubin], text=True).splitlines()
]
sass = [line for line in sass if line.startswith("/*") and not line.startswith("/* 0x")]
issue = max(i for i, line in enumerate(sass) if "HGMMA" in line and "gsb0" in line and "BRA" in sass[i + 1])
a_regs = {int(r) for r in re.findall(r"HGMMA\.\S+ R\d+, R(\d+)", "\n".join(sass[issue - 20 : issue + 1]))}
in_flight = {reg for base in a_regs for reg in range(base, base + 4)}
head = int(re.search(r"BRA 0x([0-9a-f]+)", sass[issue + 1]).group(1), 16)
start = next(i for i, line in enumerate(sass) if int(line[2:6], 16) >= head)
wait = next(i for i in range(start, len(sass)) if "WARPGROUP.DEPBAR" in sass[i])
print(f"Loop HGMMA issue and back edge (A fragment registers R{min(in_flight)}-R{max(in_flight)}):")
print("\n".join(sass[issue - 1 : issue + 2]))
print(f"\nFrom the loop head (0x{head:04x}) to the wait, instructions writing those registers:")
for line in sass[start : wait + 1]:
    written = re.match(r"/\*\w+\*/\s+(?:@!?U?P\w+\s+)?\S+\s+R(\d+)", line)
    if "DEPBAR" in line or (written and int(written.group(1)) in in_flight):
        print(line)
