"""Correctness and timing of kernel candidates: the one measuring code, for boot-time selection and Benchmark.

Correctness: fresh random weights and inputs every check (the seed is reported), compared with the float32
reference by ||out - ref|| / ||ref||. Tolerance: 2e-2 for fp16. An fp16 kernel's error comes from rounding the
dequantized weight and the output to fp16 (~5e-4 each) plus fp16 accumulation, which AutoAWQ's GEMV and the
Triton GEMM (fp16 accumulator, fp16 split-K atomics) do: up to ~1e-2 over K = 11008. A wrong layout, nibble
order or group mapping gives errors of 0.5 and more, so 2e-2 passes every honest fp16 kernel with 2x margin
and still fails every packing bug. float32 (the CPU) differs from the reference only by summation order: 1e-4.
A candidate that computes in bf16 (Candidate.precision) gets the 16-bit bound on any device.

Timing: warm-up, then per iteration one pass over all layer shapes (e.g. the seven linear layers of a
decoder layer), so a bucket's time is the sum over the shapes. On CUDA each pass is timed with CUDA events,
replaying a CUDA graph when capture works (eager otherwise, and the timing says which); on the CPU with
perf_counter. Weights are rotated over enough copies to exceed twice the last-level cache, so every pass
reads them from memory as a real forward pass does.
"""

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from awqd.kernels import split_counters
from awqd.kernels.base import Candidate, DeferredNorm
from awqd.quant.reference import dequantize
from awqd.quant.tensors import QuantizedWeight

FP16_TOLERANCE = 2e-2
FP32_TOLERANCE = 1e-4
# Leading input shapes checked: 1 token, 7 rows (the largest GEMV_FAST decode batch), and a 3-D prefill.
CORRECTNESS_INPUTS: tuple[tuple[int, ...], ...] = ((1,), (7,), (2, 32))
INPUTS_PER_SHAPE = 2  # different inputs per input shape, eagerly and on graph replay
# A timing below this share of the roofline floor is a measurement error. Copy bandwidth reaches ~88% of an
# H200's 4.8 TB/s peak; a kernel reading at 95% of peak would still sit at 0.92x the floor.
ROOFLINE_MARGIN = 0.9
MAX_ROTATION_COPIES = 8
# Part of the decision cache's fingerprint. Bump it when a change in how candidates or tiles are timed should
# re-measure cached decisions: re-validation re-times the chosen kernels, not the tiles they were tuned to.
# 2: tuning ranks tiles per launch, back to back (per_launch_ms).
# 3: kernels are checked and timed holding split counters, as the engine's steps run them.
MEASUREMENT_METHOD = "3"
CPU_CACHE_BYTES = 32 * 2**20  # no portable way to read the CPU's last-level cache size; a typical server L3
FP16_BASELINE = "fp16_cublas"
NORM_EPS = 1e-5  # where a candidate's deferred-norm forms are checked
PARTIAL_COLUMNS = 32  # columns per partial sum of squares in the deferred norms the checks make


@dataclass(frozen=True)
class CorrectnessCheck:
    passed: bool
    max_relative_error: float
    tolerance: float
    error: str = ""


@dataclass(frozen=True)
class GraphReplayCheck:
    passed: bool
    error: str = ""  # why it failed; when it passed, a note such as a capture the engine would run eagerly
    captured: bool = True


@dataclass(frozen=True)
class KernelTiming:
    kernel: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    cuda_graph: bool


@dataclass(frozen=True)
class PreparedLayers:
    """A candidate's packed weights: packed[copy][layer], with the (out, in) of each layer."""

    candidate: Candidate
    shapes: tuple[tuple[int, int], ...]
    packed: list[list[Any]]


def served_counters(device: torch.device) -> contextlib.AbstractContextManager:
    """Split counters of the measurement's own, held as the engine's step runner holds its, so that kernels are
    checked and timed as they are served. Held until a graph captured within has replayed for the last time."""
    return split_counters.held(split_counters.new(device))


def compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def tolerance_for(dtype: torch.dtype) -> float:
    """float32 or a 16-bit float (fp16, or bf16: 3 bits less mantissa, ~3e-3 from tinygemm and fbgemm on an H200)."""
    return FP32_TOLERANCE if dtype == torch.float32 else FP16_TOLERANCE


def default_repetitions(device: torch.device) -> tuple[int, int]:
    """(warm-up, timed) iterations: CUDA passes take microseconds to milliseconds, CPU passes far longer."""
    return (10, 50) if device.type == "cuda" else (2, 7)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_weight(
    out_features: int, in_features: int, group_size: int, device: torch.device, generator: torch.Generator, bias: bool
) -> QuantizedWeight:
    """Uniform 4-bit values and zeros, positive scales of typical AWQ magnitude (1e-3..1e-2), never all zero."""
    groups = in_features // group_size
    q = torch.randint(0, 16, (out_features, in_features), dtype=torch.uint8, device=device, generator=generator)
    zeros = torch.randint(0, 16, (out_features, groups), dtype=torch.uint8, device=device, generator=generator)
    scales = torch.rand((out_features, groups), device=device, generator=generator) * 9e-3 + 1e-3
    bias_values = torch.randn(out_features, device=device, generator=generator) * 0.1 if bias else None
    return QuantizedWeight(
        q=q,
        zeros=zeros,
        scales=scales.to(torch.float16),
        group_size=group_size,
        bias=bias_values.to(torch.float16) if bias_values is not None else None,
    )


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out.float() - ref).norm().item() / max(ref.norm().item(), torch.finfo(torch.float32).tiny)


def check_correctness(
    candidate: Candidate,
    device: torch.device,
    shapes: Sequence[tuple[int, int]],
    group_size: int,
    inputs: Sequence[tuple[int, ...]] = CORRECTNESS_INPUTS,
    progress: Callable[[str], None] | None = None,
) -> CorrectnessCheck:
    """Compare candidate.forward and its other served forms (served_outputs) with the float32 reference on every
    distinct shape, with INPUTS_PER_SHAPE different inputs per input shape (a kernel that returns a cached result fails
    the second). Never raises.

    `progress` is told where the check is before each forward, so a crash there can be reported with its place."""
    dtype = compute_dtype(device)
    tolerance = tolerance_for(candidate.precision or dtype)
    seed = int.from_bytes(os.urandom(4), "little")
    worst = 0.0
    where = "prepare"
    try:
        generator = torch.Generator(device=device).manual_seed(seed)
        with served_counters(device):
            for index, (out_features, in_features) in enumerate(dict.fromkeys(shapes)):
                where = f"[{out_features}x{in_features}] group {group_size}"
                weight = random_weight(out_features, in_features, group_size, device, generator, bias=index == 0)
                dense = dequantize(weight, torch.float32)  # the reference's weight, once per shape
                if progress:
                    progress(f"prepare {where}")
                packed = candidate.prepare(weight, device)
                for leading in inputs:
                    xs = [
                        torch.randn((*leading, in_features), device=device, generator=generator).to(dtype)
                        for _ in range(INPUTS_PER_SHAPE)
                    ]  # all alive at once: a kernel keyed on the input's address cannot tell them apart by it either
                    for number, x in enumerate(xs, 1):
                        where = (
                            f"[{out_features}x{in_features}] group {group_size}, input {[*leading, in_features]} "
                            f"#{number} of {len(xs)}"
                        )
                        if progress:
                            progress(f"correctness at {where}")
                        outputs = served_outputs(candidate, x, packed)
                        synchronize(device)  # an asynchronous kernel fault surfaces here, charged to this candidate
                        error, failure = compare_served(outputs, x, dense, weight, dtype, tolerance)
                        worst = max(worst, error)
                        if failure:
                            return CorrectnessCheck(False, worst, tolerance, f"{where}: {failure} (seed {seed})")
    except Exception as error:  # CUDA errors, missing kernels and shape refusals all become the rejection reason
        return CorrectnessCheck(False, worst, tolerance, f"{where}: {type(error).__name__}: {error} (seed {seed})")
    return CorrectnessCheck(True, worst, tolerance)


