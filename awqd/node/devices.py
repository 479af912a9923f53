"""Discover the node's execution devices: the CPU, then each GPU NVML sees, matched to torch's CUDA devices by UUID.

No driver and no GPU are normal outcomes: discovery reports them in words and never raises.

For tests and development only, `cpu_devices` > 1 (--cpu-devices, AWQD_CPU_DEVICES) lists the CPU that many times,
as cpu:0 .. cpu:N-1: torch places them all on the one host CPU, so replicas, placement and routing run for real
with real engines, but they share the host's cores and RAM. Their UUIDs are cpu-0 .. cpu-N-1; they keep the CPU's
name, so they share one kernel measurement as identical GPUs do.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import pynvml
import torch

from awqd.errors import InvalidArgument

T = TypeVar("T")

NVML_LIBRARY = "libnvidia-ml.so.1"  # what pynvml loads on Linux; named so "not found" says what was looked for


@dataclass(frozen=True)
class DeviceInfo:
    index: int  # 0 is the CPU (0..N-1 for N simulated CPU devices), then GPUs in NVML order
    kind: str  # "cpu" | "cuda"
    uuid: str  # NVML UUID, "cpu" for the CPU
    name: str
    compute_capability: tuple[int, int] | None  # None for the CPU
    memory_total_bytes: int  # host RAM for the CPU
    torch_device: str  # "cpu", "cuda:N" (torch's index for that UUID), or "" if torch cannot see it
    nvml_index: int | None

    @property
    def capability_str(self) -> str:
        if self.compute_capability is None:
            return ""
        major, minor = self.compute_capability
        return f"{major}.{minor}"


@dataclass(frozen=True)
class Discovery:
    devices: tuple[DeviceInfo, ...]  # the CPU is always devices[0]
    nvml_available: bool
    nvml_error: str  # "" when GPUs were found
    nvml_device_count: int
    torch_cuda_available: bool
    torch_device_count: int
    warnings: tuple[str, ...]  # disagreements between NVML and torch, in words
    driver_version: str | None
    cuda_driver_version: str | None  # e.g. "13.0"


@dataclass(frozen=True)
class _Gpu:
    """One GPU as a single source (NVML or torch) reports it."""

    index: int  # NVML's index or torch's, depending on the source
    uuid: str  # "GPU-<hex uuid>"; "" when torch does not report one
    name: str
    compute_capability: tuple[int, int]
    memory_total_bytes: int


@dataclass
class _NvmlReport:
    available: bool = False
    error: str = ""
    device_count: int = 0
    gpus: list[_Gpu] = field(default_factory=list)
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class _TorchReport:
    cuda_available: bool = False
    device_count: int = 0
    gpus: list[_Gpu] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def discover(cpu_devices: int = 1) -> Discovery:
    nvml = _probe_nvml()
    cuda = _probe_torch(nvml_sees_gpus=bool(nvml.gpus))
    gpus, match_warnings = _match(nvml, cuda, first_index=max(1, cpu_devices))
    return Discovery(
        devices=(*_cpus(cpu_devices), *gpus),
        nvml_available=nvml.available,
        nvml_error=nvml.error,
        nvml_device_count=nvml.device_count,
        torch_cuda_available=cuda.cuda_available,
        torch_device_count=cuda.device_count,
        warnings=tuple(nvml.warnings + cuda.warnings + match_warnings),
        driver_version=nvml.driver_version,
        cuda_driver_version=nvml.cuda_driver_version,
    )


def _cpus(count: int) -> list[DeviceInfo]:
    """The host CPU, or `count` simulated CPU devices (tests and development only; see the module docstring)."""
    name, memory = _cpu_name(), _meminfo_bytes("MemTotal") or _sysconf_bytes("SC_PHYS_PAGES")
    if count <= 1:
        return [DeviceInfo(0, "cpu", "cpu", name, None, memory, "cpu", None)]
    return [DeviceInfo(i, "cpu", f"cpu-{i}", name, None, memory, f"cpu:{i}", None) for i in range(count)]


def memory_free_bytes(device: DeviceInfo) -> int:
    """Free memory right now; 0 when no reading is possible."""
    if device.kind == "cpu":
        return _meminfo_bytes("MemAvailable") or _sysconf_bytes("SC_AVPHYS_PAGES")
    try:
        if device.nvml_index is not None:
            with _nvml_session():
                handle = pynvml.nvmlDeviceGetHandleByUUID(device.uuid)
                return int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
        if device.torch_device:
            return int(torch.cuda.mem_get_info(device.torch_device)[0])
    except Exception:  # a lost GPU or a driver hiccup must not take a status call down
        return 0
    return 0


@contextmanager
def _nvml_session() -> Iterator[None]:
    pynvml.nvmlInit()  # NVML counts inits, so nested or concurrent sessions are safe
    try:
        yield
    finally:
        pynvml.nvmlShutdown()


def _probe_nvml() -> _NvmlReport:
    report = _NvmlReport()
    try:
        with _nvml_session():
            report.available = True
            report.driver_version = _nvml_read(report, "the driver version", _driver_version)
            report.cuda_driver_version = _nvml_read(report, "the CUDA driver version", _cuda_driver_version)
            report.device_count = pynvml.nvmlDeviceGetCount()
            for nvml_index in range(report.device_count):
                gpu = _nvml_read(report, f"GPU {nvml_index}", partial(_nvml_gpu, nvml_index))
                if gpu is not None:
                    report.gpus.append(gpu)
    except pynvml.NVMLError_LibraryNotFound as error:
        report.error = f"{error} ({NVML_LIBRARY})"
    except Exception as error:  # NVML errors, or a pynvml that does not match the driver
        report.error = str(error) or type(error).__name__
    if report.available and not report.error:
        if report.device_count == 0:
            report.error = "NVML found no GPU"
        elif not report.gpus:
            report.error = f"NVML found {report.device_count} GPU(s) but could read none"
    return report


def _nvml_read(report: _NvmlReport, what: str, read: Callable[[], T]) -> T | None:
    """One NVML query that may fail alone (a lost GPU, a call the driver lacks) without hiding the rest."""
    try:
        return read()
    except pynvml.NVMLError as error:
        report.warnings.append(f"NVML cannot read {what}: {error}")
        return None


def _driver_version() -> str:
    return _text(pynvml.nvmlSystemGetDriverVersion())


def _cuda_driver_version() -> str:
    version = pynvml.nvmlSystemGetCudaDriverVersion_v2()  # e.g. 13000 for 13.0
    return f"{version // 1000}.{version % 1000 // 10}"


def _nvml_gpu(nvml_index: int) -> _Gpu:
    handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    return _Gpu(
        index=nvml_index,
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        compute_capability=(int(major), int(minor)),
        memory_total_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
    )


def _probe_torch(nvml_sees_gpus: bool) -> _TorchReport:
    report = _TorchReport()
    # torch reports driver trouble (too old, capability unsupported) as Python warnings; keep them as findings.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            report.cuda_available = torch.cuda.is_available()
            report.device_count = torch.cuda.device_count() if report.cuda_available else 0
        except Exception as error:  # CUDA init fails in driver-specific ways
            report.warnings.append(f"torch cannot query CUDA: {error}")
        for torch_index in range(report.device_count):
            try:
                report.gpus.append(_torch_gpu(torch_index))
            except Exception as error:
                report.warnings.append(f"torch cannot read cuda:{torch_index}: {error}")
        if nvml_sees_gpus and torch.version.cuda is None:
            report.warnings.append(f"torch {torch.__version__} is a CPU build: it cannot use the GPUs NVML sees")
        elif nvml_sees_gpus and not report.cuda_available:
            report.warnings.append(f"torch cannot use CUDA: {_torch_cuda_init_error()}{_visible_devices_note()}")
    report.warnings.extend(f"torch: {warning.message}" for warning in caught)
    return report


def _torch_gpu(torch_index: int) -> _Gpu:
    props = torch.cuda.get_device_properties(torch_index)
    uuid = getattr(props, "uuid", None)
    return _Gpu(
        index=torch_index,
        uuid=f"GPU-{uuid}" if uuid is not None else "",
        name=props.name,
        compute_capability=(props.major, props.minor),
        memory_total_bytes=int(props.total_memory),
    )


def _torch_cuda_init_error() -> str:
    try:
        torch.cuda.init()
    except Exception as error:
        return str(error) or type(error).__name__
    return "torch.cuda.is_available() returned False"


def _match(nvml: _NvmlReport, cuda: _TorchReport, first_index: int = 1) -> tuple[list[DeviceInfo], list[str]]:
    """Pair NVML GPUs with torch devices by UUID; torch-only GPUs follow the NVML ones."""
    findings: list[str] = []
    if nvml.gpus and cuda.cuda_available and nvml.device_count != cuda.device_count:
        findings.append(
            f"NVML sees {nvml.device_count} GPU(s) but torch sees {cuda.device_count}{_visible_devices_note()}"
        )

    torch_by_uuid = {_uuid_key(gpu.uuid): gpu for gpu in cuda.gpus if gpu.uuid}
    by_order = bool(nvml.gpus and cuda.gpus) and not torch_by_uuid
    if by_order:
        findings.append("torch reports no device UUIDs: NVML GPUs were matched to torch devices by order")

    devices: list[DeviceInfo] = []
    matched: set[int] = set()
    for position, gpu in enumerate(nvml.gpus):
        if by_order:
            partner = cuda.gpus[position] if position < len(cuda.gpus) else None
        else:
            partner = torch_by_uuid.get(_uuid_key(gpu.uuid))
        if partner is not None:
            matched.add(partner.index)
        elif cuda.cuda_available:
            findings.append(
                f"GPU {gpu.index} ({gpu.name}, {gpu.uuid}) is not visible to torch{_visible_devices_note()}"
            )
        torch_device = f"cuda:{partner.index}" if partner is not None else ""
        devices.append(_gpu_device(first_index + len(devices), gpu, torch_device, nvml_index=gpu.index))

    for gpu in cuda.gpus:
        if gpu.index in matched:
            continue
        if nvml.available:
            findings.append(
                f"torch device cuda:{gpu.index} ({gpu.name}, {gpu.uuid or 'no UUID'}) is not among NVML's GPUs"
            )
        devices.append(_gpu_device(first_index + len(devices), gpu, f"cuda:{gpu.index}", nvml_index=None))
    return devices, findings


def _gpu_device(index: int, gpu: _Gpu, torch_device: str, nvml_index: int | None) -> DeviceInfo:
    return DeviceInfo(
        index=index,
        kind="cuda",
        uuid=gpu.uuid,
        name=gpu.name,
        compute_capability=gpu.compute_capability,
        memory_total_bytes=gpu.memory_total_bytes,
        torch_device=torch_device,
        nvml_index=nvml_index,
    )


def _visible_devices_note() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""


def _uuid_key(uuid: str) -> str:
    # NVML says "GPU-<hex>", torch says "<hex>"; compare the hex alone.
    return uuid.lower().removeprefix("gpu-")


def _text(value: str | bytes) -> str:
    # nvidia-ml-py returned bytes before 11.515; later versions return str.
    return value.decode() if isinstance(value, bytes) else value


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or sys.platform


def _meminfo_bytes(key: str) -> int:
    """A /proc/meminfo field in bytes; 0 where there is no /proc (not Linux)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                name, _, value = line.partition(":")
                if name == key:
                    return int(value.split()[0]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _sysconf_bytes(pages_name: str) -> int:
    try:
        return os.sysconf(pages_name) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 0


def find_device(torch_device: str) -> DeviceInfo:
    devices = [d for d in discover().devices if d.torch_device]
    for device in devices:
        if device.torch_device == torch_device or (torch_device == "cuda" and device.kind == "cuda"):
            return device
    known = ", ".join(d.torch_device for d in devices)
    raise InvalidArgument("--device", f"no device {torch_device!r} here; known: {known}")
