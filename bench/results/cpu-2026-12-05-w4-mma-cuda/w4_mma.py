"""Build and launch w4_mma.cu's kernels: compiled offline to one sm_90 cubin by nvcc (`python3 w4_mma.py build`), and
launched on a GPU through the driver API (ctypes, libcuda), on torch's current stream so that CUDA graphs capture them.
"""

import ctypes
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
CUBIN = HERE / "w4_mma.cubin"
SPILLS = HERE / "w4_mma.spills.txt"
SHARED_LIMIT = 227 * 1024


@dataclass(frozen=True)
class Config:
    mt: int  # 8-token MMA tiles: the bucket's tokens, rounded up to a multiple of 8
    r: int  # 16-row tiles a warp
    rw: int  # warps along the rows
    kw: int  # warps along K
    depth: int  # 128-column steps loaded ahead, per lane
    group: int = 128
    scale_first: bool = False
    bf16: bool = False
    # ptxas's own register cap (it trades a few spilled bytes for occupancy) or none
    # (__launch_bounds__(threads, 1)): which is faster is for the timing to say.
    free_registers: bool = False

    @property
    def name(self) -> str:
        sf = "sf" if self.scale_first else "ps"
        dtype = "bf16" if self.bf16 else "fp16"
        free = "_free" if self.free_registers else ""
        return f"w4mma_m{self.mt}_r{self.r}_w{self.rw}x{self.kw}_d{self.depth}_g{self.group}_{sf}_{dtype}{free}"

    @property
    def threads(self) -> int:
        return 32 * self.rw * self.kw

    @property
    def block_rows(self) -> int:
        return 16 * self.r * self.rw

    def shared_bytes(self, k_slice: int) -> int:
        staged = 8 * self.mt * k_slice * 2
        ring = self.depth * self.r * 2 * self.threads * (16 + 4)
        reduce = (self.kw - 1) * self.rw * self.r * self.mt * 4 * 32 * 4
        return staged + ring + reduce


def timing_configs(mt: int) -> list[Config]:
    """The tiles timed at a bucket of 8 * mt tokens (fp16, groups of 128), each with ptxas's register cap and
    without."""
    return [replace(c, free_registers=free) for c in tiles(mt) for free in (False, True)]


def tiles(mt: int) -> list[Config]:
    """(r, rw, kw, depth) per bucket; depth costs shared memory (the weight ring), not registers."""
    if mt <= 2:
        shapes = [(1, 4, 1, 8), (1, 8, 1, 6), (2, 4, 1, 6), (1, 4, 1, 12)]
        return [Config(mt, *shape) for shape in shapes]
    if mt == 4:
        shapes = [(1, 4, 1, 8), (1, 8, 1, 6), (1, 4, 1, 4)]
        return [Config(mt, *shape) for shape in shapes] + [Config(mt, 2, 4, 1, 6, scale_first=True)]
    if mt == 8:
        shapes = [(1, 4, 1, 6), (1, 8, 1, 4), (1, 4, 1, 4)]
        return [Config(mt, *shape) for shape in shapes] + [Config(mt, 2, 4, 1, 6, scale_first=True)]
    shapes = [(1, 4, 1, 4), (1, 8, 1, 4), (1, 4, 1, 6)]
    return [Config(mt, *shape, scale_first=True) for shape in shapes]


def check_configs() -> list[Config]:
    """Beyond the timed tiles (fp16, groups of 128): other groups (scale first) and bf16, on a few tiles."""
    out = []
    for mt in (1, 2, 8, 16):
        base = tiles(mt)[0]
        for group in (32, 64):
            for bf16 in (False, True):
                out.append(Config(mt, base.r, base.rw, base.kw, base.depth, group, True, bf16))
        out.append(Config(mt, base.r, base.rw, base.kw, base.depth, 128, base.scale_first, True))
    out.append(Config(2, 1, 4, 2, 8, 32, True, True))  # warps splitting K with small groups
    out.append(Config(2, 1, 4, 2, 8))  # and with groups of 128
    return out


def all_configs() -> list[Config]:
    timed = [config for mt in (1, 2, 4, 8, 16) for config in timing_configs(mt)]
    return list(dict.fromkeys(timed + check_configs()))


