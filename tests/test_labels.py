"""Node labels: the features.d file is exactly what Node Feature Discovery's `local` source reads.

`nfd_labels` re-implements the reading rules of NFD's source/local/local.go and its documentation: non-hidden
regular files of at most 64 KiB, `name[=value]` lines split at the first '=', a missing value meaning "true",
`#` comments, `# +expiry-time=` / `# +no-label` / `# +no-feature` directives, bare names prefixed with
feature.node.kubernetes.io/, and nfd-master's namespace rule (kubernetes.io and its subdomains are denied, except
feature.node.kubernetes.io and profile.node.kubernetes.io).
"""

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from awqd.config import ServeConfig
from awqd.errors import InvalidArgument
from awqd.kernels.measure import CorrectnessCheck, KernelTiming
from awqd.kernels.selection import CandidateReport, DeviceDecisions, KernelDecision, select_kernels
from awqd.labels import MAX_FILE_BYTES, check_label, feature_labels, publish_feature_file, write_feature_file
from awqd.node.devices import DeviceInfo
from awqd_client.client import AwqdClient

from daemon_process import DaemonProcess

NFD_PREFIX = "feature.node.kubernetes.io/"
ALLOWED_KUBERNETES_NAMESPACES = ("feature.node.kubernetes.io", "profile.node.kubernetes.io")

CPU = DeviceInfo(0, "cpu", "cpu", "test CPU", None, 1 << 34, "cpu", None)
H200 = DeviceInfo(1, "cuda", "GPU-0f5a", "NVIDIA H200", (9, 0), 150_000_000_000, "cuda:0", 0)
TINY_SHAPES = [(128, 128), (64, 128), (128, 64)]


