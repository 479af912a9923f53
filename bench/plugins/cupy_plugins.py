"""CuPy RawKernel stand-ins for the two failure mechanisms seen with AutoAWQ's CUDA kernels on an H200
(issue 13), as awqd plugin candidates (`--candidate-plugin cupy_plugins:NullStreamLinear`, with bench/plugins
on PYTHONPATH). Both dequantize once at prepare and run a plain fp16 linear kernel:

- OutOfBoundsWrite: launched on torch's current stream (graph-safe), but at 1 token it writes far outside its
  output: "an illegal memory access", which poisons the CUDA context of the process that ran it.
- NullStreamLinear: correct, but launched on the legacy default (null) stream, as AutoAWQ's gemmv2 and
  dequantize kernels are (`<<<grid, block>>>` without a stream). Eagerly the legacy stream orders it with torch's
  work; under CUDA-graph capture on torch's side stream it runs once, outside the graph, and replays skip it.
"""

import torch

from awqd.kernels.base import Candidate
from awqd.quant.reference import dequantize

SOURCE = r"""
#include <cuda_fp16.h>
extern "C" __global__ void linear(const half* x, const half* w_t, const half* bias, half* y,
                                  int rows, int out, int in, long long poison_offset) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    int row = blockIdx.y;
    if (col >= out) return;
    float acc = 0.0f;
    for (int k = 0; k < in; ++k)
        acc += __half2float(x[(long long)row * in + k]) * __half2float(w_t[(long long)k * out + col]);
    if (bias) acc += __half2float(bias[col]);
    y[(long long)row * out + col + poison_offset] = __float2half(acc);
}
"""
THREADS = 128
POISON_OFFSET = 1 << 40  # elements: far outside any allocation


def cupy_view(tensor: torch.Tensor):
    """A CuPy array over a torch tensor's memory, without CuPy's stream synchronisation (illegal under capture)."""
    import cupy

    memory = cupy.cuda.UnownedMemory(tensor.data_ptr(), tensor.numel() * tensor.element_size(), tensor)
    return cupy.ndarray(tuple(tensor.shape), cupy.float16, memptr=cupy.cuda.MemoryPointer(memory, 0))


class CupyLinear(Candidate):
    family = "gemv"
    null_stream = False
    poison_rows = 0  # rows at which the kernel writes out of bounds; 0: never

    def __init__(self):
        self._kernel = None

    def eligible(self, device) -> tuple[bool, str]:
        if device.kind != "cuda":
            return False, "a CuPy RawKernel: CUDA only"
        try:
            import cupy  # noqa: F401
        except Exception as error:
            return False, f"cupy does not import: {error}"
        return True, "CuPy RawKernel fp16 linear (bench stand-in)"

    def kernel(self):
        if self._kernel is None:
            import cupy

            self._kernel = cupy.RawKernel(SOURCE, "linear")
        return self._kernel

    def prepare(self, weight, device):
        self.kernel()
        dense_t = dequantize(weight, torch.float16).t().contiguous().to(device)  # [in, out]: coalesced reads
        bias = weight.bias.to(device=device, dtype=torch.float16) if weight.bias is not None else None
        return dense_t, bias

    def forward(self, x, packed):
        import cupy

        dense_t, bias = packed
        in_features, out_features = dense_t.shape
        rows = x.reshape(-1, in_features).contiguous()
        y = torch.empty(rows.shape[0], out_features, device=x.device, dtype=torch.float16)
        stream = (
            cupy.cuda.Stream.null
            if self.null_stream
            else cupy.cuda.ExternalStream(torch.cuda.current_stream(x.device).cuda_stream)
        )
        poison = POISON_OFFSET if rows.shape[0] == self.poison_rows else 0
        with stream:
            self.kernel()(
                ((out_features + THREADS - 1) // THREADS, rows.shape[0]),
                (THREADS,),
                (
                    cupy_view(rows),
                    cupy_view(dense_t),
                    cupy_view(bias) if bias is not None else cupy.uint64(0),
                    cupy_view(y),
                    cupy.int32(rows.shape[0]),
                    cupy.int32(out_features),
                    cupy.int32(in_features),
                    cupy.int64(poison),
                ),
            )
        return y.reshape(*x.shape[:-1], out_features)


class OutOfBoundsWrite(CupyLinear):
    name = "cupy_out_of_bounds"
    layout = "cupy_dense_t"
    poison_rows = 1


class NullStreamLinear(CupyLinear):
    name = "cupy_null_stream"
    layout = "cupy_dense_t"
    null_stream = True
