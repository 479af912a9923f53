"""What each kernel candidate needs installed, probed for real: importable modules, registered torch ops, a CUDA
build of torch that sees a GPU. The capability table (awqd.kernels.capability) names these per candidate."""

import functools
import importlib
import importlib.metadata
from collections.abc import Mapping, Sequence
from types import ModuleType

import torch

from awqd.node.versions import import_error

# Requirement names a row may list; `probe_requirements` checks each for real.
TORCH = "torch"
TORCH_CUDA = "torch_cuda"
AWQ_EXT = "awq_ext"
AWQ_V2_EXT = "awq_v2_ext"
TRITON = "triton"
TORCH_INT4_CUDA = "torch_int4_cuda"
TORCH_INT4_CPU = "torch_int4_cpu"
FBGEMM_ROWWISE = "fbgemm_bf16i4_rowwise"
FBGEMM_SHUFFLED = "fbgemm_bf16i4_shuffled"
GEMLITE = "gemlite"

FBGEMM_SOURCE = f"fbgemm-gpu-genai: pip install awqd[fbgemm], a release built for torch {torch.__version__}"
REQUIREMENT_SOURCES = {
    TORCH: "torch",
    TORCH_CUDA: "a CUDA build of torch and a visible GPU",
    AWQ_EXT: "autoawq-kernels",
    AWQ_V2_EXT: "autoawq-kernels",
    TRITON: "triton",
    TORCH_INT4_CUDA: "torch's aten._convert_weight_to_int4pack and _weight_int4pack_mm",
    TORCH_INT4_CPU: "torch >= 2.6: aten._convert_weight_to_int4pack_for_cpu and _weight_int4pack_mm_for_cpu",
    FBGEMM_ROWWISE: FBGEMM_SOURCE,
    FBGEMM_SHUFFLED: FBGEMM_SOURCE,
    GEMLITE: "gemlite: pip install awqd[gemlite], with triton >= 3.6",
}
# The ops each requirement needs registered (namespace, name).
TORCH_INT4_CUDA_OPS = (("aten", "_convert_weight_to_int4pack"), ("aten", "_weight_int4pack_mm"))
TORCH_INT4_CPU_OPS = (("aten", "_convert_weight_to_int4pack_for_cpu"), ("aten", "_weight_int4pack_mm_for_cpu"))
FBGEMM_ROWWISE_OPS = (("fbgemm", "bf16i4bf16_rowwise"),)
FBGEMM_SHUFFLED_OPS = (("fbgemm", "bf16i4bf16_shuffled"), ("fbgemm", "preshuffle_i4"))
FBGEMM_MODULE = "fbgemm_gpu.experimental.gen_ai"
GEMLITE_MIN_TRITON = (3, 6)


def requirement_failure(requirement: str, available: Mapping[str, str | None]) -> str | None:
    if requirement not in available:
        return f"needs {requirement} ({REQUIREMENT_SOURCES[requirement]}): not probed"
    error = available[requirement]
    if error is None:
        return None
    verb = "unavailable" if requirement == TORCH_CUDA else "not importable"
    return f"needs {requirement} ({REQUIREMENT_SOURCES[requirement]}): {verb}: {error}"


def probe_torch_cuda() -> str | None:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a build without CUDA"
    try:
        if not torch.cuda.is_available():
            return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
    except Exception as error:  # a broken driver raises here rather than returning False
        return f"torch.cuda.is_available() failed: {error}"
    return None


def optional_module(name: str) -> tuple[ModuleType | None, str | None]:
    """(module, None) if it imports, else (None, the error in words)."""
    try:
        return importlib.import_module(name), None
    except Exception as error:  # undefined symbols from a torch mismatch raise ImportError or OSError
        return None, f"{type(error).__name__}: {error}"


def missing_ops(ops: Sequence[tuple[str, str]]) -> str | None:
    """None when every torch.ops.<namespace>.<name> is registered, else which are not."""
    missing = [f"torch.ops.{namespace}.{name}" for namespace, name in ops if not torch_op_registered(namespace, name)]
    return f"torch {torch.__version__} does not register {', '.join(missing)}" if missing else None


def torch_op_registered(namespace: str, name: str) -> bool:
    try:
        getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def probe_fbgemm(ops: Sequence[tuple[str, str]]) -> str | None:
    """fbgemm-gpu-genai must import (its library loads only with the torch it was built for) and register `ops`."""
    error = import_error(FBGEMM_MODULE)
    if error is not None:
        return f"{error} ({fbgemm_installed()}, torch {torch.__version__})"
    return missing_ops(ops)


def fbgemm_installed() -> str:
    try:
        return f"fbgemm-gpu-genai {importlib.metadata.version('fbgemm-gpu-genai')} installed"
    except importlib.metadata.PackageNotFoundError:
        return "fbgemm-gpu-genai not installed"


def probe_gemlite() -> str | None:
    """gemlite's kernels need triton >= 3.6; importing it also needs a GPU (it reads the device name at import)."""
    triton_error = import_error("triton")
    if triton_error is not None:
        return f"needs triton: {triton_error}"
    import triton

    found = tuple(int(part) for part in triton.__version__.split(".")[:2])
    if found < GEMLITE_MIN_TRITON:
        return f"gemlite needs triton >= {'.'.join(map(str, GEMLITE_MIN_TRITON))}, found {triton.__version__}"
    return import_error("gemlite")


@functools.cache
def probe_requirements() -> dict[str, str | None]:
    """Each requirement -> None if usable here, else why not. Real imports, done once per process."""
    return {
        TORCH: None,
        TORCH_CUDA: probe_torch_cuda(),
        AWQ_EXT: import_error("awq_ext"),
        AWQ_V2_EXT: import_error("awq_v2_ext"),
        TRITON: import_error("triton"),
        TORCH_INT4_CUDA: missing_ops(TORCH_INT4_CUDA_OPS),
        TORCH_INT4_CPU: missing_ops(TORCH_INT4_CPU_OPS),
        FBGEMM_ROWWISE: probe_fbgemm(FBGEMM_ROWWISE_OPS),
        FBGEMM_SHUFFLED: probe_fbgemm(FBGEMM_SHUFFLED_OPS),
        GEMLITE: probe_gemlite(),
    }


@functools.cache
def torch_arch_list() -> tuple[str, ...]:
    """The archs this torch build has kernels for; empty for a CPU build."""
    return tuple(torch.cuda.get_arch_list()) if torch.version.cuda is not None else ()
