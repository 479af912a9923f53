"""Versions of the components awqd runs on, each with the reason when it is missing or unusable."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from importlib import metadata

import torch

from awqd.node.devices import Discovery


@dataclass(frozen=True)
class Component:
    name: str
    version: str  # "" when unknown
    available: bool
    reason: str  # why it is not available; "" when it is


def component_versions(discovery: Discovery) -> list[Component]:
    return [
        _from_nvml("nvidia_driver", discovery.driver_version, discovery),
        _from_nvml("cuda_driver", discovery.cuda_driver_version, discovery),
        _cuda_runtime(discovery),
        Component("torch", torch.__version__, True, ""),
        _distribution("triton", "triton", "pytorch-triton"),
        _distribution("transformers", "transformers"),
        _distribution("autoawq", "autoawq"),  # never imported here: importing awq is slow and noisy
        _extension("awq_ext"),
        _extension("awq_v2_ext"),
        _distribution("fbgemm_gpu_genai", "fbgemm-gpu-genai"),  # whether it loads: the capability probes say
        _distribution("gemlite", "gemlite"),
        _distribution("nvidia_ml_py", "nvidia-ml-py"),
        _distribution("grpcio", "grpcio"),
        _distribution("protobuf", "protobuf"),
    ]


@functools.cache
def import_error(module: str) -> str | None:
    """None when `module` imports, else the error in words (e.g. an undefined symbol from an ABI mismatch)."""
    try:
        importlib.import_module(module)  # torch is already imported, as the compiled extensions require
    except Exception as error:  # ImportError, OSError from the loader, or whatever the module's init raises
        return str(error) or type(error).__name__
    return None


def _from_nvml(name: str, version: str | None, discovery: Discovery) -> Component:
    if version is not None:
        return Component(name, version, True, "")
    return Component(name, "", False, discovery.nvml_error or "NVML did not report it")


def _cuda_runtime(discovery: Discovery) -> Component:
    version = torch.version.cuda
    if version is None:
        hip = torch.version.hip
        return Component(
            "cuda_runtime", "", False, f"torch is a ROCm build (HIP {hip})" if hip else "torch is a CPU build"
        )
    if not discovery.torch_cuda_available:
        return Component("cuda_runtime", version, False, "torch cannot use CUDA on this node")
    return Component("cuda_runtime", version, True, "")


def _distribution(name: str, *distributions: str) -> Component:
    """Version from package metadata, so that nothing heavy is imported; the first installed name wins."""
    for distribution in distributions:
        try:
            return Component(name, metadata.version(distribution), True, "")
        except metadata.PackageNotFoundError:
            continue
    return Component(name, "", False, f"{' or '.join(distributions)} is not installed")


def _extension(module: str) -> Component:
    """AutoAWQ's compiled kernels (autoawq-kernels): installed is not enough, they must load against this torch."""
    try:
        version = metadata.version("autoawq-kernels")
    except metadata.PackageNotFoundError:
        version = ""
    error = import_error(module)
    return Component(module, version, error is None, error or "")
