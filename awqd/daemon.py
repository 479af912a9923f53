"""The daemon's state: what it discovered, what it decided, what it hosts. The gRPC layer only translates it.

Boot order: the demo model (if needed) -> the hosted models' layer shapes -> kernel selection on every GPU, the
default device and every device a model is placed on (another device waits for a model loaded there) -> model
loading, each model warmed up before it turns ready (awqd.engine.warmup). The health check turns SERVING
only after all of it, so a ready pod serves at full speed from its first request.
"""

import os
import socket
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import structlog

from awqd import __version__
from awqd.benchmark.params import BenchmarkParams
from awqd.benchmark.report import Progress, Report
from awqd.benchmark.runner import run_benchmark
from awqd.config import ModelSpec, ServeConfig, check_model_name
from awqd.engine.request import GenerateParams
from awqd.engine.sequence import Job
from awqd.errors import FailedPrecondition, InvalidArgument, Unavailable
from awqd.hosting.manager import HostedModel, ModelManager
from awqd.hosting.replicas import ModelState
from awqd.kernels import plugins, registry
from awqd.kernels.base import Candidate, Dispatch
from awqd.kernels.cache_dir import export_cache_dir
from awqd.kernels.candidates.awqd_triton_gemm import AwqdTritonGemm, AwqdTritonGemmBatchInvariant
from awqd.kernels.selection import (
    DecisionSource,
    DeviceDecisions,
    candidate_reports,
    resolve_forced,
    select_kernels,
)
from awqd.kernels.shapes import default_shapes, engine_layer_shapes
from awqd.kernels.triton import compilations
from awqd.labels import publish_feature_file
from awqd.models.checkpoint import open_checkpoint
from awqd.models.demo import DEMO_NAME, demo_model_path, ensure_demo_model
from awqd.node.devices import DeviceInfo, discover, memory_free_bytes
from awqd.node.versions import component_versions
from awqd.state import DeviceState, NodeState

log = structlog.get_logger("awqd")

AUTO = ("", "auto")


