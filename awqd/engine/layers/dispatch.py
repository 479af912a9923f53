"""Where the engine's layer kernels run: Triton on CUDA tensors (and under the Triton interpreter, for tests),
plain torch everywhere else, with the same roundings."""

import torch

from awqd.kernels.triton.layout import interpreting


def use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda or interpreting()