def build() -> None:
    """Compile every config into one cubin (offline, no GPU) and record each kernel's registers and spills."""
    source = HERE / "w4_mma_instances.cu"
    lines = ['#include "w4_mma.cu"']
    for c in all_configs():
        flags = f"{str(c.scale_first).lower()}, {str(c.bf16).lower()}"
        bounds = f"({c.threads}, 1)" if c.free_registers else f"({c.threads})"
        args = f"{bounds}, {c.mt}, {c.r}, {c.rw}, {c.kw}, {c.depth}, {c.group}, {flags}"
        lines.append(f"AWQD_W4_MMA({c.name}, {args})")
    source.write_text("\n".join(lines) + "\n")
    try:
        done = subprocess.run(
            ["nvcc", "-arch=sm_90", "-cubin", "-O3", "-Xptxas", "-v", "-o", str(CUBIN), str(source)],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        source.unlink()
    report = []
    for name, body in re.findall(r"Compiling entry function '(\w+)'.*?\n(.*?Used \d+ registers)", done.stderr, re.S):
        spills = re.search(r"(\d+) bytes spill stores", body).group(1)
        registers = re.search(r"Used (\d+) registers", body).group(1)
        report.append(f"{name} registers {registers} spill_stores {spills}")
    SPILLS.write_text("\n".join(sorted(report)) + "\n")


SPILL_LIMIT = 128  # bytes: under its own cap ptxas spills 12-60 bytes a kernel here


def spilling() -> set[str]:
    """The kernels that spill more than SPILL_LIMIT bytes: not timed."""
    out = set()
    for line in SPILLS.read_text().splitlines():
        name, _, _, _, spills = line.split()
        if int(spills) > SPILL_LIMIT:
            out.add(name)
    return out


class Kernels:
    """The cubin's kernels, loaded into torch's (primary) CUDA context."""

    def __init__(self, device) -> None:
        import torch

        torch.zeros(1, device=device)  # makes the primary context current on this thread
        self.torch = torch
        self.cuda = ctypes.CDLL("libcuda.so.1")
        self.cuda.cuLaunchKernel.argtypes = [
            ctypes.c_void_p,
            *[ctypes.c_uint] * 7,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_void_p,
        ]
        module = ctypes.c_void_p()
        self.image = CUBIN.read_bytes()
        self._check(self.cuda.cuModuleLoadData(ctypes.byref(module), self.image), "cuModuleLoadData")
        self.module = module
        self.functions = {}
        self.counters = torch.zeros(1 << 16, dtype=torch.int32, device=device)

    def _check(self, status: int, what: str) -> None:
        if status:
            raise RuntimeError(f"{what} failed: CUresult {status}")

    def function(self, config: Config) -> ctypes.c_void_p:
        function = self.functions.get(config.name)
        if function is None:
            function = ctypes.c_void_p()
            status = self.cuda.cuModuleGetFunction(ctypes.byref(function), self.module, config.name.encode())
            self._check(status, f"cuModuleGetFunction({config.name})")
            self._check(self.cuda.cuFuncSetAttribute(function, 8, SHARED_LIMIT - 1024), "cuFuncSetAttribute")
            self.functions[config.name] = function
        return function

    def __call__(self, x, packed, config: Config, splits: int, tiles: int = 1):
        """y = x @ W.T + bias for contiguous x [M, K] (fp16 or bf16 as the config) and an awqd_w4 weight; K in
        `splits` slices, each block streaming `tiles` row tiles through its staged activations."""
        torch = self.torch
        m, k = x.shape
        n = packed.out_features
        dtype = torch.bfloat16 if config.bf16 else torch.float16
        if k % 128 or packed.group_size != config.group or x.dtype != dtype:
            raise ValueError(f"{config.name} does not take K {k}, group {packed.group_size}, {x.dtype}")
        if not x.is_contiguous() or x.data_ptr() % 16:
            raise ValueError(f"{config.name} reads x in 16-byte vectors: it must be contiguous and 16-byte aligned")
        if m > 8 * config.mt:
            raise ValueError(f"{config.name} takes at most {8 * config.mt} tokens, got {m}")
        steps = k // 128
        k_slice = 128 * config.kw * -(-steps // (splits * config.kw))
        splits = -(-k // k_slice)
        if (k - (splits - 1) * k_slice) % (128 * config.kw):
            raise ValueError(f"{config.name}: the last K slice is not a multiple of {config.kw} steps")
        shared = config.shared_bytes(k_slice)
        if shared > SHARED_LIMIT - 1024:
            raise ValueError(f"{config.name}: {shared} bytes of shared memory at K slice {k_slice}")
        y = torch.empty((m, n), dtype=x.dtype, device=x.device)
        partials = torch.empty((splits, m, n), dtype=torch.float32, device=x.device) if splits > 1 else y
        row_tiles = -(-n // config.block_rows)
        blocks = -(-row_tiles // tiles)
        values = [
            ctypes.c_void_p(x.data_ptr()),
            ctypes.c_void_p(packed.qweight.data_ptr()),
            ctypes.c_void_p(packed.scale_zero.data_ptr()),
            ctypes.c_void_p(packed.bias.data_ptr() if packed.bias is not None else 0),
            ctypes.c_void_p(y.data_ptr()),
            ctypes.c_void_p(partials.data_ptr()),
            ctypes.c_void_p(self.counters.data_ptr()),
            ctypes.c_int(m),
            ctypes.c_int(n),
            ctypes.c_int(k),
            ctypes.c_int(k_slice),
            ctypes.c_int(tiles),
        ]
        params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.byref(v), ctypes.c_void_p) for v in values])
        stream = torch.cuda.current_stream(x.device).cuda_stream
        function = self.function(config)
        status = self.cuda.cuLaunchKernel(
            function, blocks, splits, 1, config.threads, 1, 1, shared, ctypes.c_void_p(stream), params, None
        )
        self._check(status, f"cuLaunchKernel({config.name})")
        return y


if __name__ == "__main__" and sys.argv[1:] == ["build"]:
    build()
