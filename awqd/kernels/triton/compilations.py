"""Triton compilations in the serving process, counted and logged by phase.

Loading a model compiles (its packing kernels, then warm-up every kernel its traffic will use), so a compilation in
phase "serving", outside every model load, names a kernel specialisation that warm-up missed (the request that met
it waited for the compiler). Pinned kernels (a Benchmark run, a request's `kernel`) may legitimately compile while
serving. Compilations in the kernel-selection workers happen in their own processes and are not seen here.
"""

import contextlib
import threading
from collections.abc import Iterator

import structlog

from awqd import metrics

log = structlog.get_logger("awqd.kernels")

_lock = threading.Lock()
_loads = 0  # model loads (warm-up included) running now: compilations meanwhile are theirs


def watch() -> bool:
    """Hooks Triton's JIT in this process; False where Triton is absent or has no compile hook."""
    try:
        from triton import knobs
    except ImportError:
        return False
    if not hasattr(knobs.runtime, "jit_post_compile_hook"):
        return False
    knobs.runtime.jit_post_compile_hook = compiled
    return True


@contextlib.contextmanager
def loading() -> Iterator[None]:
    global _loads
    with _lock:
        _loads += 1
    try:
        yield
    finally:
        with _lock:
            _loads -= 1


def compiled(*, fn, key, **_) -> None:
    """Triton's post-compile hook: one compiled (or disk-cache loaded) specialisation of kernel `fn`."""
    phase = "load" if _loads else "serving"
    metrics.TRITON_COMPILATIONS.labels(phase).inc()
    log.info("triton_kernel_compiled", kernel=getattr(fn, "name", str(fn)), phase=phase, specialization=str(key)[:300])
