"""gemlite's Triton W4A16 kernels (GEMV, split-K GEMV, GEMM; it picks by batch size) on its own packing.

GemLiteLinear.pack(q, scales, zeros, fma_mode=False) keeps AWQ's form, w = (q - zeros) * scales, with fp16
activations, so the zeros stay small integers in fp16 and nothing is re-quantized. Autotuned, its first call per shape
and batch size searches and compiles for over 100 s cold on an H200, so outside tune() gemlite runs with its
"default" autotune setting (one launch configuration per kernel, or the saved one): a correctness check or a
model step never starts a search. tune() searches every hosted shape and bucket within the tuning budget and
saves gemlite's configs (GemLiteLinear.cache_config) under the cache directory; gemlite_for() loads them
(load_config) once per process, so a later boot reuses them, and Triton's own cache (TRITON_CACHE_DIR, also
under the cache directory) keeps the compiled kernels.
"""

import functools
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from awqd.errors import FailedPrecondition, InvalidArgument
from awqd.kernels.base import Candidate, Tuned
from awqd.kernels.cache_dir import kernel_cache_dir
from awqd.kernels.measure import random_weight
from awqd.kernels.requirements import GEMLITE, probe_requirements
from awqd.quant.tensors import QuantizedWeight

MIN_IN_FEATURES = 32  # GemLiteLinear.MIN_SIZE: in_features must be a multiple of it
MIN_GROUP_SIZE = 16


def config_file(gemlite: ModuleType, device: torch.device) -> Path | None:
    """One file per GPU model and gemlite/Triton version: tuned configs do not carry across either."""
    directory = kernel_cache_dir("gemlite")
    if directory is None:
        return None
    import triton

    gpu = torch.cuda.get_device_name(device).lower().replace(" ", "_")
    return directory / f"{gpu}-gemlite{gemlite.__version__}-triton{triton.__version__}.json"


@functools.cache
def gemlite_for(device: torch.device) -> ModuleType:
    """gemlite, with this GPU's saved configs loaded (once per process and device)."""
    error = probe_requirements().get(GEMLITE)
    if error is not None:
        raise FailedPrecondition(f"gemlite_w4a16: gemlite is not usable: {error}")
    import gemlite

    gemlite.set_autotune("default")
    load_saved_configs(gemlite, device)
    return gemlite


def load_saved_configs(gemlite: ModuleType, device: torch.device) -> None:
    path = config_file(gemlite, device)
    if path is not None and path.exists():
        gemlite.GemLiteLinear.load_config(str(path), print_error=False)


class GemliteW4a16(Candidate):
    name = "gemlite_w4a16"
    family = "gemm"
    layout = "gemlite_w4"

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> Any:
        gemlite = gemlite_for(device)
        if weight.in_features % MIN_IN_FEATURES or weight.group_size < MIN_GROUP_SIZE:
            raise InvalidArgument(
                "shape",
                f"{self.name}: needs in_features % {MIN_IN_FEATURES} == 0 and a group size >= {MIN_GROUP_SIZE}, "
                f"got [{weight.out_features}, {weight.in_features}] group {weight.group_size}",
            )
        layer = gemlite.GemLiteLinear(
            W_nbits=4,
            group_size=weight.group_size,
            in_features=weight.in_features,
            out_features=weight.out_features,
            input_dtype=gemlite.DType.FP16,
            output_dtype=gemlite.DType.FP16,
        )
        bias = None if weight.bias is None else weight.bias.to(device=device, dtype=torch.float16)
        return layer.pack(
            weight.q.to(device),
            weight.scales.to(device=device, dtype=torch.float16),
            weight.zeros.to(device=device, dtype=torch.float16),  # small integers: exact in fp16
            bias=bias,
            fma_mode=False,  # (q - zeros) * scales, not q * scales + (-zeros * scales) rounded to fp16
        )

    def forward(self, x: torch.Tensor, packed: Any) -> torch.Tensor:
        out = packed.forward_auto_no_warmup(x.to(torch.float16))
        return out.to(x.dtype)

    def tune(
        self,
        shapes: Sequence[tuple[int, int]],
        buckets: Sequence[int],
        group_size: int,
        device: torch.device,
        deadline: float,
    ) -> Tuned:
        """Let gemlite autotune every (shape, bucket) now, within the budget, and save its configs (gemlite's own
        file: no table for the decision cache)."""
        gemlite = gemlite_for(device)
        started = time.perf_counter()
        generator = torch.Generator(device=device).manual_seed(0)
        tuned = 0
        path = config_file(gemlite, device)
        gemlite.set_autotune("fast")  # gemlite's own default search, for this loop only
        try:
            for out_features, in_features in dict.fromkeys(shapes):
                weight = random_weight(out_features, in_features, group_size, device, generator, False)
                layer = self.prepare(weight, device)
                for bucket in buckets:
                    if time.perf_counter() >= deadline:
                        break
                    self.forward(torch.randn(bucket, in_features, generator=generator, device=device).half(), layer)
                    tuned += 1
            torch.cuda.synchronize(device)
            if path is not None:
                gemlite.GemLiteLinear.cache_config(str(path))
        finally:
            # Back to no search; set_autotune reloads gemlite's kernels, so the winners come back from the file.
            gemlite.set_autotune("default")
            load_saved_configs(gemlite, device)
        note = (
            f"{self.name}: autotuned {tuned} (shape, bucket) pairs in {time.perf_counter() - started:.1f} s; configs "
            + (f"saved to {path}" if path is not None else "not saved (no cache directory)")
        )
        return Tuned(notes=[note])
