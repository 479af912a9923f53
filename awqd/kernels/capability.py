"""Which AWQ kernel candidates a device can run, and why: one table, checked facts only.

A candidate is supported on a device when its capability rule allows the device AND every
requirement it names imports. The rules encode what the shipped binaries contain:

- autoawq-kernels 0.0.9 (awq_ext, awq_v2_ext) is built with `-gencode arch=compute_XY,code=sm_XY`,
  i.e. SASS only, no PTX. Its setup.py refuses GPUs below 7.5; awq_ext has code for sm_75, 80, 86, 87,
  89, 90 and awq_v2_ext (GEMV_FAST) for sm_80 and up of that list. SASS for sm_XY runs on X.Z with
  Z >= Y, and nothing JIT-compiles for Blackwell (10.x, 12.x).
- AutoAWQ's Triton GEMM is compiled at run time by Triton, whose README lists NVIDIA GPUs of compute
  capability 8.0+ as supported hardware (7.0+ until Triton 3.x). Whether the installed Triton can target a
  very new GPU (Blackwell needs Triton >= 3.3) is left to the correctness check, which reports the error.
- awqd's own Triton kernels (GEMV, tensor-core GEMM and skinny-batch kernel on the awqd_w4 layout) follow the same
  Triton rule; the bf16 tl.dot of the GEMM and the skinny kernel also needs bf16 tensor-core MMA, which starts at
  8.0 (Ampere). The skinny kernel's TMA loads need sm_90; below it the kernel uses pointer loads.
- torch's own kernels (the reference and dequantize + cuBLAS) run where the torch build's arch list
  (`torch.cuda.get_arch_list()`) has SASS for the device's major version or PTX at or below it.
- torch's int4 matmul (tinygemm, aten/src/ATen/native/cuda/int4mm.cu) is compiled only for __CUDA_ARCH__ >= 800
  (bf16 tensor-core MMA) and fails "not available for build" below; its CPU counterpart runs on any host CPU.
  Both are in torch itself; the probes check that this torch registers the ops (the CPU ones came in 2.6).
- fbgemm-gpu-genai's bf16i4bf16 kernels are CUTLASS 3 Hopper (sm90) collectives, built arch-specific (sm_90a):
  they run on compute capability 9.0 only. Each fbgemm-gpu-genai release is built against one torch release and
  fails to load (undefined symbols) with any other; the probe imports it and checks the ops are registered.
- gemlite is Triton code (triton >= 3.6), so it follows the Triton rule above.
"""

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

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
from awqd.kernels.requirements import (
    AWQ_EXT,
    AWQ_V2_EXT,
    FBGEMM_ROWWISE,
    FBGEMM_SHUFFLED,
    GEMLITE,
    REQUIREMENT_SOURCES,
    TORCH,
    TORCH_CUDA,
    TORCH_INT4_CPU,
    TORCH_INT4_CUDA,
    TRITON,
    requirement_failure,
)

Capability = tuple[int, int]

AUTOAWQ_KERNELS_SASS = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90")
AUTOAWQ_V2_KERNELS_SASS = ("sm_80", "sm_86", "sm_87", "sm_89", "sm_90")
TRITON_MIN_CAPABILITY = (8, 0)
TINYGEMM_MIN_CAPABILITY = (8, 0)
FBGEMM_CUTLASS_SASS = ("sm_90a",)
DEQUANT_MATMUL_MIN_TOKENS = 1024  # AutoAWQ's GEMM switches to dequantize + matmul here
GEMV_FAST_MAX_DECODE_BATCH = 8  # AutoAWQ's GEMV_FAST decodes with its GEMV below this
AWQD_GEMV_MAX_TOKENS = 2  # awqd's GEMV wins at 1-2 tokens on the H200 (bench/results/h200-2026-12-02-gemv)
# Where awqd's skinny kernel (2 tokens to DEQUANT_MATMUL_MIN_TOKENS) and its Triton dequantize + cuBLAS (from there)
# were measured the fastest candidates (an H200: bench/results/h200-2026-12-04-own-kernels/engine-115fff5): Hopper.
MEASURED_MAJOR = 9


