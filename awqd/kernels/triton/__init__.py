"""awqd's own W4A16 Triton kernels on the awqd_w4 layout.

layout.py (pure torch) packs the canonical QuantizedWeight; gemv.py, gemm.py and splitk.py import triton,
so nothing imports them until a kernel is prepared.
"""
