"""QUALITY: a model's perplexity on a text with each kernel pinned, against the pure-torch reference kernel.

It answers an operator's question: does this kernel, on this GPU, change my model's output? The text is tokenized
once and cut into non-overlapping windows of `window` tokens; each window is one teacher-forced forward pass
(DecoderModel.score: prefill only, no sampling, no KV cache) whose first token is context only. Perplexity is
exp(mean negative log-likelihood) over every predicted token, and each kernel's is compared with the reference's.

A kernel is pinned by the function that runs each quantized linear, not through the model's shared router, so
scoring reads only weights: it can run beside the engine serving the same model without changing what the engine
computes (it only shares the device's time). On a GPU it runs on a stream of its own, so it never waits for the
engine's stream nor breaks a CUDA graph the engine is capturing.

The reference reads the canonical QuantizedWeight. A model that does not hold that layout (on a GPU it usually does
not) has it unpacked per call from its AutoAWQ GEMM or GEMV layout, which costs time but no memory beyond the call.

The daemon's QUALITY mode (awqd.benchmark.runner) and `awqd eval` (offline, a checkpoint before it is served) both
run `measure_quality`.
"""

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from awqd.benchmark.budget import Budget
from awqd.benchmark.report import Progress, QualityResult
from awqd.engine.model import DecoderModel
from awqd.errors import FailedPrecondition, InvalidArgument
from awqd.kernels.base import Candidate
from awqd.kernels.candidates.layouts import PackedLinear
from awqd.kernels.candidates.reference_torch import ReferenceTorch
from awqd.kernels.linear import AwqLinear
from awqd.quant.packing import unpack
from awqd.quant.tensors import QuantizedWeight

MAX_TEXT_BYTES = 1 << 20
MAX_TOKENS = 32768
DEFAULT_WINDOW = 1024
BOUND_PERCENT = 0.5  # a kernel whose perplexity differs more from the reference's changes the model's output
CANONICAL = ReferenceTorch.layout
UNPACKABLE_LAYOUTS = {"gemm": "GEMM", "gemv": "GEMV"}  # layouts that are AutoAWQ packings, back to canonical


def decode_text(text: bytes, field_name: str = "text") -> str:
    """The text to score, checked: non-empty, at most MAX_TEXT_BYTES, UTF-8 (InvalidArgument naming the field)."""
    if not text.strip():
        raise InvalidArgument(field_name, "is empty: QUALITY scores a model on a text")
    if len(text) > MAX_TEXT_BYTES:
        raise InvalidArgument(field_name, f"{len(text)} bytes exceed the cap of {MAX_TEXT_BYTES} bytes (1 MiB)")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidArgument(field_name, f"is not UTF-8: {error}") from None


def tokenize(tokenizer, text: str, field_name: str = "text") -> list[int]:
    ids = tokenizer(text)["input_ids"]
    if len(ids) < 2:
        raise InvalidArgument(field_name, f"{len(ids)} token(s): perplexity needs at least 2")
    if len(ids) > MAX_TOKENS:
        raise InvalidArgument(field_name, f"{len(ids)} tokens exceed the cap of {MAX_TOKENS}")
    return ids


def window_size(requested: int, context_length: int, field_name: str = "window_tokens") -> int:
    """The tokens per window: `requested`, or min(DEFAULT_WINDOW, context) for 0."""
    if requested == 0:
        return min(DEFAULT_WINDOW, context_length)
    if not 2 <= requested <= context_length:
        raise InvalidArgument(field_name, f"{requested} is outside 2..{context_length} (the model's context)")
    return requested


def spans(num_tokens: int, window: int) -> list[tuple[int, int]]:
    """Non-overlapping [start, end) windows, each at least 2 tokens long."""
    return [(start, min(start + window, num_tokens)) for start in range(0, num_tokens - 1, window)]


def canonical_weight(linear: AwqLinear) -> QuantizedWeight:
    held = linear.layouts.get(CANONICAL)
    if held is not None:
        return held
    for layout, version in UNPACKABLE_LAYOUTS.items():
        packed: PackedLinear | None = linear.layouts.get(layout)
        if packed is not None:
            tensors = {"qweight": packed.qweight, "qzeros": packed.qzeros, "scales": packed.scales}
            if packed.bias is not None:
                tensors["bias"] = packed.bias
            return unpack(tensors, version, packed.group_size, packed.in_features, packed.out_features)
    raise FailedPrecondition(
        f"{ReferenceTorch.name} needs the canonical weights, and the model holds only the layouts "
        f"{sorted(linear.layouts)}, none of which awqd unpacks (reload it without --single-layout)"
    )