@dataclass(frozen=True)
class CapabilityRule:
    """Where one candidate may run. `cuda_sass` is set for prebuilt binaries without PTX. The candidate's class says
    its name, family and layout."""

    candidate: type[Candidate]
    requires: tuple[str, ...]
    runs_on_cpu: bool
    cuda_min: Capability | None  # None: never on CUDA
    cuda_sass: tuple[str, ...] | None
    supported_because: str
    below_min_because: str = ""
    binary: str = ""  # the prebuilt binary `cuda_sass` describes

    @property
    def name(self) -> str:
        return self.candidate.name

    @property
    def family(self) -> str:
        return self.candidate.family

    @property
    def layout(self) -> str:
        return self.candidate.layout


# Order is preference order within a family (registry.resolve_family uses it).
CAPABILITY_TABLE: tuple[CapabilityRule, ...] = (
    CapabilityRule(
        candidate=ReferenceTorch,
        requires=(TORCH,),
        runs_on_cpu=True,
        cuda_min=(0, 0),
        cuda_sass=None,
        supported_because="pure torch: dequantize then F.linear, runs wherever torch does",
    ),
    CapabilityRule(
        candidate=AutoawqGemmCuda,
        requires=(TORCH_CUDA, AWQ_EXT),
        runs_on_cpu=False,
        cuda_min=(7, 5),
        cuda_sass=AUTOAWQ_KERNELS_SASS,
        binary="the autoawq-kernels 0.0.9 wheel (awq_ext)",
        supported_because="awq_ext gemm_forward_cuda has SASS for this GPU",
        below_min_because="autoawq-kernels refuses to build below sm_75",
    ),
    CapabilityRule(
        candidate=AutoawqGemmTriton,
        requires=(TORCH_CUDA, TRITON),
        runs_on_cpu=False,
        cuda_min=TRITON_MIN_CAPABILITY,
        cuda_sass=None,
        supported_because="AutoAWQ's Triton GEMM, compiled by Triton for this GPU at run time",
        below_min_because="Triton supports NVIDIA GPUs of compute capability 8.0+ only",
    ),
    CapabilityRule(
        candidate=AwqdTritonGemm,
        requires=(TORCH_CUDA, TRITON),
        runs_on_cpu=False,
        cuda_min=TRITON_MIN_CAPABILITY,
        cuda_sass=None,
        supported_because="awqd's Triton tensor-core GEMM (fp16/bf16 tl.dot), compiled by Triton for this GPU",
        below_min_because="Triton supports NVIDIA GPUs of compute capability 8.0+ only, where bf16 MMA also starts",
    ),
    CapabilityRule(
        candidate=AwqdTritonSkinny,
        requires=(TORCH_CUDA, TRITON),
        runs_on_cpu=False,
        cuda_min=TRITON_MIN_CAPABILITY,
        cuda_sass=None,
        supported_because="awqd's Triton skinny-batch kernel (fp16/bf16 tl.dot; TMA loads from sm_90), compiled by "
        "Triton for this GPU",
        below_min_because="Triton supports NVIDIA GPUs of compute capability 8.0+ only, where bf16 MMA also starts",
    ),
    CapabilityRule(
        candidate=TorchInt4Tinygemm,
        requires=(TORCH_CUDA, TORCH_INT4_CUDA),
        runs_on_cpu=False,
        cuda_min=TINYGEMM_MIN_CAPABILITY,
        cuda_sass=None,
        supported_because="torch's own int4 matmul (tinygemm, bf16 tensor cores), part of torch's CUDA build",
        below_min_because="torch builds its int4 matmul only for sm_80 and newer (bf16 tensor-core MMA)",
    ),
    CapabilityRule(
        candidate=FbgemmBf16i4Shuffled,
        requires=(TORCH_CUDA, FBGEMM_SHUFFLED),
        runs_on_cpu=False,
        cuda_min=(9, 0),
        cuda_sass=FBGEMM_CUTLASS_SASS,
        binary="the fbgemm-gpu-genai wheel (CUTLASS Hopper kernels)",
        supported_because="fbgemm-gpu-genai's CUTLASS mixed-input GEMM on preshuffled int4, for Hopper (sm_90a)",
        below_min_because="fbgemm-gpu-genai's bf16i4bf16 kernels are CUTLASS Hopper (sm_90a) kernels",
    ),
    CapabilityRule(
        candidate=FbgemmBf16i4Rowwise,
        requires=(TORCH_CUDA, FBGEMM_ROWWISE),
        runs_on_cpu=False,
        cuda_min=(9, 0),
        cuda_sass=FBGEMM_CUTLASS_SASS,
        binary="the fbgemm-gpu-genai wheel (CUTLASS Hopper kernels)",
        supported_because="fbgemm-gpu-genai's CUTLASS mixed-input GEMM with group scales and zeros, for Hopper",
        below_min_because="fbgemm-gpu-genai's bf16i4bf16 kernels are CUTLASS Hopper (sm_90a) kernels",
    ),
    CapabilityRule(
        candidate=GemliteW4a16,
        requires=(TORCH_CUDA, TRITON, GEMLITE),
        runs_on_cpu=False,
        cuda_min=TRITON_MIN_CAPABILITY,
        cuda_sass=None,
        supported_because="gemlite's Triton W4A16 kernels (GEMV, split-K, GEMM), compiled by Triton for this GPU",
        below_min_because="Triton supports NVIDIA GPUs of compute capability 8.0+ only",
    ),
    CapabilityRule(
        candidate=TorchInt4Cpu,
        requires=(TORCH, TORCH_INT4_CPU),
        runs_on_cpu=True,
        cuda_min=None,
        cuda_sass=None,
        supported_because="torch's own int4 matmul for the CPU (its vectorised bf16 path): weights stay int4-packed",
    ),
    CapabilityRule(
        candidate=AutoawqGemvCuda,
        requires=(TORCH_CUDA, AWQ_EXT),
        runs_on_cpu=False,
        cuda_min=(7, 5),
        cuda_sass=AUTOAWQ_KERNELS_SASS,
        binary="the autoawq-kernels 0.0.9 wheel (awq_ext)",
        supported_because="awq_ext gemv_forward_cuda/gemmv2_forward_cuda have SASS for this GPU",
        below_min_because="autoawq-kernels refuses to build below sm_75",
    ),
    CapabilityRule(
        candidate=AwqdTritonGemv,
        requires=(TORCH_CUDA, TRITON),
        runs_on_cpu=False,
        cuda_min=TRITON_MIN_CAPABILITY,
        cuda_sass=None,
        supported_because="awqd's Triton GEMV (int4 unpacked in registers), compiled by Triton for this GPU",
        below_min_because="Triton supports NVIDIA GPUs of compute capability 8.0+ only",
    ),
    CapabilityRule(
        candidate=AutoawqGemvFastCuda,
        requires=(TORCH_CUDA, AWQ_V2_EXT),
        runs_on_cpu=False,
        cuda_min=(8, 0),
        cuda_sass=AUTOAWQ_V2_KERNELS_SASS,
        binary="the autoawq-kernels 0.0.9 wheel (awq_v2_ext)",
        supported_because="awq_v2_ext (GEMV_FAST) has SASS for this GPU",
        below_min_because="awq_v2_ext (GEMV_FAST) is compiled only for sm_80 and up",
    ),
    CapabilityRule(
        candidate=AwqdTritonDequantCublas,
        requires=(TORCH_CUDA, TRITON),
        runs_on_cpu=False,
        cuda_min=TRITON_MIN_CAPABILITY,
        cuda_sass=None,
        supported_because="awqd's Triton dequantize of its own layout, then cuBLAS; compiled by Triton for this GPU",
        below_min_because="Triton supports NVIDIA GPUs of compute capability 8.0+ only",
    ),
    CapabilityRule(
        candidate=DequantCublas,
        requires=(TORCH_CUDA,),
        runs_on_cpu=False,
        cuda_min=(0, 0),
        cuda_sass=None,
        supported_because="torch ops dequantize the GEMM layout to fp16, then cuBLAS; any GPU torch supports",
    ),
    CapabilityRule(
        candidate=DequantMatmulCpu,
        requires=(TORCH,),
        runs_on_cpu=True,
        cuda_min=None,
        cuda_sass=None,
        supported_because="torch ops dequantize the GEMM layout, then the CPU BLAS; weights stay 4-bit packed",
    ),
)

