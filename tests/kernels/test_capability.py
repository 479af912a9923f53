"""The capability table, the capability-only kernel choice, and the registry that builds candidates by name."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from awqd.errors import InvalidArgument
from awqd.kernels import registry
from awqd.kernels.capability import CAPABILITY_TABLE, FAMILIES, eligibility, sass_covers, select_kernel_version
from awqd.kernels.requirements import REQUIREMENT_SOURCES, probe_requirements

NO_AWQ_EXT = "No module named 'awq_ext'"
NO_AWQ_V2_EXT = "No module named 'awq_v2_ext'"
NO_TRITON = "No module named 'triton'"


NO_FBGEMM = "No module named 'fbgemm_gpu'"
NO_GEMLITE = "No module named 'gemlite'"


def requirements(awq_ext: bool, triton: bool, torch_cuda: bool = True, peers: bool = False) -> dict[str, str | None]:
    """`peers`: fbgemm-gpu-genai and gemlite installed (torch's own int4 ops are always there in these tests)."""
    return {
        "torch": None,
        "torch_cuda": None if torch_cuda else "torch 2.13.0+cpu is a build without CUDA",
        "awq_ext": None if awq_ext else NO_AWQ_EXT,
        "awq_v2_ext": None if awq_ext else NO_AWQ_V2_EXT,  # one package, autoawq-kernels, ships both
        "triton": None if triton else NO_TRITON,
        "torch_int4_cuda": None,
        "torch_int4_cpu": None,
        "fbgemm_bf16i4_rowwise": None if peers else NO_FBGEMM,
        "fbgemm_bf16i4_shuffled": None if peers else NO_FBGEMM,
        "gemlite": None if peers and triton else NO_GEMLITE,
    }


def expected_supported(capability: tuple[int, int] | None, awq_ext: bool, triton: bool, peers: bool) -> set[str]:
    """The facts in FACTS.md, written out independently of the table."""
    if capability is None:
        return {"reference_torch", "dequant_matmul_cpu", "torch_int4_cpu"}
    supported = {"reference_torch", "dequant_cublas"}
    if capability >= (8, 0):
        supported.add("torch_int4_tinygemm")
    if peers and capability == (9, 0):
        supported |= {"fbgemm_bf16i4_rowwise", "fbgemm_bf16i4_shuffled"}
    if peers and triton and capability >= (8, 0):
        supported.add("gemlite_w4a16")
    has_awq_ext_sass = capability in {(7, 5), (8, 0), (8, 6), (8, 9), (9, 0)}
    if awq_ext and has_awq_ext_sass:
        supported |= {"autoawq_gemm_cuda", "autoawq_gemv_cuda"}
    if awq_ext and has_awq_ext_sass and capability >= (8, 0):
        supported.add("autoawq_gemv_fast_cuda")
    if triton and capability >= (8, 0):
        supported |= {
            "autoawq_gemm_triton",
            "awqd_triton_gemm",
            "awqd_triton_skinny",
            "awqd_triton_gemv",
            "awqd_triton_dequant_cublas",
        }
    return supported


CAPABILITIES = [(6, 1), (7, 0), (7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0), None]


@pytest.mark.parametrize("peers", [True, False], ids=["peers", "no-peers"])
@pytest.mark.parametrize("triton", [True, False], ids=["triton", "no-triton"])
@pytest.mark.parametrize("awq_ext", [True, False], ids=["awq_ext", "no-awq_ext"])
@pytest.mark.parametrize("capability", CAPABILITIES, ids=lambda c: "cpu" if c is None else f"sm{c[0]}{c[1]}")
def test_eligibility_table(capability, awq_ext, triton, peers):
    verdicts = eligibility(capability, requirements(awq_ext, triton, torch_cuda=capability is not None, peers=peers))

    assert [v.name for v in verdicts] == [rule.name for rule in CAPABILITY_TABLE]
    assert {v.name for v in verdicts if v.supported} == expected_supported(capability, awq_ext, triton, peers)
    for verdict in verdicts:
        assert verdict.reason, verdict.name
        if verdict.supported:
            assert "imports:" in verdict.reason
            if capability is not None:
                assert f"compute capability {capability[0]}.{capability[1]}" in verdict.reason


@pytest.mark.parametrize(
    ("capability", "name", "reason"),
    [
        ((6, 1), "autoawq_gemm_cuda", "compute capability 6.1 < 7.5: autoawq-kernels refuses to build below sm_75"),
        ((7, 0), "autoawq_gemv_cuda", "compute capability 7.0 < 7.5: autoawq-kernels refuses to build below sm_75"),
        ((7, 5), "autoawq_gemv_fast_cuda", "compute capability 7.5 < 8.0: awq_v2_ext (GEMV_FAST) is compiled only"),
        ((7, 5), "autoawq_gemm_triton", "compute capability 7.5 < 8.0: Triton supports NVIDIA GPUs of compute"),
        ((7, 5), "awqd_triton_gemm", "compute capability 7.5 < 8.0: Triton supports NVIDIA GPUs of compute"),
        ((7, 0), "awqd_triton_gemv", "compute capability 7.0 < 8.0: Triton supports NVIDIA GPUs of compute"),
        (None, "awqd_triton_gemv", "runs only on NVIDIA GPUs (CUDA)"),
        ((10, 0), "autoawq_gemm_cuda", "has SASS only for sm_75, 80, 86, 87, 89, 90 and no PTX"),
        ((12, 0), "autoawq_gemv_fast_cuda", "awq_v2_ext) has SASS only for sm_80, 86, 87, 89, 90 and no PTX"),
        (None, "dequant_cublas", "runs only on NVIDIA GPUs (CUDA)"),
        ((9, 0), "dequant_matmul_cpu", "runs only on the host CPU"),
        ((7, 5), "torch_int4_tinygemm", "compute capability 7.5 < 8.0: torch builds its int4 matmul only for sm_80"),
        ((8, 9), "fbgemm_bf16i4_shuffled", "compute capability 8.9 < 9.0: fbgemm-gpu-genai's bf16i4bf16 kernels"),
        ((10, 0), "fbgemm_bf16i4_rowwise", "fbgemm-gpu-genai wheel (CUTLASS Hopper kernels) has SASS only for sm_90a"),
        ((7, 5), "gemlite_w4a16", "compute capability 7.5 < 8.0: Triton supports NVIDIA GPUs of compute"),
        ((9, 0), "torch_int4_cpu", "runs only on the host CPU"),
    ],
)
def test_rule_reasons(capability, name, reason):
    verdict = next(v for v in eligibility(capability, requirements(True, True, peers=True)) if v.name == name)
    assert not verdict.supported
    assert reason in verdict.reason


def test_import_failure_reason_names_the_package_and_error():
    verdicts = {v.name: v for v in eligibility((9, 0), requirements(awq_ext=False, triton=False))}
    assert verdicts["autoawq_gemm_cuda"].reason == f"needs awq_ext (autoawq-kernels): not importable: {NO_AWQ_EXT}"
    assert verdicts["autoawq_gemv_fast_cuda"].reason.endswith(NO_AWQ_V2_EXT)
    assert verdicts["autoawq_gemm_triton"].reason == f"needs triton (triton): not importable: {NO_TRITON}"


def test_rule_and_import_failures_are_both_reported():
    verdict = eligibility((6, 1), requirements(awq_ext=False, triton=True))[1]
    assert verdict.name == "autoawq_gemm_cuda"
    assert "6.1 < 7.5" in verdict.reason and NO_AWQ_EXT in verdict.reason


def test_unprobed_requirement_is_not_assumed_present():
    verdicts = {v.name: v for v in eligibility((9, 0), {"torch": None, "torch_cuda": None})}
    assert not verdicts["autoawq_gemm_cuda"].supported
    assert "awq_ext (autoawq-kernels): not probed" in verdicts["autoawq_gemm_cuda"].reason


def test_torch_arch_list_gates_torch_kernels():
    everything = requirements(True, True)
    without_ptx = {v.name: v for v in eligibility((12, 0), everything, ["sm_80", "sm_90"])}
    assert not without_ptx["dequant_cublas"].supported
    assert "this torch build has no kernels for compute capability 12.0" in without_ptx["dequant_cublas"].reason
    with_ptx = {v.name: v for v in eligibility((12, 0), everything, ["sm_80", "sm_90", "compute_90"])}
    assert with_ptx["dequant_cublas"].supported and with_ptx["reference_torch"].supported


@pytest.mark.parametrize(
    ("capability", "arch", "covered"),
    [
        ((8, 9), "sm_86", True),  # SASS runs on a higher minor of the same major
        ((8, 6), "sm_89", False),
        ((10, 0), "sm_90", False),  # never across majors
        ((12, 0), "compute_90", True),  # PTX JIT-compiles forward
        ((8, 0), "compute_90", False),
        ((9, 0), "sm_90a", True),
        ((10, 0), "sm_90a", False),
    ],
)
def test_sass_and_ptx_compatibility(capability, arch, covered):
    assert sass_covers(capability, arch) is covered


ALL = set(REQUIREMENT_SOURCES)


@pytest.mark.parametrize(
    ("capability", "batch", "available", "expected", "reason_part"),
    [
        (None, 1, ALL, "reference_torch", "host CPU"),
        ((9, 0), 1, ALL, "awqd_triton_gemv", "fastest measured decode kernel"),
        ((9, 0), 2, ALL, "awqd_triton_skinny", "fastest measured from 2 to 512 tokens"),
        ((9, 0), 512, ALL, "awqd_triton_skinny", "fastest measured from 2 to 512 tokens"),
        ((8, 0), 2, ALL, "awqd_triton_gemv", "awqd's Triton GEMV"),  # the skinny kernel was measured on Hopper only
        ((8, 0), 7, ALL, "awqd_triton_gemm", "without their split-K atomics"),
        ((9, 0), 7, ALL - {"triton"}, "autoawq_gemv_fast_cuda", "below 8 rows"),
        ((9, 0), 8, ALL - {"triton"}, "autoawq_gemm_cuda", "default GEMM"),
        ((9, 0), 1024, ALL, "awqd_triton_dequant_cublas", "fastest measured from 2048 tokens"),
        ((9, 0), 8192, ALL - {"triton"}, "dequant_cublas", ">= 1024"),
        ((8, 0), 1024, ALL, "dequant_cublas", ">= 1024"),
        ((7, 5), 1, ALL, "autoawq_gemv_cuda", "without awq_v2_ext"),
        ((7, 5), 2, ALL, "autoawq_gemm_cuda", "default GEMM"),
        ((9, 0), 1, ALL - {"awq_ext", "awq_v2_ext"}, "awqd_triton_gemv", "awqd's Triton GEMV"),
        ((10, 0), 16, ALL, "awqd_triton_gemm", "awqd's Triton GEMM"),
        ((12, 0), 16, ALL - {"triton"}, "dequant_cublas", "no AWQ kernel supports compute capability 12.0"),
        ((6, 1), 1, ALL, "dequant_cublas", "6.1"),
        ((9, 0), 1, {"torch", "triton"}, "reference_torch", "no CUDA kernel is usable"),
    ],
)
def test_select_kernel_version(capability, batch, available, expected, reason_part):
    choice = select_kernel_version(capability, batch, available)
    assert choice.name == expected
    assert choice.family == registry.CANDIDATES[expected].family
    assert reason_part in choice.reason


# An H200's decisions, every bucket measured with awqd's and torch's candidates (no peers installed).
H200_DECISIONS = Path(__file__).parents[2] / "bench/results/h200-2026-12-04-own-kernels/engine-115fff5"


def test_the_hopper_rules_name_the_kernel_measured_fastest_at_every_bucket_on_an_h200():
    """The rules serve the buckets a short budget does not reach: stale, they prefilled on a 1.45x slower kernel
    (bench/results/h200-2026-12-04-short-budget-rules)."""
    (path,) = H200_DECISIONS.glob("decisions-*.json")
    measured = json.loads(path.read_text())["decisions"]["decisions"]
    installed = ALL - {"awq_ext", "awq_v2_ext", "fbgemm_bf16i4_rowwise", "gemlite"}
    assert {d["source"] for d in measured} == {"measured"} and len(measured) == 12
    for decision in measured:
        choice = select_kernel_version((9, 0), decision["batch_tokens"], installed)
        assert choice.name == decision["kernel"], decision["reason"]


def test_probe_requirements_matches_this_machine():
    probed = probe_requirements()
    assert set(probed) == set(REQUIREMENT_SOURCES)
    assert probed["torch"] is None
    for module in ("awq_ext", "awq_v2_ext"):
        assert (probed[module] is None) == (importlib.util.find_spec(module) is not None)
    if torch.version.cuda is None:
        assert "without CUDA" in probed["torch_cuda"]
    assert probed["torch_int4_cpu"] is None and probed["torch_int4_cuda"] is None  # both registered since torch 2.6
    for requirement, module in (("fbgemm_bf16i4_rowwise", "fbgemm_gpu"), ("gemlite", "gemlite")):
        assert (probed[requirement] is None) == (importlib.util.find_spec(module) is not None)


def test_each_table_row_is_a_candidate_class_named_once():
    """The rows name the classes, and the registry is built from the rows: a repeated name would hide a candidate."""
    names = [rule.name for rule in CAPABILITY_TABLE]
    assert len(names) == len(set(names)) == len(registry.CANDIDATES)
    for rule in CAPABILITY_TABLE:
        candidate = registry.build(rule.name)
        assert type(candidate) is rule.candidate and candidate.family in FAMILIES and candidate.layout


def test_registry_resolves_families_in_preference_order():
    assert registry.resolve_family("gemm", {"autoawq_gemm_triton", "autoawq_gemm_cuda"}) == "autoawq_gemm_cuda"
    assert registry.resolve_family("gemm", {"autoawq_gemm_triton", "reference_torch"}) == "autoawq_gemm_triton"
    assert registry.resolve_family("dequant_matmul", {"reference_torch", "dequant_matmul_cpu"}) == "dequant_matmul_cpu"
    assert registry.resolve_family("gemv", {"reference_torch"}) is None
    assert registry.resolve_family("gemv", {"awqd_triton_gemv", "autoawq_gemv_cuda"}) == "autoawq_gemv_cuda"
    assert registry.resolve_family("gemv", {"awqd_triton_gemv", "dequant_cublas"}) == "awqd_triton_gemv"
    with pytest.raises(InvalidArgument, match="unknown kernel family 'marlin'"):
        registry.resolve_family("marlin", set())
    with pytest.raises(InvalidArgument, match="unknown kernel candidate 'exllama'"):
        registry.build("exllama")