def reference(x: torch.Tensor, dense: torch.Tensor, weight: QuantizedWeight) -> torch.Tensor:
    """reference_linear with the weight dequantized once: float32 x @ W.T + bias."""
    y = x.float() @ dense.t()
    return y + weight.bias.float() if weight.bias is not None else y


def served_outputs(candidate: Candidate, x: torch.Tensor, packed: Any) -> dict[str, torch.Tensor]:
    """What the engine runs a layer with: forward; the gated form where the candidate has one and the layer could be
    an MLP's [gate; up] (an even out_features); and where the candidate defers norms, the output added to a residual
    stream with its norm deferred (the sum, the weighted sum and 1/rms), and the layer on x's own deferred norm, gated
    too where the gated form is checked."""
    outputs = {"forward": candidate.forward(x, packed)}
    if outputs["forward"].shape[-1] % 2 == 0 and (gated := candidate.forward_gated(x, packed)) is not None:
        outputs["gated"] = gated
    residual, norm_weight = norm_inputs(outputs["forward"].shape, x.dtype, x.device)
    if (added := candidate.forward_add_norm(x, packed, residual, norm_weight, NORM_EPS)) is not None:
        total, norm = added
        outputs |= {"residual": total, "weighted": norm.weighted, "inverse_rms": norm.inverse_rms().to(x.dtype)}
        deferred = deferred_input(x)
        outputs["deferred"] = candidate.forward_deferred(deferred, packed, gated=False)
        if "gated" in outputs:
            outputs["deferred_gated"] = candidate.forward_deferred(deferred, packed, gated=True)
    return outputs


