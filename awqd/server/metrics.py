"""The Prometheus endpoint, and what it reads from the daemon at scrape time.

The counters and histograms updated on the hot path live in awqd/metrics.py. Queue depth, kernel decisions,
device memory and model states are read here when Prometheus scrapes, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import structlog
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from awqd.errors import InvalidArgument
from awqd.hosting.replicas import ModelState
from awqd.node.devices import memory_free_bytes

if TYPE_CHECKING:
    from awqd.daemon import Daemon

log = structlog.get_logger("awqd")

MODEL_STATES = tuple(ModelState)


class DaemonCollector(Collector):
    """Reads the daemon's state when Prometheus scrapes."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        engine = ["model", "device"]  # one engine per device a model is placed on
        queue_depth = GaugeMetricFamily(
            "awqd_queue_depth", "Generate requests waiting for room in their engine's KV cache", labels=engine
        )
        model_state = GaugeMetricFamily(
            "awqd_model_state", "1 for the state each hosted model is in, 0 for the others", labels=["model", "state"]
        )
        kv_blocks = GaugeMetricFamily("awqd_kv_cache_blocks", "KV-cache blocks sequences can hold", labels=engine)
        kv_blocks_in_use = GaugeMetricFamily(
            "awqd_kv_cache_blocks_in_use", "KV-cache blocks held by running sequences", labels=engine
        )
        kv_tokens = GaugeMetricFamily(
            "awqd_kv_cache_tokens", "KV-cache capacity in tokens (blocks x tokens per block)", labels=engine
        )
        kv_blocks_cached = GaugeMetricFamily(
            "awqd_kv_cache_blocks_cached",
            "Free KV-cache blocks that still hold a prompt prefix's k/v for later requests (the prefix cache)",
            labels=engine,
        )
        for hosted in self.daemon.models.list():
            for replica in list(hosted.replicas):
                if replica.scheduler is None:
                    continue
                scheduler, labels = replica.scheduler, [hosted.name, replica.device]
                queue_depth.add_metric(labels, scheduler.queue_depth)
                kv_blocks.add_metric(labels, scheduler.blocks.blocks)
                kv_blocks_in_use.add_metric(labels, scheduler.blocks.used_blocks)
                kv_tokens.add_metric(labels, scheduler.runner.cache.plan.capacity_tokens)
                kv_blocks_cached.add_metric(labels, scheduler.blocks.cached_blocks)
            for state in MODEL_STATES:
                model_state.add_metric([hosted.name, state], float(hosted.state == state))
        yield from (queue_depth, model_state, kv_blocks, kv_blocks_in_use, kv_tokens, kv_blocks_cached)

        decisions = InfoMetricFamily(
            "awqd_kernel_decision",
            "The kernel chosen for each device and batch-size bucket, and how it was chosen",
            labels=["device_uuid", "device", "bucket", "kernel", "source"],
        )
        for torch_device, device_decisions in list(self.daemon.decisions.items()):
            for decision in device_decisions.decisions:
                labels = [device_decisions.device_uuid, torch_device, str(decision.batch_tokens), decision.kernel]
                decisions.add_metric([*labels, decision.source], {})
        yield decisions

        labels = ["device_uuid", "device", "name"]
        total = GaugeMetricFamily(
            "awqd_device_memory_total_bytes", "Device memory (host RAM for the CPU)", labels=labels
        )
        free = GaugeMetricFamily("awqd_device_memory_free_bytes", "Device memory free at scrape time", labels=labels)
        for device in self.daemon.discovery.devices:
            device_labels = [device.uuid, device.torch_device, device.name]
            total.add_metric(device_labels, device.memory_total_bytes)
            free.add_metric(device_labels, memory_free_bytes(device))
        yield total
        yield free


def parse_listen(listen: str) -> tuple[str, int] | None:
    """'HOST:PORT' (IPv6 hosts in brackets) -> (host, port); '' or 'off' -> None."""
    if listen.strip().lower() in ("", "off"):
        return None
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument("--metrics-listen", f"expected HOST:PORT, '' or 'off', got {listen!r}")
    return host.strip("[]"), int(port)


def serve_metrics(listen: str, daemon: Daemon) -> None:
    """Serves /metrics over plain HTTP on a background thread. A port in use is logged, and gRPC serves on."""
    address = parse_listen(listen)
    if address is None:
        log.info("metrics_disabled")
        return
    REGISTRY.register(DaemonCollector(daemon))
    host, port = address
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as error:
        log.error("metrics_bind_failed", listen=listen, error=str(error))
        return
    log.info("metrics_listening", address=f"{listen.rpartition(':')[0]}:{server.server_port}", port=server.server_port)
