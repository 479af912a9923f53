"""A hosted model's replicas: one engine per device it is placed on, and the routing that picks one per request.

Placement: `NAME=PATH@cuda:1` (one device), `@cuda:0,cuda:2` (a list) or `@all` (every GPU the daemon can use; on a
node without GPUs, every CPU device). Each replica has its own KV cache, CUDA graphs, scheduler thread and state;
no tensor is split across devices (no tensor parallelism).

Routing: a Generate goes to the ready replica with the least load: the tokens its engine still has to process
(queued prompts and generations, and what running sequences have left), ties broken by KV-cache headroom (more free
blocks first), then by placement order.

Failure: a replica whose scheduler thread stops while it serves is failed: it leaves routing, and every request it
still held ends with UNAVAILABLE naming the replica. The other replicas keep serving, and the model stays READY
while at least one replica is.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from awqd.config import PLACE_EVERYWHERE, parse_placement
from awqd.engine.scheduler import EngineLoad, Scheduler
from awqd.engine.warmup import WarmupReport
from awqd.errors import InvalidArgument
from awqd.kernels.linear import KernelRouter
from awqd.models.loader import LoadedModel
from awqd.node.devices import DeviceInfo


class ModelState(StrEnum):
    LOADING = "loading"  # warm-up included
    READY = "ready"
    FAILED = "failed"


@dataclass(eq=False)  # identity: two replicas are never the same engine
class Replica:
    """One engine of a hosted model, on one device."""

    model: str
    path: Path
    device: str  # the torch device, e.g. "cuda:1"
    state: ModelState = ModelState.LOADING
    error: str = ""
    loaded: LoadedModel | None = None
    router: KernelRouter | None = None
    scheduler: Scheduler | None = None
    load_seconds: float = 0.0
    warmup: WarmupReport | None = None
    routed: int = 0  # Generate requests sent here
    unloading: bool = False  # its thread ending is then expected, not a failure

    @property
    def label(self) -> str:
        """How requests and errors name it: MODEL@DEVICE (also UnloadModel's name for one replica)."""
        return f"{self.model}@{self.device}"

    def load(self) -> EngineLoad | None:
        return self.scheduler.load() if self.scheduler is not None and self.state == ModelState.READY else None


def model_state(replicas: Sequence[Replica]) -> ModelState:
    """READY while any replica is ready; LOADING while none is but one still loads; FAILED when all failed."""
    states = {replica.state for replica in replicas}
    if ModelState.READY in states:
        return ModelState.READY
    return ModelState.LOADING if ModelState.LOADING in states or not states else ModelState.FAILED


def least_loaded(replicas: Sequence[Replica]) -> Replica | None:
    """The ready replica with the fewest tokens still to process, then the most free KV blocks; None if none."""
    best, best_key = None, None
    for replica in replicas:
        load = replica.load()
        if load is None:
            continue
        key = (load.tokens, -load.free_blocks)
        if best_key is None or key < best_key:
            best, best_key = replica, key
    return best


def resolve_placement(text: str, devices: Sequence[DeviceInfo], default: str, field: str = "device") -> list[str]:
    """The torch devices a placement names, each one this node has; InvalidArgument naming `field` otherwise."""
    named = parse_placement(text, field)
    usable = [device for device in devices if device.torch_device]
    if not named:
        return [default]
    if named == (PLACE_EVERYWHERE,):
        gpus = [device.torch_device for device in usable if device.kind == "cuda"]
        return gpus or [device.torch_device for device in usable if device.kind == "cpu"]
    known = [device.torch_device for device in usable]
    resolved = [alias(device, known) for device in named]
    unknown = [device for device in resolved if device not in known]
    if unknown:
        raise InvalidArgument(
            field, f"{', '.join(unknown)} is not a device of this node; it has {', '.join(known)}, or write all"
        )
    if len(set(resolved)) != len(resolved):
        raise InvalidArgument(field, f"placement {text!r} names a device twice: one engine per device")
    return resolved


def alias(device: str, known: list[str]) -> str:
    """ "cuda" is cuda:0, and "cpu" the first CPU device when the CPU is listed as several (tests only)."""
    if device == "cuda":
        return "cuda:0"
    if device == "cpu" and "cpu" not in known and "cpu:0" in known:
        return "cpu:0"
    return device