def nfd_labels(features_dir: Path) -> dict[str, str]:
    """The node labels nfd-worker's local source and nfd-master would make of `features_dir`."""
    labels: dict[str, str] = {}
    for path in sorted(features_dir.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        assert path.stat().st_size <= 65536, f"{path} is over NFD's 64 KiB limit and would be ignored"
        expiry, skip_label = None, False
        for raw in path.read_bytes().split(b"\n"):
            line = raw.decode().strip()
            if not line:
                continue
            if line.startswith("#"):
                if line.startswith("# +"):
                    key, _, value = line[3:].partition("=")
                    assert key in ("expiry-time", "no-label", "no-feature"), f"NFD rejects directive {line!r}"
                    if key == "expiry-time":
                        expiry = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
                    skip_label = skip_label or key == "no-label"
                continue
            if expiry is not None and expiry < datetime.now(UTC):
                continue
            name, sep, value = line.partition("=")
            if not skip_label:
                labels[name if "/" in name else NFD_PREFIX + name] = value if sep else "true"
            skip_label = False
    return labels


def assert_valid_node_label(name: str, value: str) -> None:
    namespace, _, short_name = name.rpartition("/")
    assert namespace and len(namespace) <= 253, name
    assert all(part and part.isascii() and part.replace("-", "").isalnum() for part in namespace.split(".")), name
    assert namespace == namespace.lower(), name
    if namespace == "kubernetes.io" or namespace.endswith(".kubernetes.io"):
        assert namespace.endswith(ALLOWED_KUBERNETES_NAMESPACES), f"nfd-master denies the namespace of {name}"
    for text in (short_name, value):
        assert len(text) <= 63, (name, value)
        assert text == "" or (text[0].isalnum() and text[-1].isalnum()), (name, value)
        assert all(c.isascii() and (c.isalnum() or c in "-_.") for c in text), (name, value)
    assert short_name, name


def h200_decisions() -> DeviceDecisions:
    """Decisions as a measured H200 would have them (GEMV at decode, dequantize + cuBLAS for prefill)."""
    passed = CorrectnessCheck(passed=True, max_relative_error=1e-3, tolerance=2e-2)

    def report(name: str, family: str, supported: bool, correctness: CorrectnessCheck | None) -> CandidateReport:
        return CandidateReport(name, family, supported, "rule", ("torch",), "gemm", correctness)

    candidates = [
        report("reference_torch", "reference", True, passed),
        report("autoawq_gemm_cuda", "gemm", True, CorrectnessCheck(False, 1.0, 2e-2, "wrong output")),
        report("autoawq_gemv_cuda", "gemv", True, passed),
        report("autoawq_gemv_fast_cuda", "gemv_fast", False, None),
        report("dequant_cublas", "dequant_matmul", True, passed),
    ]
    decisions = [
        KernelDecision(
            1, "autoawq_gemv_cuda", "measured", "fastest", [KernelTiming("autoawq_gemv_cuda", 0.09, 0.08, 0.1, True)]
        ),
        KernelDecision(16, "autoawq_gemv_cuda", "measured", "fastest"),
        KernelDecision(512, "dequant_cublas", "measured", "fastest"),
    ]
    return DeviceDecisions(H200.uuid, "NVIDIA H200", candidates, decisions, "measured", None, 1.0, "f")


def test_gpu_labels_describe_the_first_gpu():
    labels = feature_labels([CPU, H200], {"cpu": h200_decisions(), "cuda:0": h200_decisions()})
    assert labels == {
        NFD_PREFIX + "awq.device.kind": "cuda",
        NFD_PREFIX + "awq.device.compute_capability": "9.0",
        NFD_PREFIX + "awq.kernel.reference.supported": "true",
        NFD_PREFIX + "awq.kernel.gemm.supported": "false",  # supported by its rule, but failed correctness
        NFD_PREFIX + "awq.kernel.gemv.supported": "true",
        NFD_PREFIX + "awq.kernel.gemv_fast.supported": "false",
        NFD_PREFIX + "awq.kernel.dequant_matmul.supported": "true",
        NFD_PREFIX + "awq.kernel.source": "measured",
        NFD_PREFIX + "awq.kernel.bs1": "autoawq_gemv_cuda",
        NFD_PREFIX + "awq.kernel.bs512": "dequant_cublas",
        NFD_PREFIX + "awq.gpu.count": "1",
        NFD_PREFIX + "awq.kernel.uniform": "true",
    }


def test_gpus_that_chose_differently_are_labelled_each():
    l40s = DeviceInfo(2, "cuda", "GPU-77aa", "NVIDIA L40S", (8, 9), 48_000_000_000, "cuda:1", 1)
    other = h200_decisions()
    other.decisions[0].kernel = "dequant_cublas"
    uniform = feature_labels([CPU, H200, l40s], {"cuda:0": h200_decisions(), "cuda:1": h200_decisions()})
    assert uniform[NFD_PREFIX + "awq.gpu.count"] == "2" and uniform[NFD_PREFIX + "awq.kernel.uniform"] == "true"
    assert not any(".gpu0." in name or ".gpu1." in name for name in uniform)
    mixed = feature_labels([CPU, H200, l40s], {"cuda:0": h200_decisions(), "cuda:1": other})
    assert mixed[NFD_PREFIX + "awq.kernel.uniform"] == "false"
    assert mixed[NFD_PREFIX + "awq.kernel.bs1"] == "autoawq_gemv_cuda"  # the first GPU's, as before
    assert mixed[NFD_PREFIX + "awq.gpu0.kernel.bs1"] == "autoawq_gemv_cuda"
    assert mixed[NFD_PREFIX + "awq.gpu1.kernel.bs1"] == "dequant_cublas"
    assert mixed[NFD_PREFIX + "awq.gpu1.kernel.bs512"] == "dequant_cublas"
    for name, value in mixed.items():
        check_label(name, value)


def test_cpu_node_labels_come_from_real_selection():
    decisions = select_kernels(CPU, TINY_SHAPES, 64, cache_dir=None, budget_s=30.0, buckets=(1, 512))
    labels = feature_labels([CPU], {"cpu": decisions})
    by_bucket = {decision.batch_tokens: decision.kernel for decision in decisions.decisions}
    assert labels[NFD_PREFIX + "awq.device.kind"] == "cpu"
    assert NFD_PREFIX + "awq.device.compute_capability" not in labels
    assert labels[NFD_PREFIX + "awq.kernel.bs1"] == by_bucket[1]
    assert labels[NFD_PREFIX + "awq.kernel.bs512"] == by_bucket[512]
    assert labels[NFD_PREFIX + "awq.kernel.source"] == decisions.source == "measured"
    assert labels[NFD_PREFIX + "awq.kernel.reference.supported"] == "true"
    assert labels[NFD_PREFIX + "awq.kernel.gemv.supported"] == "false"  # AutoAWQ's CUDA GEMV needs a GPU


def test_device_without_decisions_gets_no_kernel_labels():
    labels = feature_labels([CPU], {})
    assert labels[NFD_PREFIX + "awq.device.kind"] == "cpu"
    assert labels[NFD_PREFIX + "awq.kernel.gemv.supported"] == "false"
    assert not any(name.startswith(NFD_PREFIX + "awq.kernel.bs") for name in labels)


def test_file_is_what_nfd_reads(tmp_path):
    labels = feature_labels([CPU, H200], {"cuda:0": h200_decisions()})
    write_feature_file(tmp_path / "awqd", labels)
    assert nfd_labels(tmp_path) == labels
    for name, value in nfd_labels(tmp_path).items():
        assert_valid_node_label(name, value)
    assert [path.name for path in tmp_path.iterdir()] == ["awqd"]  # no temp file left behind
    assert stat.S_IMODE((tmp_path / "awqd").stat().st_mode) == 0o644


def test_rewrite_replaces_the_file_and_a_rejected_write_keeps_it(tmp_path):
    path = tmp_path / "awqd"
    write_feature_file(path, {NFD_PREFIX + "awq.kernel.bs1": "reference_torch"})
    write_feature_file(path, {NFD_PREFIX + "awq.kernel.bs1": "autoawq_gemv_cuda"})
    assert nfd_labels(tmp_path) == {NFD_PREFIX + "awq.kernel.bs1": "autoawq_gemv_cuda"}
    with pytest.raises(InvalidArgument):
        write_feature_file(path, {NFD_PREFIX + "awq.kernel.bs1": "not a label value"})
    assert nfd_labels(tmp_path) == {NFD_PREFIX + "awq.kernel.bs1": "autoawq_gemv_cuda"}
    assert [p.name for p in tmp_path.iterdir()] == ["awqd"]


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("awq.kernel.bs1", "gemv", "namespace"),
        ("Vendor_IO/awq", "x", "namespace"),
        (NFD_PREFIX + "awq kernel", "x", "after '/'"),
        (NFD_PREFIX + "a" * 64, "x", "after '/'"),
        (NFD_PREFIX + "awq.kernel.bs1", "x" * 64, "value"),
        (NFD_PREFIX + "awq.kernel.bs1", "gemv/cuda", "value"),
        (NFD_PREFIX + "awq.kernel.bs1", "-gemv", "value"),
    ],
)
def test_invalid_labels_are_rejected_naming_the_label(tmp_path, name, value, reason):
    with pytest.raises(InvalidArgument) as raised:
        write_feature_file(tmp_path / "awqd", {name: value})
    assert name in str(raised.value) and reason in str(raised.value)
    assert not list(tmp_path.iterdir())