@dataclass(frozen=True)
class Pinned:
    """Runs every quantized linear with one candidate, from the layout the layer holds for it."""

    candidate: Candidate

    def __call__(self, linear: AwqLinear, x: torch.Tensor) -> torch.Tensor:
        packed = linear.layouts.get(self.candidate.layout)
        if packed is None and self.candidate.layout == CANONICAL:
            packed = canonical_weight(linear)
        if packed is None:
            raise FailedPrecondition(
                f"kernel {self.candidate.name} needs layout {self.candidate.layout!r}; the model holds "
                f"{sorted(linear.layouts)}"
            )
        return self.candidate.forward(x, packed)


@dataclass(frozen=True)
class QualityPlan:
    decoder: DecoderModel
    candidates: tuple[Candidate, ...]  # the reference first
    token_ids: tuple[int, ...]
    window: int
    unavailable: tuple[tuple[str, str, str], ...] = ()  # (name, family, why) of kernels that cannot run here


@dataclass
class QualityResults:
    rows: list[QualityResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def side_stream(device: torch.device) -> Callable[[], AbstractContextManager]:
    """Enters a CUDA stream of the scoring's own (nothing on the CPU). Work on the legacy default stream would wait
    for every other stream on the device, and break the CUDA graphs the engine may be capturing beside it."""
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    return lambda: torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def negative_log_likelihood(decoder: DecoderModel, ids: torch.Tensor, pinned: Pinned) -> float:
    """The summed negative log-likelihood of ids[1:] given the tokens before each, in one window."""
    logits = decoder.score(ids, pinned).float()
    return F.cross_entropy(logits[:-1], ids[1:], reduction="sum").item()


def measure_quality(plan: QualityPlan, budget: Budget) -> Generator[Progress, None, QualityResults]:
    """Yields progress after each window; returns one row per kernel (the reference first), fewer if stopped."""
    stream = side_stream(plan.decoder.device)
    with stream():
        ids = torch.tensor(plan.token_ids).to(plan.decoder.device)
    windows = spans(len(plan.token_ids), plan.window)
    total = len(plan.candidates) * len(windows)
    results = QualityResults()
    done = 0
    for candidate in plan.candidates:
        started = time.perf_counter()
        nll, scored = 0.0, 0
        try:
            for index, (start, end) in enumerate(windows):
                if budget.exhausted():
                    results.rows = compared(results.rows)
                    return results
                with stream(), torch.inference_mode():  # entered per window: a generator may resume in another thread
                    nll += negative_log_likelihood(plan.decoder, ids[start:end], Pinned(candidate))
                scored += end - start - 1
                done += 1
                yield Progress("quality", done, total, f"{candidate.name}: window {index + 1}/{len(windows)}")
        except Exception as error:  # a kernel that fails here is reported, and the others still run
            done += len(windows) - index
            reason = f"{type(error).__name__}: {error}"
            results.rows.append(unscored(candidate.name, candidate.family, reason, time.perf_counter() - started))
            results.notes.append(f"{candidate.name}: not scored: {reason}")
            continue
        seconds = time.perf_counter() - started
        row = QualityResult(
            candidate.name, candidate.family, math.exp(nll / scored), scored, 0.0, False, BOUND_PERCENT, seconds
        )
        results.rows.append(row)
    for name, family, why in plan.unavailable:
        results.rows.append(unscored(name, family, why, 0.0))
        results.notes.append(f"{name}: not scored: {why}")
    results.rows = compared(results.rows)
    return results


def compared(rows: Sequence[QualityResult]) -> list[QualityResult]:
    """The rows with their difference from the reference row's perplexity, and whether it is within the bound;
    without a scored reference, no row is."""
    reference = next((row for row in rows if row.kernel == ReferenceTorch.name and not row.error), None)
    out = []
    for row in rows:
        delta = 100.0 * (row.perplexity / reference.perplexity - 1.0) if reference and not row.error else 0.0
        within = reference is not None and not row.error and abs(delta) <= BOUND_PERCENT
        out.append(dataclasses.replace(row, delta_vs_reference_percent=delta, within_bound=within))
    return out


def unscored(kernel: str, family: str, reason: str, seconds: float) -> QualityResult:
    return QualityResult(kernel, family, 0.0, 0, 0.0, False, BOUND_PERCENT, seconds, reason)
