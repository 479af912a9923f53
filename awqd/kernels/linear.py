"""The quantized linear layer that replaces nn.Linear, and the router that picks its kernel at every step.

All AwqLinear modules of one model share one KernelRouter, so swapping the model's Dispatch (or pinning a
kernel for one request) is a single assignment. Each layer packs its weight once per distinct layout among the
kernels it may run, at load; the forward pass only looks up the kernel and its packed tensors.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from awqd.errors import FailedPrecondition
from awqd.kernels.base import Candidate, DeferredNorm, Dispatch
from awqd.quant.tensors import QuantizedWeight


class KernelRouter:
    """The model's current Dispatch plus an optional pinned candidate that overrides it (a request override)."""

    def __init__(self, dispatch: Dispatch):
        self.dispatch = dispatch
        self.pinned: Candidate | None = None

    def pin(self, candidate: Candidate) -> None:
        self.pinned = candidate

    def unpin(self) -> None:
        self.pinned = None

    def candidate_for(self, num_tokens: int) -> Candidate:
        if self.pinned is not None:
            return self.pinned
        return self.dispatch.candidate_for(num_tokens)

    def bucket_for(self, num_tokens: int) -> int:
        return self.dispatch.bucket_for(num_tokens)


def tensor_bytes(packed: Any) -> int:
    """Bytes of every distinct tensor inside a packed layout (a tensor, a mapping, a sequence or a dataclass)."""
    seen: dict[int, int] = {}

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            seen[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for item in dataclasses.fields(value):
                visit(getattr(value, item.name))

    visit(packed)
    return sum(seen.values())


class AwqLinear(torch.nn.Module):
    """y = x @ W.T (+ bias) with W held only in the packed layouts of the kernels this layer may run."""

    def __init__(
        self,
        weight: QuantizedWeight,
        router: KernelRouter,
        device: torch.device,
        extra_candidates: Sequence[Candidate] = (),
    ):
        super().__init__()
        self.in_features = weight.in_features
        self.out_features = weight.out_features
        self.group_size = weight.group_size
        self.has_bias = weight.bias is not None
        self.router = router
        self.layouts: dict[str, Any] = {}
        # The first layout is the dispatch's first kernel's: the one the model needs whatever else it holds.
        for candidate in [*router.dispatch.unique_candidates(), *extra_candidates]:
            if candidate.layout not in self.layouts:
                self.layouts[candidate.layout] = candidate.prepare(weight, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        candidate, packed = self.routed(x)
        return candidate.forward(x, packed)

    def forward_gated(self, x: torch.Tensor) -> torch.Tensor | None:
        """For an MLP's fused [gate; up] layer: silu(gate) * up from the routed kernel in one launch, or None when
        that kernel has no gated form (Candidate.forward_gated)."""
        candidate, packed = self.routed(x)
        return candidate.forward_gated(x, packed)

    def forward_add_norm(
        self, x: torch.Tensor, residual: torch.Tensor, norm_weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, DeferredNorm] | None:
        """For a layer whose output joins the residual stream ahead of an RMS norm and another layer of this model:
        (residual + y, its norm deferred to the next layer's launch) from the routed kernel, or None when that kernel
        has no such form (Candidate.forward_add_norm)."""
        candidate, packed = self.routed(x)
        return candidate.forward_add_norm(x, packed, residual, norm_weight, eps)

    def forward_deferred(self, norm: DeferredNorm, gated: bool = False) -> torch.Tensor:
        """This layer (gated: as forward_gated) on the rows a forward_add_norm of the same step deferred the norm of:
        the router picks the same kernel for them, which has the form."""
        candidate, packed = self.routed(norm.weighted)
        return candidate.forward_deferred(norm, packed, gated)

    def routed(self, x: torch.Tensor) -> tuple[Candidate, Any]:
        """The kernel the router picks for x's token count, and this layer's weight in its layout."""
        candidate = self.router.candidate_for(x.numel() // self.in_features)
        packed = self.layouts.get(candidate.layout)
        if packed is None:
            raise FailedPrecondition(
                f"kernel {candidate.name} needs layout {candidate.layout!r}, but the model was loaded with layouts "
                f"{sorted(self.layouts)}; reload it with that kernel among its candidates"
            )
        return candidate, packed

    def layout_bytes(self) -> dict[str, int]:
        return {layout: tensor_bytes(packed) for layout, packed in self.layouts.items()}

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}, "
            f"group_size={self.group_size}, layouts={list(self.layouts)}"
        )
