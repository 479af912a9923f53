"""What every AWQ kernel candidate implements, and how a model step finds its kernel.

A candidate packs the canonical QuantizedWeight into its own layout once, at
load, and then runs the linear layer from that layout. Candidates that share
a layout name share the packed tensors.
"""

import abc
import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from awqd.errors import FailedPrecondition
from awqd.quant.tensors import QuantizedWeight


@dataclass(frozen=True)
class DeferredNorm:
    """An RMS norm whose 1/rms is left for the next linear to apply to its output (Candidate.forward_add_norm):
    weighted = residual * norm weight (rounded to the dtype) [rows, hidden], and partial sums of the residual's
    squares, fp32 [rows, any count], that add up to each row's. The linear's output is then (weighted @ W.T) / rms:
    the same as on the normed rows, rounded at other points."""

    weighted: torch.Tensor
    partial_squares: torch.Tensor
    eps: float

    def inverse_rms(self) -> torch.Tensor:
        """fp32 [..., 1], for the weighted rows [..., hidden]."""
        mean = self.partial_squares.sum(-1, keepdim=True) / self.weighted.shape[-1]
        return torch.rsqrt(mean + self.eps)


@dataclass
class Tuned:
    """What Candidate.tune did: the table to cache and install again on later boots (None: nothing to tune), and
    what an operator should read about it (selection's notes)."""

    table: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


class Candidate(abc.ABC):
    name: str  # unique, e.g. "autoawq_gemv_cuda"
    family: str  # "reference" | "gemm" | "gemv" | "gemv_fast" | "dequant_matmul"
    layout: str  # packed layout name; equal names mean interchangeable packed tensors
    precision: torch.dtype | None = None  # what it computes in, where not the model's dtype; sets its tolerance

    @abc.abstractmethod
    def prepare(self, weight: QuantizedWeight, device: torch.device) -> Any:
        """Pack `weight` into this candidate's layout on `device`."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, packed: Any) -> torch.Tensor:
        """y = x @ W.T (+ bias) for x [..., in_features]; returns [..., out_features] in x's dtype."""

    def forward_gated(self, x: torch.Tensor, packed: Any) -> torch.Tensor | None:
        """silu(gate) * up in one kernel, for an MLP's fused [gate; up] weight (gate: the first out_features / 2
        rows of W): [..., out_features / 2] in x's dtype, rounded as forward and then the gating would. None: this
        kernel has no gated form, and the caller gates forward's output."""
        del x, packed
        return None

    def forward_add_norm(
        self, x: torch.Tensor, packed: Any, residual: torch.Tensor, norm_weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, DeferredNorm] | None:
        """For a layer whose output joins the residual stream ahead of an RMS norm and another layer run by this
        kernel: (residual + forward(x), that sum's norm deferred to the next layer's launch), in this kernel's
        launch. None: this kernel has no such form, and the caller norms forward's output."""
        del x, packed, residual, norm_weight, eps
        return None

    def forward_deferred(self, norm: DeferredNorm, packed: Any, gated: bool) -> torch.Tensor:
        """forward (gated: forward_gated) on the rows a DeferredNorm stands for. Only kernels whose forward_add_norm
        makes one have this form; the others refuse it."""
        del norm, packed, gated
        raise FailedPrecondition(
            f"kernel {self.name} cannot take a deferred norm: only a kernel whose forward_add_norm defers one can"
        )

    def tune(
        self,
        shapes: Sequence[tuple[int, int]],
        buckets: Sequence[int],
        group_size: int,
        device: torch.device,
        deadline: float,
    ) -> Tuned:
        """Time this candidate's launch configurations on `device` and use the fastest. Stops at `deadline`
        (time.perf_counter()), leaving the rest on defaults."""
        return Tuned()

    def install_tuning(self, stored: dict[str, Any], device: torch.device) -> None:
        """Use a table an earlier tune() returned (read back from the decision cache)."""
        del stored, device  # candidates without launch configurations have nothing to install


@dataclass(frozen=True)
class Dispatch:
    """The kernel per batch-size bucket: a step with n tokens uses the first bucket >= n.

    Steps larger than the last bucket use the last bucket's candidate.
    """

    buckets: Sequence[int]
    candidates: Sequence[Candidate]
    _layouts: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.buckets or len(self.buckets) != len(self.candidates):
            raise ValueError("a dispatch needs one candidate per bucket")
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError("buckets must be strictly increasing")
        object.__setattr__(self, "_layouts", tuple(dict.fromkeys(c.layout for c in self.candidates)))

    @classmethod
    def single(cls, candidate: Candidate) -> "Dispatch":
        return cls(buckets=(1,), candidates=(candidate,))

    def candidate_for(self, num_tokens: int) -> Candidate:
        position = bisect.bisect_left(self.buckets, num_tokens)
        return self.candidates[min(position, len(self.candidates) - 1)]

    def bucket_for(self, num_tokens: int) -> int:
        position = bisect.bisect_left(self.buckets, num_tokens)
        return self.buckets[min(position, len(self.buckets) - 1)]

    @property
    def layouts(self) -> tuple[str, ...]:
        return self._layouts

    def unique_candidates(self) -> list[Candidate]:
        return list({c.name: c for c in self.candidates}.values())
