"""What awqd's Triton candidates share: the awqd_w4 layout, per-device tuning and the reshape around a kernel."""

import abc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from awqd.kernels.base import Candidate, DeferredNorm, Tuned
from awqd.kernels.triton import tuning
from awqd.kernels.triton.layout import LAYOUT, AwqdW4, check_activations, pack_awqd_w4
from awqd.quant.tensors import QuantizedWeight


@dataclass(frozen=True)
class TritonKernel:
    launch: Callable[..., torch.Tensor]  # (x [rows, in], packed, config or None for the default) -> y
    config_type: type
    tuning_space: Callable[[int], Sequence[Any]]  # bucket -> configurations worth timing there (may be empty)
    launch_gated: Callable[..., torch.Tensor] | None = None  # (x, packed, config or None) -> silu(gate) * up
    # (x, packed, residual, norm weight, eps, config or None) -> (residual + y, DeferredNorm); with it, launch and
    # launch_gated take norm=DeferredNorm
    launch_add_norm: Callable[..., tuple[torch.Tensor, DeferredNorm]] | None = None
    compile_tile: Callable[..., Any] | None = None  # launch's arguments -> compiles, runs nothing (tuning.precompile)


class AwqdW4Candidate(Candidate):
    layout = LAYOUT

    @abc.abstractmethod
    def kernel(self) -> TritonKernel:
        """The kernel's launch wrapper and tuning space; importing them imports triton."""

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> AwqdW4:
        self.kernel()  # a missing or broken Triton fails the load, not a model step
        return pack_awqd_w4(weight, device)

    def forward(self, x: torch.Tensor, packed: AwqdW4) -> torch.Tensor:
        rows, config = self.rows_and_tile(x, packed)
        return self.kernel().launch(rows, packed, config).reshape(*x.shape[:-1], packed.out_features)

    def forward_gated(self, x: torch.Tensor, packed: AwqdW4) -> torch.Tensor | None:
        launch = self.kernel().launch_gated
        if launch is None:
            return None
        rows, config = self.rows_and_tile(x, packed)  # the fused weight's own tile
        return launch(rows, packed, config).reshape(*x.shape[:-1], packed.out_features // 2)

    def forward_add_norm(
        self, x: torch.Tensor, packed: AwqdW4, residual: torch.Tensor, norm_weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, DeferredNorm] | None:
        launch = self.kernel().launch_add_norm
        if launch is None:
            return None
        rows, config = self.rows_and_tile(x, packed)
        total, norm = launch(rows, packed, residual.reshape(rows.shape[0], -1), norm_weight, eps, config)
        leading = x.shape[:-1]
        squares = norm.partial_squares.reshape(*leading, -1)
        return total.reshape(*leading, -1), DeferredNorm(norm.weighted.reshape(*leading, -1), squares, eps)

    def forward_deferred(self, norm: DeferredNorm, packed: AwqdW4, gated: bool) -> torch.Tensor:
        kernel = self.kernel()
        if kernel.launch_add_norm is None:
            return super().forward_deferred(norm, packed, gated)
        rows, config = self.rows_and_tile(norm.weighted, packed)
        y = (kernel.launch_gated if gated else kernel.launch)(rows, packed, config, norm=norm)
        return y.reshape(*norm.weighted.shape[:-1], y.shape[-1])

    def rows_and_tile(self, x: torch.Tensor, packed: AwqdW4) -> tuple[torch.Tensor, Any]:
        """x as contiguous rows [rows, in_features], and the tuned tile for them (None: the kernel's default)."""
        check_activations(x, packed)
        rows = x.reshape(-1, packed.in_features).contiguous()
        return rows, tuning.lookup(self.name, x.device, packed.out_features, packed.in_features, rows.shape[0])

    def tune(
        self,
        shapes: Sequence[tuple[int, int]],
        buckets: Sequence[int],
        group_size: int,
        device: torch.device,
        deadline: float,
    ) -> Tuned:
        kernel = self.kernel()
        started = time.perf_counter()
        compiled = None
        if kernel.compile_tile is not None and started < deadline:
            until = started + tuning.COMPILE_SHARE * (deadline - started)
            compiled = tuning.precompile(
                kernel.compile_tile, kernel.tuning_space, shapes, buckets, group_size, device, until
            )
        stored, untuned = tuning.tune(
            self.name, kernel.launch, kernel.tuning_space, shapes, buckets, group_size, device, deadline
        )
        self.install_tuning(stored, device)
        notes = [
            f"{self.name}: tuned {sum(map(len, stored.values()))} (shape, bucket) tiles in "
            f"{time.perf_counter() - started:.1f} s"
            + (f", {compiled} compiled first on {tuning.COMPILE_THREADS} threads" if compiled is not None else "")
        ]
        if untuned:
            notes.append(
                f"{self.name}: the time budget left {untuned} (shape, bucket) pairs on the untuned default tiles"
            )
        return Tuned(stored, notes)

    def install_tuning(self, stored: dict[str, Any], device: torch.device) -> None:
        tuning.install(self.name, device, stored, self.kernel().config_type)
