"""Plugin kernel candidates for the isolation tests: four that must be rejected, each for its own reason, one whose
tuned tile is wrong at large buckets, and one correct one that is faster than the built-ins on the CPU. Loaded by
spec, e.g. "trust_plugins:Aborts", with this directory on the path (tests/kernels/test_isolation.py puts it
there)."""

import os
import time
from typing import ClassVar

import torch
import torch.nn.functional as F

from awqd.kernels.base import Candidate, Tuned
from awqd.quant.reference import dequantize, reference_linear


class CpuPlugin(Candidate):
    family = "dequant_matmul"
    layout = "canonical"

    def eligible(self, device) -> tuple[bool, str]:
        if device.kind != "cpu":
            return False, "a CPU-only test kernel"
        return True, "runs on the host CPU"

    def prepare(self, weight, device):
        return weight

    def forward(self, x, packed):
        return reference_linear(x.float(), packed).to(x.dtype)


class Aborts(CpuPlugin):
    name = "plugin_aborts"

    def forward(self, x, packed):
        os.abort()


class Hangs(CpuPlugin):
    name = "plugin_hangs"

    def forward(self, x, packed):
        time.sleep(3600)


class Stale(CpuPlugin):
    """Computes its first result per weight and returns it for every later input: caching the output."""

    name = "plugin_stale"

    def __init__(self):
        self.first: dict[int, tuple] = {}

    def forward(self, x, packed):
        if id(packed) not in self.first:
            # Holding the weight keeps its id from being reused by a later weight of another shape.
            self.first[id(packed)] = (packed, super().forward(x, packed))
        return self.first[id(packed)][1]


class NoWorkWhenWarm(CpuPlugin):
    """Right for every new input, but remembers its result per input tensor, so once warmed up on the timing
    inputs it does no work at all: its timing falls below what reading the weights takes."""

    name = "plugin_no_work_when_warm"

    def __init__(self):
        self.seen: dict[tuple, tuple] = {}

    def forward(self, x, packed):
        key = (id(packed), id(x), x._version)
        if key not in self.seen:
            # Holding the weight and the input keeps their ids from being reused by other tensors.
            self.seen[key] = (packed, x, super().forward(x, packed))
        return self.seen[key][2]


class DenseFloat(CpuPlugin):
    """Correct and honestly fast on the CPU: dequantizes once at load, then one BLAS call per step."""

    name = "plugin_dense_fp32"
    layout = "dense_fp32"

    def prepare(self, weight, device):
        bias = weight.bias.float().to(device) if weight.bias is not None else None
        return dequantize(weight, torch.float32).to(device), bias

    def forward(self, x, packed):
        dense, bias = packed
        return F.linear(x.float(), dense, bias).to(x.dtype)


RIGHT_ENV = "TRUST_PLUGINS_WIDE_TILE_RIGHT"


class WrongWhenTunedWide(CpuPlugin):
    """Right untuned, and right tuned up to 64 rows; the tile it tunes for more rows drops the bias and the last
    input column. The first check (1, 7 and 64 rows, before tuning) cannot see that. With RIGHT_ENV set, it is
    right everywhere."""

    name = "plugin_wrong_when_tuned_wide"
    installed: ClassVar[dict[str, dict]] = {}  # device -> table: per process, as awqd's Triton kernels keep theirs

    def tune(self, shapes, buckets, group_size, device, deadline):
        table = {"wide": {"min_rows": 65}}
        self.install_tuning(table, device)
        return Tuned(table, [f"{self.name}: tuned 1 tile"])

    def install_tuning(self, stored, device):
        WrongWhenTunedWide.installed[str(device)] = stored

    def forward(self, x, packed):
        wide = WrongWhenTunedWide.installed.get(str(x.device), {}).get("wide")
        if wide and x.reshape(-1, x.shape[-1]).shape[0] >= wide["min_rows"] and not os.environ.get(RIGHT_ENV):
            return F.linear(x[..., :-1].float(), dequantize(packed, torch.float32)[:, :-1]).to(x.dtype)
        return super().forward(x, packed)


class NotACandidate:
    name = "plugin_not_a_candidate"
