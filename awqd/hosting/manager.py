"""The hosted models: load, unload, look up, route, and their life-cycle states. Each model is a set of replicas,
one engine per device it is placed on (awqd.hosting.replicas)."""

import contextlib
import gc
import threading
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog
import torch

from awqd.config import EngineSettings, check_model_name, parse_placement
from awqd.engine.build import build_engine
from awqd.engine.scheduler import Scheduler
from awqd.engine.sequence import Job
from awqd.engine.warmup import WarmupReport, warm_up
from awqd.errors import (
    AlreadyExists,
    AwqdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from awqd.hosting.replicas import ModelState, Replica, alias, least_loaded, model_state, resolve_placement
from awqd.kernels.base import Candidate, Dispatch
from awqd.kernels.linear import KernelRouter
from awqd.kernels.triton import compilations
from awqd.models.loader import LoadedModel, load_model
from awqd.node.devices import DeviceInfo

log = structlog.get_logger("awqd.models")

LOADING_RETRY_MS = 1000  # the retry hint for a model still loading: loads and warm-ups take seconds


class KernelPlanner(Protocol):
    """What the model manager needs from kernel selection (implemented by the daemon)."""

    def plan(self, torch_device: str, kernel: str) -> tuple[Dispatch, list[Candidate]]:
        """The dispatch for a model on that device, and the other candidates whose layouts the model should hold."""

    def resolve(self, torch_device: str, kernel: str) -> Candidate:
        """The candidate a kernel override names; FailedPrecondition if unsupported there."""


@dataclass
class HostedModel:
    """A hosted model: its replicas, one engine per device it is placed on (awqd.hosting.replicas)."""

    name: str
    path: Path
    kernel: str
    replicas: list[Replica] = field(default_factory=list)
    refused: str = ""  # why it could not even start loading (e.g. a refused path or placement)
    announced: bool = False  # listed by boot before its load starts

    @property
    def state(self) -> ModelState:
        return ModelState.FAILED if self.refused else model_state(self.replicas)

    @property
    def error(self) -> str:
        if self.refused:
            return self.refused
        failed = [replica for replica in self.replicas if replica.state == ModelState.FAILED]
        if len(self.replicas) == 1:
            return self.replicas[0].error
        return "; ".join(f"{replica.label}: {replica.error}" for replica in failed)

    @property
    def primary(self) -> Replica | None:
        """The first ready replica, else the first: what a Benchmark runs on and Describe's model-level fields show."""
        ready = [replica for replica in self.replicas if replica.state == ModelState.READY]
        return (ready or self.replicas or [None])[0]

    @property
    def device(self) -> str:
        return self.primary.device if self.primary else ""

    @property
    def devices(self) -> list[str]:
        return [replica.device for replica in self.replicas]

    @property
    def loaded(self) -> LoadedModel | None:
        return self.primary.loaded if self.primary else None

    @property
    def router(self) -> KernelRouter | None:
        return self.primary.router if self.primary else None

    @property
    def scheduler(self) -> Scheduler | None:
        return self.primary.scheduler if self.primary else None

    @property
    def warmup(self) -> WarmupReport | None:
        return self.primary.warmup if self.primary else None

    @property
    def load_seconds(self) -> float:
        return max((replica.load_seconds for replica in self.replicas), default=0.0)


class ModelManager:
    def __init__(
        self,
        model_root: Path,
        default_device: str,
        planner: KernelPlanner,
        engine: EngineSettings | None = None,
        devices: Sequence[DeviceInfo] = (),
    ):
        self.model_root = model_root
        self.engine = engine or EngineSettings()
        self.default_device = default_device
        self.planner = planner
        self.devices = tuple(devices)  # what placements may name; empty: any torch device (in-process tests)
        self._models: dict[str, HostedModel] = {}
        self._lock = threading.Lock()
        self._route_lock = threading.Lock()  # a pick sees the requests queued by the picks before it

    def resolve_path(self, path: str) -> Path:
        """Paths are relative to the model root or absolute inside it; '..' is refused outright."""
        if not path:
            raise InvalidArgument("path", "must name a checkpoint directory")
        if ".." in Path(path).parts:
            raise PermissionDenied(f"path: {path!r} contains '..'; paths must stay inside the model root")
        resolved = (self.model_root / path).resolve()
        if resolved != self.model_root and self.model_root not in resolved.parents:
            raise PermissionDenied(f"path: {path!r} is outside the model root {self.model_root}")
        if not resolved.is_dir():  # refused before the name is taken: a typo leaves no failed model behind
            raise NotFound(f"path: {path!r} is not a directory in the model root {self.model_root}")
        return resolved

    def placement(self, placement: str, field_name: str = "device") -> list[str]:
        """The torch devices a placement names (awqd.hosting.replicas), each checked."""
        if self.devices:
            devices = resolve_placement(placement, self.devices, self.default_device, field_name)
        else:
            devices = list(parse_placement(placement, field_name)) or [self.default_device]
        for device in devices:
            _check_device(device)
        return devices

    def load(self, name: str, path: Path, placement: str = "", kernel: str = "auto") -> HostedModel:
        """Loads and warms up one replica per placed device, side by side (awqd.engine.warmup): the model turns
        ready once one replica is warm. A failed replica stays listed as failed, with the reason, and frees what
        it held; when every replica failed, the first error is raised."""
        check_model_name(name)
        devices = self.placement(placement)
        kernel = kernel or "auto"
        hosted = HostedModel(name=name, path=path, kernel=kernel, replicas=[Replica(name, path, d) for d in devices])
        with self._lock:
            existing = self._models.get(name)
            if existing is not None and existing.state != ModelState.FAILED and not existing.announced:
                raise AlreadyExists(f"model {name!r} is already {existing.state}; unload it first")
            self._models[name] = hosted
        with ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix=f"load-{name}") as pool:
            errors = [e for e in pool.map(lambda r: self._load_replica(r, kernel), hosted.replicas) if e]
        if hosted.state == ModelState.FAILED:
            raise errors[0]
        return hosted

    def _load_replica(self, replica: Replica, kernel: str) -> AwqdError | None:
        """Builds and warms up one engine; returns the error that failed it, if any."""
        started = time.perf_counter()
        log.info("model_loading", model=replica.model, path=str(replica.path), device=replica.device, kernel=kernel)
        scheduler = loaded = router = None
        device = torch.device(replica.device)
        try:
            dispatch, held = self.planner.plan(replica.device, kernel)
            router = KernelRouter(dispatch)
            with compilations.loading():  # packing and warm-up compile; once ready, the model should not
                # Replicas load side by side, one thread each: each thread works on its own device.
                with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
                    loaded = load_model(replica.path, device, router, extra_candidates=held, fuse=True)
                    scheduler = build_engine(replica.model, loaded, router, self.engine)
                replica.warmup = warm_up(replica.model, scheduler)
        except Exception as error:
            if scheduler is not None:
                scheduler.close()
            scheduler = loaded = router = None
            _forget_frames(error)
            _release_memory()
            replica.state, replica.error = ModelState.FAILED, str(error)
            replica.load_seconds = time.perf_counter() - started
            log.error("model_failed", model=replica.model, device=replica.device, error=str(error))
            if isinstance(error, AwqdError):
                return error
            return AwqdError(f"loading model {replica.model!r} failed: {type(error).__name__}: {error}")
        replica.loaded, replica.router, replica.scheduler = loaded, router, scheduler
        replica.load_seconds = time.perf_counter() - started
        replica.state = ModelState.READY
        threading.Thread(target=self._watch, args=(replica,), name=f"watch-{replica.label}", daemon=True).start()
        log.info(
            "model_ready",
            model=replica.model,
            device=replica.device,
            seconds=round(replica.load_seconds, 3),
            warmup_seconds=round(replica.warmup.duration_s, 3),
            bytes=loaded.weight_memory_bytes,
        )
        return None

    def _watch(self, replica: Replica) -> None:
        """A replica whose scheduler thread stops without an unload has failed: it leaves routing, and the requests
        it held end with UNAVAILABLE naming it, so no caller waits forever."""
        replica.scheduler.wait_stopped()
        if replica.unloading:
            return
        replica.state, replica.error = ModelState.FAILED, "its engine stopped: the scheduler thread ended"
        log.error("replica_failed", model=replica.model, device=replica.device, error=replica.error)
        replica.scheduler.abandon(
            Unavailable(
                f"replica {replica.label} failed ({replica.error}); the model's other ready replicas keep serving"
            )
        )

    def announce(self, name: str, path: Path, placement: str, kernel: str) -> None:
        """Lists a configured model as loading while boot runs, so early requests get UNAVAILABLE, not NOT_FOUND."""
        try:
            devices = self.placement(placement, f"--model {name}")
        except AwqdError as error:
            self.mark_failed(name, path, placement, error)
            return
        with self._lock:
            self._models[name] = HostedModel(
                name, path, kernel or "auto", [Replica(name, path, d) for d in devices], announced=True
            )

    def mark_failed(self, name: str, path: Path, placement: str, error: Exception) -> None:
        """Lists a model that could not even start loading (e.g. a refused path), so Describe shows why."""
        del placement  # no replica was placed
        with self._lock:
            self._models[name] = HostedModel(name=name, path=path, kernel="auto", refused=str(error))
        log.error("model_failed", model=name, error=str(error))

    def unload(self, name: str) -> None:
        """Unloads a model, or one replica of it named MODEL@DEVICE. Either leaves routing at once; its queued and
        running requests finish before its engine is freed, so none is dropped. Unloading the last replica unloads
        the model."""
        model, _, device = name.partition("@")
        if not model:
            raise InvalidArgument("name", "must name a hosted model, or MODEL@DEVICE for one replica")
        with self._lock:
            hosted = self._models.get(model)
            if hosted is None:
                raise NotFound(f"model {model!r} is not hosted")
            leaving = [r for r in hosted.replicas if not device or r.device == alias(device, hosted.devices)]
            if device and not leaving:
                raise NotFound(f"model {model!r} has no replica on {device!r}; it has {', '.join(hosted.devices)}")
            if any(replica.state == ModelState.LOADING for replica in leaving):
                raise Unavailable(f"model {name!r} is still loading; unload it once it is ready or failed")
            for replica in leaving:
                replica.unloading = True
                hosted.replicas.remove(replica)
            if not hosted.replicas:
                del self._models[model]
        for replica in leaving:
            if replica.scheduler is not None:
                replica.scheduler.close(on_closed=_release_memory)
        log.info("model_unloaded", model=model, devices=[replica.device for replica in leaving])

    def ready(self, name: str) -> HostedModel:
        hosted = self._models.get(name)
        if hosted is None:
            raise NotFound(f"model {name!r} is not hosted; hosted: {', '.join(sorted(self._models)) or 'none'}")
        if hosted.state == ModelState.LOADING:
            raise Unavailable(
                f"model {name!r} is still loading (warm-up included); retry after about {LOADING_RETRY_MS} ms, "
                "or once Describe lists it ready",
                retry_after_ms=LOADING_RETRY_MS,
            )
        if hosted.state == ModelState.FAILED:
            raise FailedPrecondition(f"model {name!r} failed to load: {hosted.error}")
        return hosted

    def submit(self, hosted: HostedModel, job: Job) -> Replica:
        """Queues the job on the least-loaded ready replica. One that started unloading (or failed) since it was
        picked refuses the job, and the next is tried. One pick at a time, so each sees the jobs queued before."""
        refused: list[Replica] = []
        with self._route_lock:
            while True:
                replica = least_loaded([r for r in hosted.replicas if r not in refused])
                if replica is None:
                    reason = hosted.error or "all are unloading"
                    raise Unavailable(f"no replica of model {hosted.name!r} is ready ({reason})")
                try:
                    replica.scheduler.submit(job)
                except Unavailable:
                    refused.append(replica)
                    continue
                replica.routed += 1
                return replica

    def list(self) -> list[HostedModel]:
        return sorted(self._models.values(), key=lambda m: m.name)

    def close(self) -> None:
        for hosted in self.list():
            for replica in list(hosted.replicas):
                replica.unloading = True
                if replica.scheduler is not None:
                    replica.scheduler.close()


def _check_device(device: str) -> None:
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise InvalidArgument("device", f"{device!r} is not a torch device: {error}") from None
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise InvalidArgument("device", f"{device!r} is not available on this node")
    if parsed.type not in ("cpu", "cuda"):
        raise InvalidArgument("device", f"{device!r}: awqd runs on cpu or cuda devices")


def _forget_frames(error: BaseException | None) -> None:
    """Clears the locals of every frame an error chain holds: they reference the engine whose memory must go."""
    while error is not None:
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def _release_memory() -> None:
    if torch.cuda.is_available():
        gc.collect()  # an engine's tensors and CUDA graphs may sit in reference cycles
        torch.cuda.empty_cache()