RULES = {rule.name: rule for rule in CAPABILITY_TABLE}
FAMILIES = tuple(dict.fromkeys(rule.family for rule in CAPABILITY_TABLE))


@dataclass(frozen=True)
class Eligibility:
    name: str
    family: str
    supported: bool
    reason: str
    requires: tuple[str, ...]
    layout: str


@dataclass(frozen=True)
class KernelChoice:
    name: str
    family: str
    reason: str


def format_capability(capability: Capability) -> str:
    return f"{capability[0]}.{capability[1]}"


def sass_covers(capability: Capability, arch: str) -> bool:
    """SASS for sm_XY runs on X.Z with Z >= Y (same major only); PTX compute_XY JIT-compiles for >= X.Y."""
    kind, _, digits = arch.partition("_")
    if not digits.isdigit():  # e.g. "sm_90a": arch-specific, runs on exactly that GPU
        digits = digits.rstrip("af")
        return kind == "sm" and digits.isdigit() and (int(digits) // 10, int(digits) % 10) == capability
    major, minor = int(digits) // 10, int(digits) % 10
    if kind == "sm":
        return major == capability[0] and minor <= capability[1]
    return kind == "compute" and (major, minor) <= capability


def rule_verdict(rule: CapabilityRule, capability: Capability | None) -> tuple[bool, str]:
    """Whether the rule allows the device (None = the host CPU), and why in words."""
    if capability is None:
        if rule.runs_on_cpu:
            return True, rule.supported_because
        return False, "runs only on NVIDIA GPUs (CUDA)"
    cc = format_capability(capability)
    if rule.cuda_min is None:
        return False, "runs only on the host CPU"
    if capability < rule.cuda_min:
        return False, f"compute capability {cc} < {format_capability(rule.cuda_min)}: {rule.below_min_because}"
    if rule.cuda_sass is not None and not any(sass_covers(capability, arch) for arch in rule.cuda_sass):
        built = ", ".join(arch.removeprefix("sm_") for arch in rule.cuda_sass)
        return False, f"compute capability {cc}: {rule.binary} has SASS only for sm_{built} and no PTX to JIT from"
    return True, f"compute capability {cc}: {rule.supported_because}"


def torch_arch_verdict(capability: Capability, torch_arch_list: Sequence[str]) -> str | None:
    """None when the torch build has kernels for the device, else why not."""
    if any(sass_covers(capability, arch) for arch in torch_arch_list):
        return None
    return (
        f"this torch build has no kernels for compute capability {format_capability(capability)} "
        f"(torch.cuda.get_arch_list(): {', '.join(torch_arch_list)})"
    )


def eligibility(
    compute_capability: Capability | None,
    available: Mapping[str, str | None],
    torch_arch_list: Sequence[str] | None = None,
) -> list[Eligibility]:
    """Every candidate in table order, supported or not, with its reason.

    `available` maps each requirement to None if importable, else the import error in words.
    `torch_arch_list` (from torch.cuda.get_arch_list()) adds the torch-build check on CUDA; None skips it.
    """
    verdicts = []
    for rule in CAPABILITY_TABLE:
        allowed, rule_reason = rule_verdict(rule, compute_capability)
        failures = [] if allowed else [rule_reason]
        if allowed and compute_capability is not None and torch_arch_list:
            arch_failure = torch_arch_verdict(compute_capability, torch_arch_list)
            failures += [arch_failure] if arch_failure else []
        failures += [f for f in (requirement_failure(r, available) for r in rule.requires) if f]
        reason = "; ".join(failures) if failures else f"{rule_reason}; imports: {', '.join(rule.requires)}"
        verdicts.append(Eligibility(rule.name, rule.family, not failures, reason, rule.requires, rule.layout))
    return verdicts


def select_kernel_version(
    compute_capability: Capability | None,
    batch_size: int,
    available: Collection[str],
    passed: Collection[str] | None = None,
) -> KernelChoice:
    """The capability-only choice for `batch_size` tokens: awqd's own Triton kernels where Triton compiles for the
    device (measured at least as fast as AutoAWQ's on the H200 and H100, and free of atomics, so CUDA-graph and
    eager decode agree), otherwise AutoAWQ's own dispatch.

    `available` is the set of usable requirement names; `passed`, when given, the candidates that passed their
    checks, the only ones the rules may choose. Used where nothing was measured.
    """
    status = {requirement: None if requirement in available else "absent" for requirement in REQUIREMENT_SOURCES}
    supported = {e.name for e in eligibility(compute_capability, status) if e.supported}
    if passed is not None:
        supported &= set(passed)

    def choice(name: str, reason: str) -> KernelChoice:
        return KernelChoice(name, RULES[name].family, reason)

    if compute_capability is None:
        return choice("reference_torch", "host CPU: AutoAWQ's kernels are CUDA-only; the torch reference runs here")
    cc = format_capability(compute_capability)
    measured = compute_capability[0] == MEASURED_MAJOR
    if batch_size >= DEQUANT_MATMUL_MIN_TOKENS and measured and "awqd_triton_dequant_cublas" in supported:
        return choice(
            "awqd_triton_dequant_cublas",
            f"{batch_size} tokens >= {DEQUANT_MATMUL_MIN_TOKENS} on {cc}: awqd's Triton dequantize + cuBLAS, the "
            "fastest measured from 2048 tokens (H200: 1.46 and 5.34 ms per Llama-2-7B layer at 2048 and 8192 tokens, "
            "torch's dequantize + cuBLAS 3.73 and 7.76)",
        )
    skinny = measured and "awqd_triton_skinny" in supported
    if batch_size >= DEQUANT_MATMUL_MIN_TOKENS and "dequant_cublas" in supported:
        return choice(
            "dequant_cublas",
            f"{batch_size} tokens >= {DEQUANT_MATMUL_MIN_TOKENS}: AutoAWQ's GEMM dequantizes and calls an fp16 "
            "matmul here, where the matmul is compute-bound and a fused int4 kernel no longer wins",
        )
    if batch_size <= (1 if skinny else AWQD_GEMV_MAX_TOKENS) and "awqd_triton_gemv" in supported:
        return choice(
            "awqd_triton_gemv",
            f"{batch_size} tokens on {cc}: awqd's Triton GEMV, the fastest measured decode kernel at 1 token "
            "(H200: 0.046 ms per Llama-2-7B layer, the skinny kernel 0.058, tinygemm 0.094, fp16 cuBLAS 0.114)",
        )
    if skinny:
        return choice(
            "awqd_triton_skinny",
            f"{batch_size} tokens on {cc}: awqd's skinny kernel, the fastest measured from 2 to 512 tokens (H200: "
            "0.060-0.064 ms per Llama-2-7B layer at 2-16 tokens and 0.47 at 512; awqd's GEMM 0.20 and 1.17)",
        )
    if "awqd_triton_gemm" in supported:
        return choice(
            "awqd_triton_gemm",
            f"{batch_size} tokens on {cc}: awqd's Triton GEMM, as fast as AutoAWQ's GEMMs on the H200 and without "
            "their split-K atomics, so its result does not depend on timing",
        )
    if batch_size < GEMV_FAST_MAX_DECODE_BATCH and "autoawq_gemv_fast_cuda" in supported:
        return choice(
            "autoawq_gemv_fast_cuda",
            f"{batch_size} tokens < {GEMV_FAST_MAX_DECODE_BATCH} on {cc}: AutoAWQ's GEMV_FAST decodes with its "
            "GEMV kernel below 8 rows",
        )
    if batch_size == 1 and "autoawq_gemv_cuda" in supported:
        return choice(
            "autoawq_gemv_cuda",
            f"1 token on {cc} without awq_v2_ext: AutoAWQ's GEMV decodes a single token faster than its GEMM",
        )
    if "autoawq_gemm_cuda" in supported:
        return choice("autoawq_gemm_cuda", f"{batch_size} tokens on {cc}: AutoAWQ's default GEMM kernel (awq_ext)")
    if "autoawq_gemm_triton" in supported:
        return choice(
            "autoawq_gemm_triton",
            f"{batch_size} tokens on {cc}: awq_ext is not usable, so AutoAWQ falls back to its Triton GEMM",
        )
    if "dequant_cublas" in supported:
        return choice(
            "dequant_cublas",
            f"no AWQ kernel supports compute capability {cc} here; dequantize + cuBLAS runs on any GPU torch supports",
        )
    return choice("reference_torch", f"no CUDA kernel is usable on compute capability {cc}; the torch reference is")
