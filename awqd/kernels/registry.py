"""Every kernel candidate by name. Adding one takes its file in candidates/ plus a row in capability.py."""

from collections.abc import Collection

from awqd.errors import InvalidArgument
from awqd.kernels import plugins
from awqd.kernels.base import Candidate
from awqd.kernels.candidates.autoawq_gemm_cuda import AutoawqGemmCuda
from awqd.kernels.candidates.autoawq_gemm_triton import AutoawqGemmTriton
from awqd.kernels.candidates.autoawq_gemv_cuda import AutoawqGemvCuda
from awqd.kernels.candidates.autoawq_gemv_fast_cuda import AutoawqGemvFastCuda
from awqd.kernels.candidates.awqd_triton_dequant_cublas import AwqdTritonDequantCublas
from awqd.kernels.candidates.awqd_triton_gemm import AwqdTritonGemm
from awqd.kernels.candidates.awqd_triton_gemv import AwqdTritonGemv
from awqd.kernels.candidates.awqd_triton_skinny import AwqdTritonSkinny
from awqd.kernels.candidates.dequant_cublas import DequantCublas
from awqd.kernels.candidates.dequant_matmul_cpu import DequantMatmulCpu
from awqd.kernels.candidates.fbgemm_bf16i4_rowwise import FbgemmBf16i4Rowwise
from awqd.kernels.candidates.fbgemm_bf16i4_shuffled import FbgemmBf16i4Shuffled
from awqd.kernels.candidates.gemlite_w4a16 import GemliteW4a16
from awqd.kernels.candidates.reference_torch import ReferenceTorch
from awqd.kernels.candidates.torch_int4_cpu import TorchInt4Cpu
from awqd.kernels.candidates.torch_int4_tinygemm import TorchInt4Tinygemm
from awqd.kernels.capability import CAPABILITY_TABLE, FAMILIES

CANDIDATES: dict[str, type[Candidate]] = {
    cls.name: cls
    for cls in (
        ReferenceTorch,
        AutoawqGemmCuda,
        AutoawqGemmTriton,
        AutoawqGemvCuda,
        AutoawqGemvFastCuda,
        AwqdTritonGemm,
        AwqdTritonGemv,
        AwqdTritonSkinny,
        AwqdTritonDequantCublas,
        DequantCublas,
        DequantMatmulCpu,
        TorchInt4Tinygemm,
        TorchInt4Cpu,
        FbgemmBf16i4Rowwise,
        FbgemmBf16i4Shuffled,
        GemliteW4a16,
    )
}


def candidate_names() -> list[str]:
    """In capability-table order, which is preference order within a family; active plugins last."""
    return [rule.name for rule in CAPABILITY_TABLE] + [p.name for p in plugins.active() if p.cls is not None]


def build(name: str) -> Candidate:
    """A built-in candidate, or an active plugin's (awqd/kernels/plugins.py)."""
    cls = CANDIDATES.get(name) or plugins.candidate_class(name)
    if cls is None:
        raise InvalidArgument("kernel", f"unknown kernel candidate {name!r}; known: {', '.join(candidate_names())}")
    return cls()


def is_candidate(name: str) -> bool:
    return name in CANDIDATES or plugins.candidate_class(name) is not None


def is_family(name: str) -> bool:
    return name in FAMILIES


def resolve_family(family: str, usable: Collection[str]) -> str | None:
    """The preferred candidate of `family` among the `usable` names, or None if the family has none usable."""
    if not is_family(family):
        raise InvalidArgument("kernel", f"unknown kernel family {family!r}; known: {', '.join(FAMILIES)}")
    members = [r.name for r in CAPABILITY_TABLE if r.family == family]
    members += [p.name for p in plugins.active() if p.cls is not None and p.cls.family == family]
    return next((name for name in members if name in usable), None)
