"""The image and the Kubernetes manifests agree with the package: commands, env vars, ports, paths and probes."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml
from typer.main import get_command

from awqd.cli import app

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPONENTS = sorted(path.parent.name for path in KUBERNETES.glob("components/*/kustomization.yaml"))
NFD_FEATURES_DIR = PurePosixPath("/etc/kubernetes/node-feature-discovery/features.d")
OLDEST_KUBERNETES = "1.31.0"  # native gRPC probes, internalTrafficPolicy and DaemonSet maxSurge are GA by then


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for the runtime stage, with line continuations joined and comments dropped."""
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    instructions = []
    for logical in re.split(r"(?<!\\)\n", "\n".join(lines)):
        logical = re.sub(r"\\\n\s*", " ", logical).strip()
        if logical:
            keyword, _, arguments = logical.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    runtime_start = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[runtime_start:]


def image_env() -> dict[str, str]:
    env = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", arguments))
    return env


def exec_form(arguments: str) -> list[str]:
    command = json.loads(arguments)
    assert isinstance(command, list) and all(isinstance(part, str) for part in command), arguments
    return command


def only(keyword: str) -> str:
    found = [arguments for found_keyword, arguments in dockerfile_instructions() if found_keyword == keyword]
    assert len(found) == 1, f"the runtime stage should have one {keyword}, has {len(found)}"
    return found[0]


