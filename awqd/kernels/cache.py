"""The on-disk decision cache: one JSON file per device UUID, keyed by a fingerprint of everything that can
change a kernel's speed or correctness. Every failure here is a note and a log line, never a crash.

Writes go to a temp file in the same directory, are fsynced, then os.replace'd over the old file, so a reader
sees the old file or the new one, never a mix. `locked` serialises whole selections per device across
processes (flock), so two daemons sharing a GPU do not time kernels against each other.
"""

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import structlog
import torch

import awqd
from awqd.kernels.measure import MEASUREMENT_METHOD
from awqd.node.devices import DeviceInfo

log = structlog.get_logger("awqd.kernels")

CACHE_FORMAT = 1
LOCK_POLL_S = 0.05


def distribution_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


@functools.cache
def nvidia_driver_version() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else version
    except Exception as error:  # no driver, no NVML: part of the fingerprint, not an error
        return f"unknown ({type(error).__name__})"


@functools.cache
def awqd_kernels_digest() -> str:
    """A digest of awqd's own Triton kernels and tuning spaces (awqd/kernels/triton). Re-validation re-times the
    chosen kernels, not the tiles they were tuned to, and the version stays the same between releases: without
    this, a node that upgraded to changed kernels or spaces would keep tiles tuned for the former ones."""
    sources = sorted((Path(__file__).parent / "triton").glob("*.py"))
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint_parts(
    device: DeviceInfo,
    shapes: Sequence[tuple[int, int]],
    group_size: int,
    buckets: Sequence[int],
    plugins: Sequence[str] = (),
    graph_buckets: Sequence[int] = (),
) -> dict[str, str]:
    """The readable parts the fingerprint hashes; stored next to it so a mismatch can say what changed."""
    return {
        "device_name": device.name,
        "compute_capability": device.capability_str or "cpu",
        "nvidia_driver": nvidia_driver_version() if device.kind == "cuda" else "n/a",
        "cuda_runtime": torch.version.cuda or "none",
        "torch": torch.__version__,
        "triton": distribution_version("triton"),
        "autoawq": distribution_version("autoawq"),
        "autoawq_kernels": distribution_version("autoawq-kernels"),
        "fbgemm_gpu_genai": distribution_version("fbgemm-gpu-genai"),  # installing a kernel library re-measures
        "gemlite": distribution_version("gemlite"),
        "awqd": awqd.__version__,
        "awqd_kernels": awqd_kernels_digest(),
        "measurement": MEASUREMENT_METHOD,  # an older awqd's cache lacks it, and is re-measured
        "layer_shapes": ",".join(f"{out_features}x{in_features}" for out_features, in_features in shapes),
        "group_size": str(group_size),
        "buckets": ",".join(str(bucket) for bucket in buckets),
        "graph_buckets": ",".join(str(bucket) for bucket in graph_buckets),
        "candidate_plugins": ",".join(plugins),
    }


def fingerprint(parts: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(parts), sort_keys=True).encode()).hexdigest()[:16]


def cache_path(cache_dir: Path, device_uuid: str) -> Path:
    return cache_dir / f"decisions-{re.sub(r'[^A-Za-z0-9._-]', '_', device_uuid)}.json"


def changed_parts(stored: Any, current: Mapping[str, str]) -> str:
    if not isinstance(stored, dict):
        return "no readable fingerprint parts stored"
    changes = [
        f"{key}: {stored.get(key, '<missing>')} -> {value}"
        for key, value in current.items()
        if stored.get(key) != value
    ]
    return "; ".join(changes) or "same parts, different hash"


def load(
    cache_dir: Path, device_uuid: str, expected_fingerprint: str, parts: Mapping[str, str]
) -> tuple[dict[str, Any] | None, list[str]]:
    """The cached decisions (as stored by `store`) if the file matches the fingerprint, and notes on why not."""
    path = cache_path(cache_dir, device_uuid)
    if not path.exists():
        return None, [f"no decision cache at {path}"]
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        log.warning("decision_cache_unreadable", path=str(path), error=str(error))
        return None, [f"decision cache {path} is unreadable or corrupt ({error}); re-measuring"]
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
        log.warning("decision_cache_unknown_format", path=str(path))
        return None, [f"decision cache {path} is not in format {CACHE_FORMAT}; re-measuring"]
    if payload.get("fingerprint") != expected_fingerprint:
        changes = changed_parts(payload.get("fingerprint_parts"), parts)
        log.info("decision_cache_stale", path=str(path), changes=changes)
        return None, [f"decision cache {path} was measured on another setup ({changes}); re-measuring"]
    decisions = payload.get("decisions")
    if not isinstance(decisions, dict):
        log.warning("decision_cache_corrupt", path=str(path))
        return None, [f"decision cache {path} has no decisions object; re-measuring"]
    return decisions, []


def store(
    cache_dir: Path, device_uuid: str, fingerprint_value: str, parts: Mapping[str, str], decisions: dict[str, Any]
) -> str | None:
    """Atomically replace the device's cache file. Returns a note when it could not be written."""
    path = cache_path(cache_dir, device_uuid)
    payload = {"format": CACHE_FORMAT, "fingerprint": fingerprint_value, "fingerprint_parts": dict(parts)}
    payload["decisions"] = decisions
    temp_name = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        descriptor, temp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(descriptor, "w") as temp_file:
            json.dump(payload, temp_file, indent=1)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
        temp_name = None
        directory = os.open(cache_dir, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)
    except OSError as error:
        log.warning("decision_cache_unwritable", path=str(path), error=str(error))
        return f"could not write decision cache {path}: {error}"
    finally:
        if temp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
    return None


@contextlib.contextmanager
def locked(cache_dir: Path | None, device_uuid: str, timeout_s: float) -> Iterator[str | None]:
    """Hold the device's selection lock; yields None when held, else a note saying why it is not."""
    if cache_dir is None:
        yield None
        return
    lock_path = cache_path(cache_dir, device_uuid).with_suffix(".lock")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        log.warning("decision_cache_lock_unavailable", path=str(lock_path), error=str(error))
        yield f"no selection lock ({error}); cache writes stay atomic"
        return
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    log.warning("decision_cache_lock_timeout", path=str(lock_path), waited_s=timeout_s)
                    yield f"another process held {lock_path} for {timeout_s:.0f} s; went on without it"
                    return
                time.sleep(LOCK_POLL_S)
        yield None  # closing the descriptor below releases the lock
    finally:
        os.close(descriptor)
