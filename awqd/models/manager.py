"""The hosted models: load, unload, look up, and their life-cycle states."""

import gc
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
import torch

from awqd.config import MODEL_NAME, EngineSettings
from awqd.engine.build import build_engine
from awqd.engine.scheduler import Scheduler
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
from awqd.kernels.base import Candidate, Dispatch
from awqd.models.loader import LoadedModel, load_model
from awqd.quant.linear import KernelRouter

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
    name: str
    path: Path
    device: str
    kernel: str
    state: str = "loading"  # "loading" (warm-up included) | "ready" | "failed"
    error: str = ""
    loaded: LoadedModel | None = None
    router: KernelRouter | None = None
    scheduler: Scheduler | None = None
    load_seconds: float = 0.0
    warmup: WarmupReport | None = None
    announced: bool = False  # listed by boot before its load starts


class ModelManager:
    def __init__(
        self, model_root: Path, default_device: str, planner: KernelPlanner, engine: EngineSettings | None = None
    ):
        self.model_root = model_root
        self.engine = engine or EngineSettings()
        self.default_device = default_device
        self.planner = planner
        self._models: dict[str, HostedModel] = {}
        self._lock = threading.Lock()

    def resolve_path(self, path: str) -> Path:
        """Paths are relative to the model root or absolute inside it; '..' is refused outright."""
        if not path:
            raise InvalidArgument("path", "must name a checkpoint directory")
        if ".." in Path(path).parts:
            raise PermissionDenied(f"path: {path!r} contains '..'; paths must stay inside the model root")
        resolved = (self.model_root / path).resolve()
        if resolved != self.model_root and self.model_root not in resolved.parents:
            raise PermissionDenied(f"path: {path!r} is outside the model root {self.model_root}")
        return resolved

    def load(self, name: str, path: Path, device: str = "", kernel: str = "auto") -> HostedModel:
        """Loads and warms up synchronously (awqd.engine.warmup): the model turns ready only once warm. A failure
        leaves it listed as failed, with the reason, frees what it held, and re-raises."""
        if not MODEL_NAME.match(name):
            raise InvalidArgument("name", f"{name!r} must be 1-128 letters, digits, '.', '_' or '-'")
        device = device or self.default_device
        _check_device(device)
        kernel = kernel or "auto"
        hosted = HostedModel(name=name, path=path, device=device, kernel=kernel)
        with self._lock:
            existing = self._models.get(name)
            if existing is not None and existing.state != "failed" and not existing.announced:
                raise AlreadyExists(f"model {name!r} is already {existing.state}; unload it first")
            self._models[name] = hosted
        started = time.perf_counter()
        log.info("model_loading", model=name, path=str(path), device=device, kernel=kernel)
        scheduler = None
        try:
            dispatch, held = self.planner.plan(device, kernel)
            router = KernelRouter(dispatch)
            loaded = load_model(path, torch.device(device), router, extra_candidates=held, fuse=True)
            scheduler = build_engine(name, loaded, router, self.engine)
            hosted.warmup = warm_up(name, scheduler)
        except Exception as error:
            if scheduler is not None:
                scheduler.close()
            scheduler = loaded = router = None
            _forget_frames(error)
            _release_memory()
            hosted.state, hosted.error = "failed", str(error)
            hosted.load_seconds = time.perf_counter() - started
            log.error("model_failed", model=name, error=str(error))
            if isinstance(error, AwqdError):
                raise
            raise AwqdError(f"loading model {name!r} failed: {type(error).__name__}: {error}") from error
        hosted.loaded, hosted.router = loaded, router
        hosted.scheduler = scheduler
        hosted.load_seconds = time.perf_counter() - started
        hosted.state = "ready"
        log.info(
            "model_ready",
            model=name,
            seconds=round(hosted.load_seconds, 3),
            warmup_seconds=round(hosted.warmup.duration_s, 3),
            bytes=loaded.weight_memory_bytes,
        )
        return hosted

    def announce(self, name: str, path: Path, device: str, kernel: str) -> None:
        """Lists a configured model as loading while boot runs, so early requests get UNAVAILABLE, not NOT_FOUND."""
        with self._lock:
            self._models[name] = HostedModel(
                name=name, path=path, device=device or self.default_device, kernel=kernel or "auto", announced=True
            )

    def mark_failed(self, name: str, path: Path, device: str, error: Exception) -> None:
        """Lists a model that could not even start loading (e.g. a refused path), so Describe shows why."""
        with self._lock:
            self._models[name] = HostedModel(
                name=name,
                path=path,
                device=device or self.default_device,
                kernel="auto",
                state="failed",
                error=str(error),
            )
        log.error("model_failed", model=name, error=str(error))

    def unload(self, name: str) -> None:
        with self._lock:
            hosted = self._models.get(name)
            if hosted is None:
                raise NotFound(f"model {name!r} is not hosted")
            if hosted.state == "loading":
                raise Unavailable(f"model {name!r} is still loading; unload it once it is ready or failed")
            del self._models[name]
        if hosted.scheduler is not None:
            hosted.scheduler.close(on_closed=_release_memory)
        log.info("model_unloaded", model=name)

    def ready(self, name: str) -> HostedModel:
        hosted = self._models.get(name)
        if hosted is None:
            raise NotFound(f"model {name!r} is not hosted; hosted: {', '.join(sorted(self._models)) or 'none'}")
        if hosted.state == "loading":
            raise Unavailable(
                f"model {name!r} is still loading (warm-up included); retry after about {LOADING_RETRY_MS} ms, "
                "or once Describe lists it ready",
                retry_after_ms=LOADING_RETRY_MS,
            )
        if hosted.state == "failed":
            raise FailedPrecondition(f"model {name!r} failed to load: {hosted.error}")
        return hosted

    def list(self) -> list[HostedModel]:
        return sorted(self._models.values(), key=lambda m: m.name)

    def close(self) -> None:
        for hosted in self.list():
            if hosted.scheduler is not None:
                hosted.scheduler.close()


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