def manifests() -> dict[str, dict]:
    """The base's objects by kind (the Service by name), from the files kustomization.yaml lists."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    objects = {}
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((KUBERNETES / resource).read_text()):
            key = document["metadata"]["name"] if document["kind"] == "Service" else document["kind"]
            objects[key] = document
    return objects


def awqd_container(daemonset: dict) -> dict:
    (container,) = [c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == "awqd"]
    return container


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def serve_defaults() -> dict[str, object]:
    return {param.name: param.default for param in get_command(app).commands["serve"].params}


def serve_envvars() -> set[str]:
    return {param.envvar for param in get_command(app).commands["serve"].params if param.envvar}


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"])
    present = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_image_commands_exist_in_the_packages():
    entrypoint = exec_form(only("ENTRYPOINT"))
    healthcheck = only("HEALTHCHECK")
    assert " CMD " in f" {healthcheck} ", healthcheck
    probe = exec_form(healthcheck.split(" CMD ", 1)[1])
    modules = {"awqd": ["-m", "awqd"], "awqctl": ["-m", "awqd_client.cli"]}
    for command in (entrypoint, probe):
        assert command[0] in modules, f"{command[0]} is not a console script of awqd or awqd-client"
        result = subprocess.run(
            [sys.executable, *modules[command[0]], *command[1:], "--help"], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{command} --help failed:\n{result.stdout}\n{result.stderr}"


def test_console_scripts_are_declared():
    tomllib = pytest.importorskip("tomllib")
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    client = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]["scripts"]
    assert server["awqd"] == "awqd.cli:main"
    assert client["awqctl"] == "awqd_client.cli:main"


def test_every_env_var_the_deployment_sets_is_a_flag():
    objects = manifests()
    names = set(objects["ConfigMap"]["data"])
    names |= {env["name"] for env in awqd_container(objects["DaemonSet"]).get("env", [])}
    for patch in KUBERNETES.glob("components/*/*.yaml"):
        for document in yaml.safe_load_all(patch.read_text()):
            if isinstance(document, dict) and document.get("kind") == "DaemonSet":
                names |= {env["name"] for env in awqd_container(document).get("env", []) if "value" in env}
    awqd_names = {name for name in names if name.startswith("AWQD_")}
    assert awqd_names, "the deployment sets no AWQD_* variable"
    assert awqd_names <= serve_envvars(), f"not flags of `awqd serve`: {sorted(awqd_names - serve_envvars())}"
    assert names - awqd_names <= {"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"}
    assert objects["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
        {"configMapRef": {"name": objects["ConfigMap"]["metadata"]["name"]}}
    ]


def test_grpc_port_agrees_everywhere():
    objects = manifests()
    container = awqd_container(objects["DaemonSet"])
    grpc_port = port_of(objects["ConfigMap"]["data"]["AWQD_LISTEN"])
    assert grpc_port == port_of(str(serve_defaults()["listen"])) == 50051
    probe = exec_form(only("HEALTHCHECK").split(" CMD ", 1)[1])
    assert port_of(probe[probe.index("--target") + 1]) == grpc_port
    assert {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"} in container["ports"]
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe_name]["grpc"] == {"port": grpc_port}, probe_name
    assert str(grpc_port) in only("EXPOSE").split()
    for service in ("awqd", "awqd-node-local"):
        assert {"name": "grpc", "port": grpc_port, "targetPort": "grpc"} in [
            {key: port[key] for key in ("name", "port", "targetPort")} for port in objects[service]["spec"]["ports"]
        ]


def test_metrics_port_agrees_everywhere():
    objects = manifests()
    template = objects["DaemonSet"]["spec"]["template"]
    metrics_port = port_of(objects["ConfigMap"]["data"]["AWQD_METRICS_LISTEN"])
    assert metrics_port == port_of(str(serve_defaults()["metrics_listen"])) == 9400
    assert {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"} in awqd_container(
        objects["DaemonSet"]
    )["ports"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert str(metrics_port) in only("EXPOSE").split()
    monitor = yaml.safe_load((KUBERNETES / "components/service-monitor/servicemonitor.yaml").read_text())
    headless = objects["awqd"]
    assert headless["spec"]["clusterIP"] == "None"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= headless["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {port["name"] for port in headless["spec"]["ports"]}


def test_streams_drain_before_the_kubelet_kills():
    objects = manifests()
    spec = objects["DaemonSet"]["spec"]
    grace = float(objects["ConfigMap"]["data"]["AWQD_GRACE_PERIOD"])
    assert grace < spec["template"]["spec"]["terminationGracePeriodSeconds"]
    assert spec["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0  # one daemon per node's GPUs, even mid-update


def test_boot_fits_in_the_startup_probe():
    objects = manifests()
    startup = awqd_container(objects["DaemonSet"])["startupProbe"]
    budget = float(objects["ConfigMap"]["data"]["AWQD_SELECTION_BUDGET"])
    # Selection runs per GPU: eight GPUs at the full budget, with room left to load and warm up the models.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 8 * budget + 300
    # A pod that turned SERVING is noticed within seconds, so traffic reaches a warm daemon without delay.
    assert startup["periodSeconds"] <= 5


def test_security_context_matches_the_image():
    objects = manifests()
    pod = objects["DaemonSet"]["spec"]["template"]["spec"]
    container = awqd_container(objects["DaemonSet"])
    image_uid = int(only("USER").split(":")[0])
    for context in (pod["securityContext"], container["securityContext"]):
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == image_uid == 10001
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    for init in pod["initContainers"]:
        assert init["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert init["securityContext"]["allowPrivilegeEscalation"] is False


def test_every_path_awqd_writes_is_a_writable_volume():
    objects = manifests()
    container = awqd_container(objects["DaemonSet"])
    volumes = {volume["name"]: volume for volume in objects["DaemonSet"]["spec"]["template"]["spec"]["volumes"]}
    writable = [PurePosixPath(m["mountPath"]) for m in container["volumeMounts"] if not m.get("readOnly")]
    env = image_env()
    cache_dir = objects["ConfigMap"]["data"]["AWQD_CACHE_DIR"]
    assert cache_dir == env["AWQD_CACHE_DIR"] == str(serve_defaults()["cache_dir"])
    for path in (cache_dir, env["TRITON_CACHE_DIR"], env["CUDA_CACHE_PATH"], env["HF_HOME"], "/tmp"):
        assert any(PurePosixPath(path).is_relative_to(mount) for mount in writable), f"{path} is read-only"
    (cache_mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == cache_dir]
    assert volumes[cache_mount["name"]]["hostPath"]["path"] == cache_dir  # decisions outlive the pod
    (model_mount,) = [
        m for m in container["volumeMounts"] if m["mountPath"] == objects["ConfigMap"]["data"]["AWQD_MODEL_ROOT"]
    ]
    assert model_mount["readOnly"] is True


def test_daemonset_runs_only_on_gpu_nodes():
    pod = manifests()["DaemonSet"]["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]} in term["matchExpressions"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["priorityClassName"] == manifests()["PriorityClass"]["metadata"]["name"]


def test_gpu_requests_take_every_gpu_of_the_nodes_they_run_on():
    patch = yaml.safe_load((KUBERNETES / "components/gpu-resource-requests/daemonset-patch.yaml").read_text())
    pod = patch["spec"]["template"]["spec"]
    requested = pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    # A DaemonSet asks the same count everywhere: it runs only where that is the node's whole GPU count.
    assert pod["nodeSelector"]["nvidia.com/gpu.count"] == str(requested) == "8"


def test_node_labels_component_writes_into_nfd_features_dir():
    patch = yaml.safe_load((KUBERNETES / "components/node-labels/daemonset-patch.yaml").read_text())
    container = awqd_container(patch)
    (feature_file,) = [env["value"] for env in container["env"] if env["name"] == "AWQD_FEATURE_FILE"]
    assert PurePosixPath(feature_file).parent == NFD_FEATURES_DIR
    (mount,) = [m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == NFD_FEATURES_DIR]
    (volume,) = [v for v in patch["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert PurePosixPath(volume["hostPath"]["path"]) == NFD_FEATURES_DIR


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for `kubectl kustomize`) is not installed")
@pytest.mark.parametrize("components", [[], *[[name] for name in COMPONENTS], COMPONENTS])
def test_rendered_manifests_validate(tmp_path, components):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    with (tree / "kustomization.yaml").open("a") as kustomization:
        kustomization.write("".join(["components:\n", *[f"  - components/{name}\n" for name in components]]))
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(tree)], capture_output=True, text=True, timeout=120, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    documents = list(yaml.safe_load_all(rendered.stdout))
    for document in documents:
        if document["kind"] == "ServiceMonitor":
            continue  # a Prometheus Operator CRD: no schema in kubernetes-validate
        assert (
            document["kind"] == "Namespace"
            or document["kind"] == "PriorityClass"
            or (document["metadata"]["namespace"] == "awqd")
        )
        kubernetes_validate.validate(document, OLDEST_KUBERNETES, strict=True)
    (daemonset,) = [d for d in documents if d["kind"] == "DaemonSet"]
    container = awqd_container(daemonset)
    assert {env["name"] for env in container.get("env", [])} <= serve_envvars() | {
        "NVIDIA_VISIBLE_DEVICES",
        "NVIDIA_DRIVER_CAPABILITIES",
    }
    mounts = {m["name"] for m in container["volumeMounts"]}
    for init in daemonset["spec"]["template"]["spec"]["initContainers"]:
        mounts |= {m["name"] for m in init["volumeMounts"]}
    assert mounts <= {v["name"] for v in daemonset["spec"]["template"]["spec"]["volumes"]}
