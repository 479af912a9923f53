"""A decode step that is launched but not yet read: its rows, its sampled ids on the device, and their way to the host.

With overlapped decode (--overlap-decode, the default) the scheduler launches the next step before it reads this
one's ids: the next step's input ids are gathered from these on the device, and the host streams this step's tokens
while the next one runs. The ids go to pinned host memory with non_blocking=True and an event marks their arrival.
On the CPU the copy is a plain one and there is no event: the same logic, with nothing to overlap.
"""

from dataclasses import dataclass, field

import torch

from awqd.engine.sequence import Sequence
from awqd.engine.step import StepKernel


@dataclass
class InFlightStep:
    rows: list[Sequence]  # row i's sequence
    ids: torch.Tensor  # int64 [rows] on the device: the sampled ids
    host_ids: torch.Tensor  # their copy in host memory, complete once `ready` has passed
    ready: torch.cuda.Event | None  # None on the CPU: the copy is complete already
    kernel: StepKernel
    started: float  # perf_counter at launch
    index: dict[Sequence, int] = field(init=False)
    # Sequences that left the batch while this step still writes their next position: their blocks are free only
    # once it has completed.
    release_after: list[Sequence] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.index = {seq: row for row, seq in enumerate(self.rows)}

    @classmethod
    def start(cls, rows: list[Sequence], ids: torch.Tensor, kernel: StepKernel, started: float) -> "InFlightStep":
        """Starts the sampled ids' copy to the host; nothing here waits for the device."""
        if ids.device.type != "cuda":
            return cls(rows, ids, ids.cpu(), None, kernel, started)
        host_ids = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
        host_ids.copy_(ids, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return cls(rows, ids, host_ids, ready, kernel, started)

    def ids_for(self, rows: list[Sequence]) -> torch.Tensor:
        """The next step's input ids, on the device: each row's id from this step. rows keeps this step's order and
        may leave some out (those that finished or left)."""
        if len(rows) == len(self.rows):
            return self.ids
        index = torch.tensor([self.index[seq] for seq in rows], dtype=torch.int64)
        return self.ids.index_select(0, index.to(self.ids.device, non_blocking=True))

    def tokens(self) -> list[int]:
        """Waits for the step (and the copy) to complete; row i's sampled id."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.host_ids.tolist()
