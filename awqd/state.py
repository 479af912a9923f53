"""The node's state as Describe and Benchmark report it: plain data that the daemon builds and the server and the
benchmark read, so both import it downwards."""

from dataclasses import dataclass
from datetime import datetime

from awqd.kernels.selection import CandidateReport, DeviceDecisions
from awqd.node.devices import DeviceInfo, Discovery
from awqd.node.versions import Component


@dataclass(frozen=True)
class DeviceState:
    info: DeviceInfo
    memory_free_bytes: int
    kernels: list[CandidateReport]
    decisions: DeviceDecisions | None
    selection_deferred: bool = False  # hosts no model yet: its selection runs when one is placed on it


@dataclass(frozen=True)
class NodeState:
    hostname: str
    awqd_version: str
    started_at: datetime
    uptime_s: float
    components: list[Component]
    discovery: Discovery
    devices: list[DeviceState]