def norm_weight_for(columns: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A norm weight around 1, as trained models' are."""
    return (1 + 0.5 * torch.cos(torch.arange(columns, device=device, dtype=torch.float32))).to(dtype)


def norm_inputs(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A residual stream of a layer output's shape, several times its size, and a norm weight: fixed functions of the
    position, so that a CUDA graph can capture them."""
    positions = torch.arange(math.prod(shape), device=device, dtype=torch.float32).reshape(shape)
    return (4 * torch.sin(positions)).to(dtype), norm_weight_for(shape[-1], dtype, device)


def deferred_input(x: torch.Tensor) -> DeferredNorm:
    """x as a residual stream whose norm is deferred (norm_weight_for), its squares summed PARTIAL_COLUMNS at a time."""
    x32 = x.float()
    weighted = (x32 * norm_weight_for(x.shape[-1], x.dtype, x.device).float()).to(x.dtype)
    squares = x32.pow(2).reshape(*x.shape[:-1], -1, math.gcd(x.shape[-1], PARTIAL_COLUMNS)).sum(-1)
    return DeferredNorm(weighted, squares, NORM_EPS)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS) * weight


def compare_served(
    outputs: dict[str, torch.Tensor],
    x: torch.Tensor,
    dense: torch.Tensor,
    weight: QuantizedWeight,
    dtype: torch.dtype,
    tolerance: float,
) -> tuple[float, str]:
    """compare() for served_outputs on input x, each against the float32 reference: forward against reference(x), the
    gated forms against silu(gate) * up, the residual's sum, weighted sum and 1/rms against their float32 values,
    and the deferred forms against the reference on x normed. Returns the worst error and the first failure."""
    ref = reference(x, dense, weight)
    expected = {"forward": ref}
    if "residual" in outputs:
        residual, norm_weight = (t.float() for t in norm_inputs(ref.shape, dtype, ref.device))
        total = residual + ref
        expected |= {
            "residual": total,
            "weighted": total * norm_weight,
            "inverse_rms": torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + NORM_EPS),
        }
        normed = rms_norm_reference(x.float(), norm_weight_for(x.shape[-1], dtype, x.device).float())
        expected["deferred"] = reference(normed, dense, weight)
    for name, ungated in (("gated", "forward"), ("deferred_gated", "deferred")):
        if name in outputs:
            gate, up = expected[ungated].chunk(2, dim=-1)
            expected[name] = F.silu(gate) * up
    results = []
    for name, out in outputs.items():
        error, failure = compare(out, expected[name], dtype, tolerance)
        results.append((error, f"{name}: {failure}" if failure and name != "forward" else failure))
    return max(error for error, _ in results), next((failure for _, failure in results if failure), "")


def compare(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, tolerance: float) -> tuple[float, str]:
    """(relative error to the float32 reference, what is wrong in words or "" when within tolerance)."""
    if tuple(out.shape) != tuple(ref.shape) or out.dtype != dtype:
        return 0.0, f"got {out.dtype} {list(out.shape)}, expected {dtype} {list(ref.shape)}"
    if not torch.isfinite(out).all():
        return 0.0, "NaN or inf in the output"
    error = relative_error(out, ref)
    return error, f"relative error {error:.3g} > {tolerance}" if error > tolerance else ""


def check_graph_replay(
    candidate: Candidate,
    device: torch.device,
    shapes: Sequence[tuple[int, int]],
    group_size: int,
    num_tokens: int,
    progress: Callable[[str], None] | None = None,
) -> GraphReplayCheck:
    """The served mode of a decode bucket: capture served_outputs on a static input buffer as a CUDA graph, then write
    INPUTS_PER_SHAPE fresh inputs into that buffer and compare each replay's output with the reference. A kernel
    launched outside the capture stream (e.g. on the legacy default stream) runs once at capture and never on
    replay, so its output goes stale. A capture that fails is no error: the engine runs that step eagerly."""
    dtype = compute_dtype(device)
    tolerance = tolerance_for(dtype)
    generator = torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(4), "little"))
    where = f"{num_tokens} tokens"
    try:
        with served_counters(device):
            for out_features, in_features in dict.fromkeys(shapes):
                where = f"[{out_features}x{in_features}], {num_tokens} tokens"
                weight = random_weight(out_features, in_features, group_size, device, generator, bias=False)
                packed = candidate.prepare(weight, device)
                static_x = torch.randn(num_tokens, in_features, device=device, generator=generator).to(dtype)
                if progress:
                    progress(f"graph capture at {where}")
                stream = torch.cuda.Stream(device)
                stream.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graph asks
                    warm = served_outputs(candidate, static_x, packed)
                torch.cuda.current_stream(device).wait_stream(stream)
                dense = dequantize(weight, torch.float32)
                _, failure = compare_served(warm, static_x, dense, weight, dtype, tolerance)
                if failure:
                    return GraphReplayCheck(False, f"eager at {where}: {failure}")
                graph = torch.cuda.CUDAGraph()
                try:
                    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                        static_outputs = served_outputs(candidate, static_x, packed)
                except Exception as error:
                    with contextlib.suppress(Exception):
                        torch.cuda.synchronize(device)
                    return GraphReplayCheck(True, f"capture failed at {where} ({type(error).__name__}: {error})", False)
                for number in range(1, INPUTS_PER_SHAPE + 1):
                    static_x.copy_(torch.randn(static_x.shape, device=device, generator=generator).to(dtype))
                    if progress:
                        progress(f"graph replay at {where}, fresh input #{number}")
                    graph.replay()
                    torch.cuda.synchronize(device)
                    _, failure = compare_served(static_outputs, static_x, dense, weight, dtype, tolerance)
                    if failure:
                        return GraphReplayCheck(
                            False, f"CUDA-graph replay at {where}, fresh input #{number}: {failure}"
                        )
                del graph
    except Exception as error:  # CUDA errors surface as the reason, like the eager check's
        return GraphReplayCheck(False, f"CUDA-graph check at {where}: {type(error).__name__}: {error}")
    return GraphReplayCheck(True)


def roofline_floor_ms(shapes: Sequence[tuple[int, int]], copy_bandwidth_gbps: float) -> float:
    """The least time one pass over `shapes` can take: reading their int4 weights at the copy bandwidth."""
    return sum(out_features * in_features // 2 for out_features, in_features in shapes) / copy_bandwidth_gbps / 1e6


def roofline_applies(shapes: Sequence[tuple[int, int]], device: torch.device) -> bool:
    """Timings stream the weights from memory only where the rotation reaches twice the cache; smaller sets are
    read from cache, faster than the copy bandwidth, and no floor holds for them."""
    set_bytes = sum(out_features * in_features // 2 for out_features, in_features in shapes)
    return set_bytes * rotation_copies(shapes, device) >= 2 * cache_bytes(device)


def cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    return CPU_CACHE_BYTES


def rotation_copies(shapes: Sequence[tuple[int, int]], device: torch.device) -> int:
    """Copies of the layer set needed so that one full rotation is twice the cache (int4 bytes)."""
    set_bytes = max(1, sum(out_features * in_features // 2 for out_features, in_features in shapes))
    return max(1, min(MAX_ROTATION_COPIES, math.ceil(2 * cache_bytes(device) / set_bytes)))


def random_layer_weights(
    shapes: Sequence[tuple[int, int]], group_size: int, device: torch.device, copies: int
) -> list[list[QuantizedWeight]]:
    generator = torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(4), "little"))
    return [[random_weight(o, i, group_size, device, generator, bias=False) for o, i in shapes] for _ in range(copies)]


def prepare_layers(candidate: Candidate, weights: list[list[QuantizedWeight]], device: torch.device) -> PreparedLayers:
    shapes = tuple((w.out_features, w.in_features) for w in weights[0])
    packed = [[candidate.prepare(weight, device) for weight in copy] for copy in weights]
    return PreparedLayers(candidate, shapes, packed)


def prepare_all(
    candidates: Sequence[Candidate],
    shapes: Sequence[tuple[int, int]],
    group_size: int,
    device: torch.device,
    notes: list[str],
) -> list[PreparedLayers]:
    """Each candidate's packed copy of one set of random timing weights; a candidate that cannot pack is noted."""
    if not candidates:
        return []
    weights = random_layer_weights(shapes, group_size, device, rotation_copies(shapes, device))
    layers = []
    for candidate in candidates:
        try:
            layers.append(prepare_layers(candidate, weights, device))
        except Exception as error:  # e.g. out of memory for one more layout
            notes.append(f"{candidate.name} could not pack the timing weights: {type(error).__name__}: {error}")
    return layers


def summarize(kernel: str, times_ms: list[float], cuda_graph: bool) -> KernelTiming:
    if len(times_ms) == 1:
        return KernelTiming(kernel, times_ms[0], times_ms[0], times_ms[0], cuda_graph)
    deciles = statistics.quantiles(times_ms, n=10, method="inclusive")
    return KernelTiming(kernel, statistics.median(times_ms), deciles[0], deciles[-1], cuda_graph)


def capture_graphs(passes: list[Callable[[], None]], device: torch.device) -> list[torch.cuda.CUDAGraph] | None:
    """One CUDA graph per rotation copy, or None where a kernel cannot be captured (AutoAWQ's gemmv2)."""
    try:
        graphs = []
        for run_pass in passes:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                run_pass()
            graphs.append(graph)
        for graph in graphs:
            graph.replay()
        torch.cuda.synchronize(device)
        return graphs
    except Exception:
        # A capture error can stay pending on the stream; the eager run that follows will report it.
        with contextlib.suppress(Exception):
            torch.cuda.synchronize(device)
        return None


def time_passes(
    name: str,
    passes: list[Callable[[], None]],
    device: torch.device,
    warmup: int,
    iterations: int,
    use_cuda_graph: bool = True,
    progress: Callable[[str], None] | None = None,
) -> KernelTiming:
    """Time `iterations` passes, rotating over `passes` (one per weight copy). `progress` hears of every CPU
    pass (CPU passes can take seconds; on CUDA a whole timing takes milliseconds)."""
    with served_counters(device):
        for index in range(warmup * len(passes)):
            passes[index % len(passes)]()
            if progress and device.type != "cuda":
                progress(f"warm-up pass {index + 1}")
        synchronize(device)
        if device.type != "cuda":
            times_ms = []
            for index in range(iterations):
                started = time.perf_counter()
                passes[index % len(passes)]()
                times_ms.append((time.perf_counter() - started) * 1e3)
                if progress:
                    progress(f"timed pass {index + 1} of {iterations}")
            return summarize(name, times_ms, cuda_graph=False)

        graphs = capture_graphs(passes, device) if use_cuda_graph else None
        runs = [graph.replay for graph in graphs] if graphs else passes
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
        for index in range(iterations):
            starts[index].record()
            runs[index % len(runs)]()
            ends[index].record()
        torch.cuda.synchronize(device)
        return summarize(
            name, [start.elapsed_time(end) for start, end in zip(starts, ends, strict=True)], cuda_graph=bool(graphs)
        )


def per_launch_ms(
    name: str, launches: list[Callable[[], Any]], device: torch.device, repetitions: tuple[int, int]
) -> float:
    """ms per launch of `launches` run back to back in one timed pass (a CUDA graph on a GPU), as the engine's graph
    runs layer after layer: the timing events' own cost and the gap before the pass are spread over all of them.
    Timed one launch per replay, 5-10 µs launches were ranked partly by that overhead: on H200s, tuning that way
    picked tiles up to 27% slower (bench/results/h200-2026-12-03-tuning-per-launch)."""

    def run_pass() -> None:
        for launch in launches:
            launch()

    return time_passes(name, [run_pass], device, *repetitions).median_ms / len(launches)


def time_candidate(
    layers: PreparedLayers,
    device: torch.device,
    num_tokens: int,
    warmup: int,
    iterations: int,
    use_cuda_graph: bool = True,
    progress: Callable[[str], None] | None = None,
) -> KernelTiming:
    """Median/p10/p90 of one pass over all layers at `num_tokens` tokens."""
    dtype = compute_dtype(device)
    forward = layers.candidate.forward
    inputs = [[torch.randn(num_tokens, i, device=device).to(dtype) for _, i in layers.shapes] for _ in layers.packed]

    def make_pass(copy: int) -> Callable[[], None]:
        pairs = list(zip(layers.packed[copy], inputs[copy], strict=True))

        def run_pass() -> None:
            for packed, x in pairs:
                forward(x, packed)

        return run_pass

    passes = [make_pass(copy) for copy in range(len(layers.packed))]
    return time_passes(layers.candidate.name, passes, device, warmup, iterations, use_cuda_graph, progress)


class DenseBaseline(Candidate):
    """Unquantized F.linear on dense weights of the same shapes: fp16 cuBLAS on CUDA. Not a kernel candidate."""

    name = FP16_BASELINE
    family = "baseline"
    layout = "dense"

    def prepare(self, weight: QuantizedWeight, device: torch.device) -> torch.Tensor:
        return dequantize(weight, compute_dtype(device)).to(device)

    def forward(self, x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        return F.linear(x, packed)


def time_dense_baseline(
    shapes: Sequence[tuple[int, int]],
    group_size: int,
    device: torch.device,
    num_tokens: int,
    warmup: int,
    iterations: int,
) -> KernelTiming:
    """The fp16 cuBLAS baseline for the same layer shapes, timed exactly as the candidates are."""
    copies = rotation_copies([(o * 4, i) for o, i in shapes], device)  # fp16 is 4x the int4 bytes
    weights = random_layer_weights(shapes, group_size, device, copies)
    return time_candidate(prepare_layers(DenseBaseline(), weights, device), device, num_tokens, warmup, iterations)


def measure_copy_bandwidth_gbps(device: torch.device, num_bytes: int | None = None, iterations: int = 20) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), for rooflines."""
    # 256 MiB: 4x an H100/H200 L2, and on H200 it reads the ~4.2 TB/s that larger copies (oddly ~2.7) miss.
    num_bytes = num_bytes or (1 << 28 if device.type == "cuda" else 1 << 27)
    source = torch.ones(num_bytes // 16, 4, dtype=torch.float32, device=device)  # 16-byte rows: widest loads
    target = torch.empty_like(source)

    def copy() -> None:
        target.copy_(source)

    timing = time_passes("copy", [copy], device, warmup=2, iterations=iterations)
    return 2 * source.nbytes / (timing.median_ms * 1e-3) / 1e9
