"""Launch configurations per device, layer shape and batch bucket for awqd's Triton kernels.

On-boot selection (awqd/kernels/selection.py) calls tune(): every configuration of the kernel's tuning space is
timed on every hosted layer shape at every bucket it is tuned for, and the fastest is kept. A configuration's time
is per launch, with the weight copies' launches back to back in one CUDA graph (past L2, as all timings), as the
engine's decode graph runs them. The table is stored with the device's decisions, so it shares their
cache file, fingerprint and re-validation, and install() makes it what the launch wrappers use. A step looks its
configuration up by (kernel, device, shape, first tuned bucket >= its rows); anything not tuned runs the kernel's
untuned default.
"""

import bisect
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial
from typing import Any

import torch

from awqd.kernels.measure import per_launch_ms, random_layer_weights, rotation_copies, served_counters
from awqd.kernels.triton.layout import pack_awqd_w4

# (warm-up, timed passes) per configuration. Per launch, back to back, no pick was >5% slower than the fastest tile
# in 180 rankings on two H200s (bench/results/h200-2026-12-03-tuning-per-launch).
TUNING_REPETITIONS = (3, 10)
COMPILE_THREADS = 8
# Of a kernel's tuning time, what compiling on threads may take before timing starts. On H200s 256 skinny tiles
# compiled in 13.6-16.0 s on 8 threads and then timed in 2.8 s (bench/results/h200-2026-12-04-own-kernels), so a
# compiled tile costs about a sixth of its compile to time: compiling gets most of a share too short for both.
COMPILE_SHARE = 0.8

# kernel name -> device -> (out, in) -> sorted [(bucket, config)]
Table = dict[tuple[int, int], list[tuple[int, Any]]]
_tables: dict[tuple[str, str], Table] = {}
_lock = threading.Lock()


def lookup(kernel: str, device: torch.device, out_features: int, in_features: int, rows: int) -> Any | None:
    """The tuned configuration for a step, or None where nothing was tuned for this kernel, device and shape."""
    entries = _tables.get((kernel, str(device)), {}).get((out_features, in_features))
    if not entries:
        return None
    position = bisect.bisect_left(entries, rows, key=lambda entry: entry[0])  # per layer per step: no list built
    return entries[min(position, len(entries) - 1)][1]


def install(kernel: str, device: torch.device, stored: dict[str, dict[str, dict]], config_type: type) -> None:
    """Make a stored table ({"OUTxIN": {"bucket": config fields}}) the one the kernel uses on `device`."""
    table: Table = {}
    for shape, by_bucket in stored.items():
        out_features, in_features = (int(part) for part in shape.split("x"))
        table[out_features, in_features] = sorted((int(b), config_type(**fields)) for b, fields in by_bucket.items())
    with _lock:
        _tables[kernel, str(device)] = table


def precompile(
    compile_tile: Callable[..., Any],
    space: Callable[[int], Sequence[Any]],
    shapes: Sequence[tuple[int, int]],
    buckets: Sequence[int],
    group_size: int,
    device: torch.device,
    until: float,
) -> int:
    """Compile the tiles tune() is about to time, in its order, on COMPILE_THREADS threads until `until`; returns
    how many compiled. Compiled one at a time, as tune() first met them, compiling took most of the skinny kernel's
    tuning time: on H200 boots with the peers installed, 150-300 s budgets tuned only 10-15 of its 40 (shape,
    bucket) pairs (bench/results/h200-2026-12-04-own-kernels). Triton releases the interpreter lock for most of a
    compile: 8 sm_90 builds of the skinny kernel took 3.9 s on one thread and 2.2 s on two (a 2-core host).

    Every thread has ended when this returns: timing captures CUDA graphs, and an allocation or a random draw on
    another thread during a capture fails it. Timing beside the compiles failed that way on an H200."""
    layers = {
        shape: pack_awqd_w4(random_layer_weights([shape], group_size, device, 1)[0][0], device)
        for shape in dict.fromkeys(shapes)
    }
    jobs = [(shape, bucket, config) for shape in layers for bucket in buckets for config in space(bucket)]

    def attempt(shape: tuple[int, int], bucket: int, config: Any) -> bool:
        try:
            with contextlib.ExitStack() as stack:
                if device.type == "cuda":  # a new thread's current device is the first GPU
                    stack.enter_context(torch.cuda.device(device))
                stack.enter_context(served_counters(device))  # the tile as timed: merging where it merges
                x = torch.randn(bucket, shape[1], device=device, dtype=torch.float16)
                compile_tile(x, layers[shape], config)
            return True
        except Exception:  # a tile that does not build is skipped again, with its reason, when it is timed
            return False

    if not jobs:
        return 0
    first = attempt(*jobs[0])  # on this thread: Triton sets up its state for the device at the first compile
    with ThreadPoolExecutor(COMPILE_THREADS, thread_name_prefix="awqd-compile") as pool:
        futures = [pool.submit(attempt, *job) for job in jobs[1:]]
        wait(futures, timeout=max(0.0, until - time.perf_counter()))
        pool.shutdown(wait=True, cancel_futures=True)  # the compiles under way finish; the rest are timed cold
    return first + sum(f.result() for f in futures if not f.cancelled())


def tune(
    kernel: str,
    launch: Callable[..., torch.Tensor],
    space: Callable[[int], Sequence[Any]],
    shapes: Sequence[tuple[int, int]],
    buckets: Sequence[int],
    group_size: int,
    device: torch.device,
    deadline: float,
) -> tuple[dict[str, dict[str, dict]], int]:
    """Time space(bucket) on each distinct shape at each bucket; returns the stored form of the fastest per pair,
    and how many pairs the deadline left untimed (they stay on the default). A configuration that fails (e.g. needs
    more shared memory than the device has) is skipped."""
    stored: dict[str, dict[str, dict]] = {}
    untuned = 0
    for out_features, in_features in dict.fromkeys(shapes):
        weights = random_layer_weights(
            [(out_features, in_features)], group_size, device, rotation_copies([(out_features, in_features)], device)
        )
        packed = [pack_awqd_w4(copy[0], device) for copy in weights]
        for bucket in buckets:
            if not space(bucket):
                continue
            if time.perf_counter() >= deadline:
                untuned += 1
                continue
            x = torch.randn(bucket, in_features, device=device, dtype=torch.float16)
            best_ms, best = float("inf"), None
            for config in space(bucket):
                launches = [partial(launch, x, layer, config) for layer in packed]
                try:
                    launch_ms = per_launch_ms(kernel, launches, device, TUNING_REPETITIONS)
                except Exception:  # this tile does not fit the device; the others still compete
                    continue
                if launch_ms < best_ms:
                    best_ms, best = launch_ms, config
            if best is not None:
                stored.setdefault(f"{out_features}x{in_features}", {})[str(bucket)] = dataclasses.asdict(best)
        del weights, packed
    return stored, untuned
