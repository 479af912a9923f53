"""awqd's own W4A16 Triton kernels on the awqd_w4 layout.

layout.py packs the canonical QuantizedWeight and tuning.py keeps the tuned tiles (both pure torch); gemv.py,
gemm.py, skinny.py, dequant.py, splitk.py and unpack.py import triton, so nothing imports them until a kernel is
prepared. compilations.py counts the Triton compilations of the serving process (it imports triton only to hook it).
"""
