"""Daemon settings. Every field is a `awqd serve` flag with an AWQD_* environment equivalent (see awqd/cli.py)."""

import re
from dataclasses import dataclass, field
from pathlib import Path

from awqd.errors import InvalidArgument

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PREEMPTION_POLICIES = ("swap", "recompute")


# Frontend processes by default on a node with a GPU: 2 and 4 gave the same 256-stream throughput and TTFT on an
# H200 (bench/results/h200-2026-12-04-frontends), and 8 gave no more.
AUTO_FRONTENDS_WITH_GPU = 2
PLACE_EVERYWHERE = "all"  # one replica on every GPU (every CPU device on a node without GPUs)


@dataclass(frozen=True)
class ModelSpec:
    """One `--model NAME=PATH[@PLACEMENT]`; PLACEMENT is "" (the default device), "all", or devices joined by ','."""

    name: str
    path: str
    device: str = ""

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        name, sep, rest = text.partition("=")
        if not sep or not rest:
            raise InvalidArgument("--model", f"expected NAME=PATH[@PLACEMENT], got {text!r}")
        path, _, device = rest.partition("@")
        check_model_name(name, "--model")
        parse_placement(device, field=f"--model {name}")
        return cls(name=name, path=path, device=device)


def check_model_name(name: str, field: str = "name") -> None:
    if not MODEL_NAME.match(name):
        raise InvalidArgument(
            field, f"{name!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )


def parse_placement(text: str, field: str = "device") -> tuple[str, ...]:
    """The devices a placement names, in order: () for the default device, ("all",) for every one. Whether each
    device exists is checked where the devices are known (awqd.hosting.replicas)."""
    if not text:
        return ()
    devices = tuple(part.strip() for part in text.split(","))
    if any(not device for device in devices):
        raise InvalidArgument(field, f"placement {text!r} has an empty device; write e.g. cuda:0,cuda:2 or all")
    if PLACE_EVERYWHERE in devices and len(devices) > 1:
        raise InvalidArgument(field, f"placement {text!r}: {PLACE_EVERYWHERE!r} stands alone")
    if len(set(devices)) != len(devices):
        raise InvalidArgument(field, f"placement {text!r} names a device twice: one engine per device")
    return devices


@dataclass(frozen=True)
class EngineSettings:
    """How each hosted model's engine is sized (awqd.engine.build)."""

    kv_cache_fraction: float = 0.9  # of the device's free memory after the weights (CUDA)
    kv_cache_tokens: int = 16384  # KV-cache tokens on the CPU
    max_batch_size: int = 256  # sequences one decode step runs together (its rows), if the KV cache holds them
    max_queued_requests: int = 1024  # waiting for room in the KV cache, per model
    queue_timeout_s: float = 30.0  # longest wait for room in the KV cache
    # Prompt tokens one step boundary prefills together. 8192, the default --max-prompt-tokens: one prompt that long
    # is prefilled in one pass anyway, so packing shorter ones up to the same total needs no more activation memory
    # (attention runs per prompt; the linears' activations grow with the total), and 256 prompts of 128 tokens are
    # admitted in 4 boundaries, not 16. Lower it to shorten the stall a prefill puts on the running decodes.
    prefill_tokens_per_step: int = 8192
    # While more of a burst could join, the next boundary prefills it before the running batch decodes again, up to
    # this long: 256 prompts of 128 tokens arrive together and take 4 prefills, and every decode step between them
    # delays the last prompts' first tokens. 0: decode at every boundary.
    max_decode_stall_ms: float = 500.0
    # When the KV cache runs out of blocks, the newest running sequence is preempted. "swap": its blocks wait in host
    # memory and come back bit for bit, so it decodes on with no prefill; "recompute": it is prefilled again over its
    # prompt and generated tokens. Swap falls back to recompute when the swap space is full.
    preemption: str = "swap"
    swap_space_gib: float = 4.0  # host memory per model for swapped-out blocks (pinned on GPUs), capped at the cache
    cuda_graphs: bool = True
    # Launch each decode step before streaming the previous one's tokens, so the host's per-token work runs while the
    # GPU computes (awqd.engine.scheduler). Off: every step waits for the previous one's host work, as a baseline.
    overlap_decode: bool = True
    batch_invariant: bool = False  # fixed-tile GEMM and lm_head, unsplit attention, at every batch size
    # Prompts share the KV-cache blocks of a start they have in common (awqd.engine.kv_cache). Off with
    # batch_invariant, which promises tokens that do not depend on what else ran: a pass over cached k/v is not shown
    # to give the bits of a whole prompt's pass.
    prefix_caching: bool = True


@dataclass(frozen=True)
class ServeConfig:
    listen: str = "0.0.0.0:50051"
    cache_dir: Path = Path("/var/cache/awqd")
    model_root: Path | None = None  # defaults to <cache_dir>/models
    models: tuple[ModelSpec, ...] = ()
    demo_model: bool = True  # serve the embedded demo model when no --model is given
    cpu_devices: int = 1  # tests and development only: the host CPU listed as N devices (awqd.node.devices)
    kernel: str = "auto"
    candidate_plugins: tuple[str, ...] = ()  # MODULE:CLASS kernel candidates from outside awqd (docs/plugins.md)
    # An H200's cold first boot took 240.6 s for 11 candidates x 12 buckets, all measured (bench/results/
    # h200-2026-12-02-concurrency-final); buckets past the budget fall back to the rules.
    selection_budget_s: float = 240.0
    single_layout: bool = False
    grace_period_s: float = 30.0
    max_new_tokens_cap: int = 2048
    max_workers: int = 32  # threads for the daemon calls that block (LoadModel, Describe, tokenizing), not streams
    feature_file: Path | None = None  # NFD features.d file for node labels; None: no labels
    log_level: str = "info"
    log_format: str = "json"
    metrics_listen: str = "0.0.0.0:9400"  # "" or "off": no metrics endpoint
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a certificate it signed (mTLS)
    auth_token: str = field(default="", repr=False)
    admin_token: str = field(default="", repr=False)
    reflection: bool = True
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_streams: int = 4096  # Generate and Benchmark streams in flight, daemon-wide
    frontend_processes: int | None = None  # processes that end the calls on --listen; None: by the node's devices
    max_prompt_tokens: int = 8192
    engine: EngineSettings = field(default_factory=EngineSettings)

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("--tls-cert/--tls-key", "serving TLS needs both the certificate and its key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidArgument("--tls-client-ca", "client certificates need TLS: give --tls-cert and --tls-key")
        if self.max_message_bytes < 1024:
            raise InvalidArgument("--max-message-bytes", f"must be at least 1024, got {self.max_message_bytes}")
        for flag, value in (
            ("--max-concurrent-streams", self.max_concurrent_streams),
            ("--max-workers", self.max_workers),
        ):
            if value < 1:
                raise InvalidArgument(flag, f"must be at least 1, got {value}")
        if self.frontend_processes is not None and not 0 <= self.frontend_processes <= 64:
            raise InvalidArgument("--frontend-processes", f"must be 0-64 or auto, got {self.frontend_processes}")
        if self.frontend_processes and self.listen.startswith("unix:"):
            raise InvalidArgument(
                "--frontend-processes", "frontends share --listen's TCP port; a Unix socket cannot be shared"
            )
        if self.max_prompt_tokens < 1:
            raise InvalidArgument("--max-prompt-tokens", f"must be at least 1, got {self.max_prompt_tokens}")
        if not 1 <= self.cpu_devices <= 64:
            raise InvalidArgument("--cpu-devices", f"must be 1-64, got {self.cpu_devices}")
        engine = self.engine
        if not 0 < engine.kv_cache_fraction <= 1:
            raise InvalidArgument("--kv-cache-fraction", f"must be in (0, 1], got {engine.kv_cache_fraction}")
        for flag, value in (
            ("--kv-cache-tokens", engine.kv_cache_tokens),
            ("--max-batch-size", engine.max_batch_size),
            ("--max-queued-requests", engine.max_queued_requests),
        ):
            if value < 1:
                raise InvalidArgument(flag, f"must be at least 1, got {value}")
        if engine.max_decode_stall_ms < 0:
            raise InvalidArgument("--max-decode-stall-ms", f"must be 0 or more, got {engine.max_decode_stall_ms}")
        if engine.queue_timeout_s <= 0:
            raise InvalidArgument("--queue-timeout", f"must be above 0 seconds, got {engine.queue_timeout_s}")
        if engine.preemption not in PREEMPTION_POLICIES:
            raise InvalidArgument("--preemption", f"must be swap or recompute, got {engine.preemption!r}")
        if engine.swap_space_gib < 0:
            raise InvalidArgument("--swap-space-gib", f"must be at least 0, got {engine.swap_space_gib}")

    @property
    def resolved_model_root(self) -> Path:
        return (self.model_root or self.cache_dir / "models").resolve()

    def frontend_count(self, node_has_gpu: bool) -> int:
        """--frontend-processes, with auto resolved: frontends where a GPU's batches make hundreds of streams end at
        once (bench/results/h200-2026-12-04-frontends), none on a CPU-only node or a Unix socket."""
        if self.frontend_processes is not None:
            return self.frontend_processes
        return AUTO_FRONTENDS_WITH_GPU if node_has_gpu and not self.listen.startswith("unix:") else 0
