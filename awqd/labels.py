"""Node labels for Node Feature Discovery: the kernels awqd chose on this node, as a `features.d` file.

NFD's `local` source reads every regular, non-hidden file in /etc/kubernetes/node-feature-discovery/features.d:
one `name[=value]` per line, `#` comments (`# +` starts a directive), at most 64 KiB. Bare names still get the
feature.node.kubernetes.io/ prefix, but NFD deprecates that (its DisableAutoPrefix gate), so the names here carry
that namespace themselves. NFD skips dot files, so the file is written as a hidden temp file and renamed.
"""

import contextlib
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from awqd.errors import InvalidArgument
from awqd.kernels.capability import FAMILIES
from awqd.kernels.selection import DeviceDecisions
from awqd.node.devices import DeviceInfo

log = structlog.get_logger("awqd.labels")

NAMESPACE = "feature.node.kubernetes.io"
# The decode step (one token) and a long prefill: the two choices a scheduler may want to match on.
LABELED_TOKENS = (1, 512)
MAX_FILE_BYTES = 65536  # NFD ignores a larger feature file
# Kubernetes label values, and the name part of label keys: <= 63 characters, alphanumeric at both ends.
LABEL_TEXT = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def feature_labels(devices: Sequence[DeviceInfo], decisions: Mapping[str, DeviceDecisions]) -> dict[str, str]:
    """Labels for the first GPU torch can use (the CPU on a node without one), keyed by full label name; on a node
    whose GPUs chose differently (mixed models, or a GPU that fell back), each GPU's choices too.

    `decisions` is keyed by torch device, as Daemon.decisions is.
    """
    gpus = [d for d in devices if d.kind == "cuda" and d.torch_device in decisions]
    cpus = [d for d in devices if d.kind == "cpu"]
    device = (gpus or cpus)[0]
    chosen = decisions.get(device.torch_device)
    labels = {"awq.device.kind": device.kind}
    if device.compute_capability is not None:
        labels["awq.device.compute_capability"] = device.capability_str
    usable = set(chosen.usable_names()) if chosen else set()
    for family in FAMILIES:
        members = [report.name for report in chosen.candidates if report.family == family] if chosen else []
        labels[f"awq.kernel.{family}.supported"] = str(bool(usable.intersection(members))).lower()
    if chosen and chosen.decisions:
        dispatch = chosen.dispatch()
        labels["awq.kernel.source"] = chosen.source
        for tokens in LABELED_TOKENS:
            labels[f"awq.kernel.bs{tokens}"] = dispatch.candidate_for(tokens).name
    labels.update(per_gpu_labels(gpus, decisions))
    return {f"{NAMESPACE}/{name}": value for name, value in labels.items()}


def per_gpu_labels(gpus: Sequence[DeviceInfo], decisions: Mapping[str, DeviceDecisions]) -> dict[str, str]:
    """awq.gpu.count, awq.kernel.uniform, and when the GPUs' choices differ, awq.gpuN.kernel.bsT per GPU (N is the
    torch index, as in cuda:N)."""
    if not gpus:
        return {}
    choices = {gpu.torch_device: _choices(decisions[gpu.torch_device]) for gpu in gpus}
    uniform = len(set(choices.values())) == 1
    labels = {"awq.gpu.count": str(len(gpus)), "awq.kernel.uniform": str(uniform).lower()}
    if not uniform:
        for torch_device, chosen in choices.items():
            index = torch_device.partition(":")[2] or "0"
            for tokens, name in zip(LABELED_TOKENS, chosen, strict=True):
                labels[f"awq.gpu{index}.kernel.bs{tokens}"] = name
    return labels


def _choices(decisions: DeviceDecisions) -> tuple[str, ...]:
    if not decisions.decisions:
        return ("none",) * len(LABELED_TOKENS)
    dispatch = decisions.dispatch()
    return tuple(dispatch.candidate_for(tokens).name for tokens in LABELED_TOKENS)


def check_label(name: str, value: str) -> None:
    """Raises InvalidArgument unless `name=value` is a valid, namespaced Kubernetes node label."""
    prefix, slash, short_name = name.rpartition("/")
    if not slash or len(prefix) > 253 or not DNS_SUBDOMAIN.fullmatch(prefix):
        raise InvalidArgument(f"label {name!r}", "the name needs a DNS-subdomain namespace, as in vendor.io/name")
    if len(short_name) > 63 or not LABEL_TEXT.fullmatch(short_name):
        raise InvalidArgument(f"label {name!r}", "the name after '/' must be 1-63 alphanumerics, '-', '_' or '.'")
    if value and (len(value) > 63 or not LABEL_TEXT.fullmatch(value)):
        raise InvalidArgument(
            f"label {name!r}",
            f"value {value!r} must be at most 63 alphanumerics, '-', '_' or '.', alphanumeric at both ends",
        )


def render_feature_file(labels: Mapping[str, str]) -> str:
    for name, value in labels.items():
        check_label(name, value)
    lines = ["# Written by awqd after kernel selection; rewritten on every boot.", *map("=".join, labels.items())]
    text = "\n".join(lines) + "\n"
    if len(text.encode()) > MAX_FILE_BYTES:
        raise InvalidArgument("labels", f"the feature file would exceed NFD's {MAX_FILE_BYTES}-byte limit")
    return text


def write_feature_file(path: Path, labels: Mapping[str, str]) -> None:
    """Atomically replace `path` with one `name=value` line per label. Raises InvalidArgument or OSError."""
    text = render_feature_file(labels)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as temp_file:
            temp_file.write(text)
            temp_file.flush()
            os.fchmod(temp_file.fileno(), 0o644)  # mkstemp makes it 0600; nfd-worker need not run as our user
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise


def publish_feature_file(path: Path, devices: Sequence[DeviceInfo], decisions: Mapping[str, DeviceDecisions]) -> None:
    """write_feature_file for the daemon's boot: a failure is logged with its reason, never raised."""
    try:
        labels = feature_labels(devices, decisions)
        write_feature_file(path, labels)
    except Exception as error:  # labels are advisory: serving goes on without them
        log.error("feature_file_not_written", path=str(path), error=f"{type(error).__name__}: {error}")
        return
    log.info("feature_file_written", path=str(path), labels=labels)
