"""Dequantize + matmul on the host CPU: the same torch code as dequant_cublas, with the CPU BLAS underneath.

A genuine alternative to the reference there: weights stay int4-packed (half the canonical layout's bytes)
and are unpacked per call, so which one wins depends on the shapes and batch, which is what gets measured.
"""

from awqd.kernels.candidates.dequant_cublas import DequantCublas


class DequantMatmulCpu(DequantCublas):
    name = "dequant_matmul_cpu"