class Daemon:
    def __init__(self, config: ServeConfig):
        self.config = config
        self.started_at = datetime.now(UTC)
        self.hostname = socket.gethostname()
        self.discovery = discover(config.cpu_devices)
        self.components = component_versions(self.discovery)
        self.decisions: dict[str, DeviceDecisions] = {}  # by torch device
        self.deferred: set[str] = set()  # devices whose selection waits for a model placed on them
        self._deferred_lock = threading.Lock()
        loaded = plugins.activate(config.candidate_plugins, registry.CANDIDATES)
        for plugin in loaded:
            if plugin.error:
                log.warning("candidate_plugin_unusable", plugin=plugin.spec, error=plugin.error)
        self.ready = threading.Event()
        gpus = [d for d in self.discovery.devices if d.kind == "cuda" and d.torch_device]
        self.default_device = (gpus or list(self.discovery.devices))[0].torch_device
        self.models = ModelManager(
            config.resolved_model_root, self.default_device, self, config.engine, self.discovery.devices
        )
        log.info(
            "devices_discovered",
            devices=[f"{d.index}:{d.kind}:{d.name}" for d in self.discovery.devices],
            nvml_error=self.discovery.nvml_error or None,
            warnings=list(self.discovery.warnings),
        )

    def boot(self) -> None:
        """Everything that must finish before the health check reports SERVING. Never raises."""
        specs = self._model_specs()
        for spec in specs:
            self.models.announce(spec.name, Path(spec.path), spec.device, self.config.kernel)
        specs = [spec for spec in specs if self._checkpoint_ready(spec)]
        shapes, group_sizes = self._hosted_shapes(specs)
        self._keep_triton_builds()
        if any(device.kind == "cuda" for device in self.discovery.devices):
            compilations.watch()  # a compilation after warm-up is logged: a shape warm-up missed
        export_cache_dir(self.config.cache_dir)  # kernel libraries keep their tuning there (awqd/kernels/cache_dir.py)
        self._select_all(shapes, group_sizes, self._selected_at_boot(shapes))
        for spec in specs:
            try:
                self.models.load(spec.name, Path(spec.path), spec.device, self.config.kernel)
            except Exception as error:  # a bad model must not keep the others from serving
                log.error("model_not_loaded", model=spec.name, error=str(error))
        if self.config.feature_file is not None:
            publish_feature_file(self.config.feature_file, self.discovery.devices, self.decisions)
        self.ready.set()
        log.info("ready", models=[m.name for m in self.models.list() if m.state == ModelState.READY])

    def _selected_at_boot(self, shapes: dict[str, list]) -> list[DeviceInfo]:
        """Every GPU (the node's labels list their decisions), the default device, and any device a model is placed
        on. Another device hosting nothing, the host CPU of a GPU node, waits for a model: measuring it at boot took
        as long as the GPU's selection on an H200 node, for a device that serves nothing."""
        addressable = [device for device in self.discovery.devices if device.torch_device]  # others: Describe warns
        now = [
            device
            for device in addressable
            if device.kind == "cuda" or device.torch_device in shapes or device.torch_device == self.default_device
        ]
        self.deferred = {device.torch_device for device in addressable if device not in now}
        if self.deferred:
            log.info("selection_deferred", devices=sorted(self.deferred), reason="no model is placed on them")
        return now

    def _select_deferred(self, devices: list[str], checkpoint: Path) -> None:
        """Selection for the deferred devices among `devices`, on the shapes of the checkpoint about to load there."""
        with self._deferred_lock:
            pending = [device for device in self.discovery.devices if device.torch_device in self.deferred]
            pending = [device for device in pending if device.torch_device in devices]
            if not pending:
                return
            try:
                opened = open_checkpoint(checkpoint)
                layers = list(engine_layer_shapes(opened.config).values())
                shapes = {device.torch_device: layers for device in pending}
                group_sizes = {device.torch_device: opened.quant_config.group_size for device in pending}
            except Exception as error:  # the load reports the checkpoint's fault; select on the default shapes
                log.warning("model_shapes_unreadable", path=str(checkpoint), error=str(error))
                shapes, group_sizes = {}, {}
            self._select_all(shapes, group_sizes, pending)
            self.deferred -= {device.torch_device for device in pending}

    def _select_all(self, shapes: dict[str, list], group_sizes: dict[str, int], devices: list[DeviceInfo]) -> None:
        """Kernel selection on every device, side by side: each device's runs in its own worker process, so a GPU
        node's boot waits for its slowest device, not for the sum (the host CPU took 97 s beside an H200's 93 s).

        Identical devices (same model, capability and hosted shapes, hence the same decision-cache fingerprint)
        share one measurement: the first measures, the others then re-validate its decisions (correctness, graph
        replay and a re-timed ordering: seconds, not the --selection-budget a measurement may take)."""
        groups: dict[tuple, list[DeviceInfo]] = defaultdict(list)
        for device in devices:
            hosted = (tuple(shapes.get(device.torch_device, ())), group_sizes.get(device.torch_device))
            groups[(device.kind, device.name, device.compute_capability, *hosted)].append(device)

        def decide_group(members: list[DeviceInfo]) -> None:
            leader, *followers = members
            self.decisions[leader.torch_device] = self._select(leader, shapes, group_sizes)
            shared = self.decisions[leader.torch_device].source in (
                DecisionSource.MEASURED,
                DecisionSource.CACHE_VALIDATED,
            )
            shared_from = leader.uuid if shared else ""
            with ThreadPoolExecutor(max_workers=max(1, len(followers)), thread_name_prefix="revalidate") as pool:
                decided = pool.map(lambda device: self._select(device, shapes, group_sizes, shared_from), followers)
                self.decisions.update(zip((device.torch_device for device in followers), decided, strict=True))

        with ThreadPoolExecutor(max_workers=max(1, len(groups)), thread_name_prefix="select") as pool:
            list(pool.map(decide_group, groups.values()))
        log.info(
            "devices_decided",
            seconds={device: round(d.duration_s, 3) for device, d in self.decisions.items()},
            sources={device: d.source for device, d in self.decisions.items()},
        )

    def _select(
        self, device: DeviceInfo, shapes: dict[str, list], group_sizes: dict[str, int], shared_from: str = ""
    ) -> DeviceDecisions:
        return select_kernels(
            device,
            shapes.get(device.torch_device) or default_shapes(),
            group_sizes.get(device.torch_device, 128),
            self.config.cache_dir,
            budget_s=self.config.selection_budget_s,
            forced=None if self.config.kernel in AUTO else self.config.kernel,
            graph_batch=self.config.engine.max_batch_size if self.config.engine.cuda_graphs else 0,
            shared_from=shared_from,
        )

    def _keep_triton_builds(self) -> None:
        """Triton's compiled kernels go under the cache directory, so tuning compiles each tile once per node, not
        once per boot (an operator's TRITON_CACHE_DIR wins; an unwritable directory leaves Triton's default)."""
        triton_dir = self.config.cache_dir / "triton"
        try:
            triton_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            log.warning("triton_cache_dir_unusable", path=str(triton_dir), error=str(error))
            return
        os.environ.setdefault("TRITON_CACHE_DIR", str(triton_dir))

    def _model_specs(self) -> list[ModelSpec]:
        """The configured models with their paths checked, or the demo model when none is configured."""
        specs = []
        for spec in self.config.models:
            try:
                specs.append(ModelSpec(spec.name, str(self.models.resolve_path(spec.path)), spec.device))
            except Exception as error:
                self.models.mark_failed(spec.name, Path(spec.path), spec.device, error)
        if not self.config.models and self.config.demo_model:
            specs.append(ModelSpec(DEMO_NAME, str(demo_model_path(self.config.cache_dir))))
        return specs

    def _checkpoint_ready(self, spec: ModelSpec) -> bool:
        """Builds the demo model on first start; an unwritable cache directory leaves it failed, not the daemon."""
        if spec.name != DEMO_NAME or self.config.models:
            return True
        try:
            ensure_demo_model(self.config.cache_dir)
        except Exception as error:
            self.models.mark_failed(spec.name, Path(spec.path), spec.device, error)
            return False
        return True

    def _hosted_shapes(self, specs: list[ModelSpec]) -> tuple[dict[str, list], dict[str, int]]:
        """Per torch device, the decoder-layer shapes of each distinct model it will host, and their group size.

        A model contributes the four linears the engine runs per decoder layer (q/k/v and gate/up fused), so
        timings are per decoder layer and the kernels are chosen, and tuned, on the shapes that run.
        """
        layers: dict[str, dict[tuple, None]] = defaultdict(dict)
        group_sizes: dict[str, int] = {}
        for spec in specs:
            try:
                checkpoint = open_checkpoint(spec.path)
            except Exception as error:
                log.warning("model_shapes_unreadable", model=spec.name, error=str(error))
                continue
            for device in self._placed(spec):
                layers[device][tuple(engine_layer_shapes(checkpoint.config).values())] = None
                group_sizes.setdefault(device, checkpoint.quant_config.group_size)
        shapes = {device: [shape for layer in found for shape in layer] for device, found in layers.items()}
        return shapes, group_sizes

    def _placed(self, spec: ModelSpec) -> list[str]:
        try:
            return self.models.placement(spec.device, f"--model {spec.name}")
        except Exception:  # announce() already listed the model as failed, saying why
            return []

    # KernelPlanner, for the model manager.
    def plan(self, torch_device: str, kernel: str) -> tuple[Dispatch, list[Candidate]]:
        decisions = self._decisions(torch_device)
        if kernel not in AUTO:
            dispatch = Dispatch.single(resolve_forced(decisions, kernel))
        elif self.config.engine.batch_invariant:
            resolve_forced(decisions, AwqdTritonGemm.name)  # FailedPrecondition, saying why, where it cannot run
            dispatch = Dispatch.single(AwqdTritonGemmBatchInvariant())
        elif self.config.single_layout:
            dispatch = single_layout_dispatch(decisions)
        else:
            dispatch = decisions.dispatch()
        held = [] if self.config.single_layout else [registry.build(name) for name in decisions.usable_names()]
        return dispatch, held

    def resolve(self, torch_device: str, kernel: str) -> Candidate:
        return resolve_forced(self._decisions(torch_device), kernel)

    def _decisions(self, torch_device: str) -> DeviceDecisions:
        decisions = self.decisions.get(torch_device)
        if decisions is None:
            if not self.ready.is_set():
                raise Unavailable(f"kernel selection for {torch_device} is still running")
            if torch_device in self.deferred:
                raise FailedPrecondition(f"kernel selection for {torch_device} waits for a model to be loaded there")
            raise FailedPrecondition(f"no kernel decisions for device {torch_device}")
        if decisions.degraded:
            raise FailedPrecondition(f"device {torch_device} is degraded: {decisions.degraded}")
        return decisions

    def load_model(self, name: str, path: str, device: str, kernel: str) -> HostedModel:
        if not self.ready.is_set():
            raise Unavailable("awqd is still booting: kernel selection has not finished")
        check_model_name(name)  # the fields in the order they are declared
        checkpoint = self.models.resolve_path(path)
        self._select_deferred(self.models.placement(device), checkpoint)
        return self.models.load(name, checkpoint, device, kernel)

    def unload_model(self, name: str) -> None:
        """A model, or one replica named MODEL@DEVICE; returns once the requests it held have finished."""
        self.models.unload(name)

    def hosted_models(self) -> list[HostedModel]:
        return self.models.list()

    def prepare(self, params: GenerateParams, received_at: float) -> tuple[HostedModel, Job]:
        """A request checked and tokenized into a job for its model; its timings count from received_at
        (perf_counter). Tokenizing grows with the prompt (about a second per megabyte of text), so the server runs
        this off its loop, and submits the job on it."""
        params.validate(self.config.max_new_tokens_cap)
        hosted = self.models.ready(params.model)
        loaded = hosted.loaded
        pinned = None
        if params.kernel not in AUTO:
            pinned = self.resolve(hosted.device, params.kernel)
            if pinned.layout not in loaded.layouts:
                raise FailedPrecondition(
                    f"kernel {pinned.name} needs the {pinned.layout!r} layout, but model {hosted.name!r} holds "
                    f"{list(loaded.layouts)} (it was loaded with --single-layout or a forced kernel)"
                )
        prompt_ids = params.prompt_ids(
            loaded.tokenizer, loaded.config.vocab_size, loaded.context_length, loaded.prompt_bytes_cap
        )
        if len(prompt_ids) > self.config.max_prompt_tokens:
            raise InvalidArgument(
                "prompt_token_ids" if params.prompt_token_ids else "prompt",
                f"{len(prompt_ids)} tokens exceed this daemon's cap of {self.config.max_prompt_tokens} "
                "(--max-prompt-tokens)",
            )
        return hosted, Job(params=params, prompt_ids=prompt_ids, pinned=pinned, received_at=received_at)

    def submit(self, hosted: HostedModel, job: Job) -> None:
        """Queues a prepared job on the least-loaded ready replica of its model (awqd.hosting.replicas)."""
        self.models.submit(hosted, job)

    def node_state(self) -> NodeState:
        now = datetime.now(UTC)
        devices = []
        for device in self.discovery.devices:
            decisions = self.decisions.get(device.torch_device)
            kernels = decisions.candidates if decisions else candidate_reports(device)
            deferred = device.torch_device in self.deferred
            devices.append(DeviceState(device, memory_free_bytes(device), kernels, decisions, deferred))
        return NodeState(
            hostname=self.hostname,
            awqd_version=__version__,
            started_at=self.started_at,
            uptime_s=(now - self.started_at).total_seconds(),
            components=self.components,
            discovery=self.discovery,
            devices=devices,
        )

    def close(self) -> None:
        self.models.close()

    def benchmark(
        self, params: BenchmarkParams, stop: threading.Event, time_remaining: Callable[[], float | None]
    ) -> Iterator[Progress | Report]:
        """The Benchmark RPC: progress, then the report. Raises for a bad request before anything streams."""
        if not self.ready.is_set():
            raise Unavailable("awqd is still booting: kernel selection has not finished")
        return run_benchmark(self, params, stop, time_remaining)


def single_layout_dispatch(decisions: DeviceDecisions) -> Dispatch:
    """The decode bucket's layout for every bucket: per bucket, the fastest timed candidate with that layout."""
    dispatch = decisions.dispatch()
    layout = dispatch.candidates[0].layout
    candidates = []
    for decision, chosen in zip(decisions.decisions, dispatch.candidates, strict=True):
        same_layout = [t.kernel for t in decision.timings if registry.build(t.kernel).layout == layout]
        candidates.append(
            chosen
            if chosen.layout == layout
            else registry.build(same_layout[0])
            if same_layout
            else dispatch.candidates[0]
        )
    return Dispatch(buckets=dispatch.buckets, candidates=candidates)
