"""Device discovery and component versions where the tests run: no NVIDIA driver here, GPUs on the device machine."""

import importlib.util

import pynvml
import pytest
import torch

from awqd.node.devices import Discovery, discover, memory_free_bytes
from awqd.node.versions import component_versions, import_error

COMPONENTS = [
    "nvidia_driver",
    "cuda_driver",
    "cuda_runtime",
    "torch",
    "triton",
    "transformers",
    "autoawq",
    "awq_ext",
    "awq_v2_ext",
    "fbgemm_gpu_genai",
    "gemlite",
    "nvidia_ml_py",
    "grpcio",
    "protobuf",
]
NVML_GPUS = discover().nvml_device_count


@pytest.fixture(scope="module")
def discovery() -> Discovery:
    return discover()


def test_cpu_comes_first(discovery: Discovery) -> None:
    cpu = discovery.devices[0]
    assert (cpu.index, cpu.kind, cpu.uuid, cpu.torch_device) == (0, "cpu", "cpu", "cpu")
    assert cpu.name
    assert cpu.compute_capability is None and cpu.capability_str == ""
    assert cpu.nvml_index is None
    assert cpu.memory_total_bytes > 0
    assert 0 < memory_free_bytes(cpu) <= cpu.memory_total_bytes


def test_indices_follow_the_device_order(discovery: Discovery) -> None:
    assert [device.index for device in discovery.devices] == list(range(len(discovery.devices)))
    assert all(device.kind == "cuda" for device in discovery.devices[1:])


def _nvml_init_error() -> pynvml.NVMLError | None:
    """What NVML itself says on this machine, asked directly rather than through awqd."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return error
    pynvml.nvmlShutdown()
    return None


def test_nvml_outcome_matches_nvml_itself(discovery: Discovery) -> None:
    nvml_error = _nvml_init_error()
    assert discovery.nvml_available == (nvml_error is None)
    if isinstance(nvml_error, pynvml.NVMLError_LibraryNotFound):  # no NVIDIA driver installed
        assert discovery.nvml_error == "NVML Shared Library Not Found (libnvidia-ml.so.1)"
    elif nvml_error is not None:
        assert discovery.nvml_error == str(nvml_error)
    elif discovery.nvml_device_count == 0:
        assert discovery.nvml_error == "NVML found no GPU"
    else:
        assert discovery.nvml_error == ""
    if nvml_error is not None:
        assert discovery.nvml_device_count == 0
        assert discovery.driver_version is None and discovery.cuda_driver_version is None


@pytest.mark.skipif(NVML_GPUS > 0, reason="this machine has GPUs")
def test_without_gpus_only_the_cpu_is_found(discovery: Discovery) -> None:
    assert len(discovery.devices) == 1
    assert discovery.nvml_error.startswith("NVML")
    assert discovery.torch_device_count == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


@pytest.mark.skipif(NVML_GPUS == 0, reason="this machine has no GPU NVML can see")
def test_gpus_carry_capability_uuid_and_memory(discovery: Discovery) -> None:
    gpus = [device for device in discovery.devices if device.nvml_index is not None]
    assert len(gpus) == discovery.nvml_device_count
    assert discovery.driver_version and discovery.cuda_driver_version
    for gpu in gpus:
        assert gpu.uuid.startswith(("GPU-", "MIG-"))
        assert gpu.compute_capability is not None and gpu.compute_capability >= (3, 0)
        assert gpu.capability_str == "{}.{}".format(*gpu.compute_capability)
        assert gpu.memory_total_bytes > 0
        assert 0 < memory_free_bytes(gpu) <= gpu.memory_total_bytes
    if discovery.torch_cuda_available:
        torch_devices = {gpu.torch_device for gpu in gpus if gpu.torch_device}
        assert len(torch_devices) == min(len(gpus), discovery.torch_device_count)
        for gpu in gpus:
            if gpu.torch_device:
                props = torch.cuda.get_device_properties(gpu.torch_device)
                assert gpu.uuid.lower().endswith(str(props.uuid).lower())
                assert (props.major, props.minor) == gpu.compute_capability


def test_every_component_has_a_version_or_a_reason(discovery: Discovery) -> None:
    components = component_versions(discovery)
    assert [component.name for component in components] == COMPONENTS
    for component in components:
        if component.available:
            assert component.version and component.reason == "", component
        else:
            assert component.reason, component
    by_name = {component.name: component for component in components}
    assert by_name["torch"].version == torch.__version__
    assert by_name["nvidia_driver"].available == (discovery.driver_version is not None)
    if torch.version.cuda is None:
        assert by_name["cuda_runtime"].reason == "torch is a CPU build"


def test_missing_kernel_extension_reports_the_import_error(discovery: Discovery) -> None:
    awq_ext = {component.name: component for component in component_versions(discovery)}["awq_ext"]
    if importlib.util.find_spec("awq_ext") is None:
        assert not awq_ext.available
        assert awq_ext.reason == "No module named 'awq_ext'"
        assert import_error("awq_ext") == awq_ext.reason
    else:  # installed: it either loads or says why (e.g. an undefined symbol against this torch)
        assert awq_ext.available == (import_error("awq_ext") is None)
        assert awq_ext.version


def test_import_error_is_none_for_an_importable_module() -> None:
    assert import_error("json") is None
    assert import_error("awqd_no_such_module") == "No module named 'awqd_no_such_module'"