def test_oversized_file_is_rejected(tmp_path):
    labels = {f"vendor.example.com/label-{i:05d}": "v" * 63 for i in range(MAX_FILE_BYTES // 90 + 1)}
    with pytest.raises(InvalidArgument, match="65536"):
        write_feature_file(tmp_path / "awqd", labels)


def test_publish_survives_an_unwritable_directory(tmp_path):
    missing = tmp_path / "no-such-dir" / "awqd"
    publish_feature_file(missing, [CPU], {})  # logged, not raised: the daemon serves without labels
    assert not missing.parent.exists()
    if os.geteuid() != 0:  # root ignores directory permissions
        read_only = tmp_path / "read-only"
        read_only.mkdir(mode=0o555)
        publish_feature_file(read_only / "awqd", [CPU], {})
        assert not list(read_only.iterdir())


def test_labels_are_off_by_default():
    assert ServeConfig().feature_file is None


def test_daemon_writes_the_file_after_kernel_selection(demo_model_dir, awqd_cache_dir, tmp_path):
    features_dir = tmp_path / "features.d"
    features_dir.mkdir()
    process = DaemonProcess(awqd_cache_dir, "--model-root", str(tmp_path), "--feature-file", str(features_dir / "awqd"))
    try:
        process.wait_serving()
        labels = nfd_labels(features_dir)  # written before health turns SERVING
        with AwqdClient(process.target) as client:
            cpu = client.describe().devices[0]
    finally:
        process.terminate(timeout=60)
    assert process.events("feature_file_written")
    for name, value in labels.items():
        assert_valid_node_label(name, value)
    by_bucket = {decision.batch_tokens: decision.kernel for decision in cpu.decisions}
    assert labels[NFD_PREFIX + "awq.device.kind"] == "cpu"
    assert labels[NFD_PREFIX + "awq.kernel.bs1"] == by_bucket[1]
    assert labels[NFD_PREFIX + "awq.kernel.bs512"] == by_bucket[512]
    assert labels[NFD_PREFIX + "awq.kernel.reference.supported"] == "true"
