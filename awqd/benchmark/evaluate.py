"""`awqd eval`: the QUALITY measurement offline, on a checkpoint before it is served.

Each kernel gets its own load of the checkpoint (a fused model whose only layout is that kernel's), so one kernel
that cannot pack a layer fails alone, and memory holds one copy at a time. The reference runs first; every other
candidate the capability table allows on the device follows, or the ones named.
"""

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from awqd.benchmark.budget import Budget
from awqd.benchmark.quality import (
    QualityPlan,
    compared,
    decode_text,
    measure_quality,
    tokenize,
    unscored,
    window_size,
)
from awqd.benchmark.report import Progress, QualityResult
from awqd.engine.model import DecoderModel
from awqd.errors import InvalidArgument
from awqd.kernels import registry
from awqd.kernels.base import Candidate, Dispatch
from awqd.kernels.candidates.reference_torch import ReferenceTorch
from awqd.kernels.linear import KernelRouter
from awqd.kernels.selection import device_eligibility
from awqd.models.checkpoint import open_checkpoint
from awqd.models.loader import load_config, load_model, load_tokenizer
from awqd.node.devices import find_device


@dataclass(frozen=True)
class Evaluation:
    model_path: str
    device: str
    tokens: int
    window: int
    rows: tuple[QualityResult, ...]
    notes: tuple[str, ...]


def default_device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def eval_candidates(torch_device: str, names: Sequence[str]) -> list[Candidate]:
    """The reference, then the named candidates or families, or every one the device is eligible for."""
    eligible = [e.name for e in device_eligibility(find_device(torch_device)) if e.supported]
    chosen = []
    for name in names or eligible:
        if registry.is_family(name):
            resolved = registry.resolve_family(name, eligible)
            if resolved is None:
                raise InvalidArgument("--kernels", f"no candidate of family {name!r} is eligible on {torch_device}")
            name = resolved
        chosen.append(name)
    return [ReferenceTorch(), *(registry.build(name) for name in dict.fromkeys(chosen) if name != ReferenceTorch.name)]


def evaluate(
    model_path: Path,
    text: bytes,
    device: str = "",
    kernels: Sequence[str] = (),
    window: int = 0,
    on_progress: Callable[[Progress], None] = lambda progress: None,
) -> Evaluation:
    device = device or default_device()
    checkpoint = open_checkpoint(model_path)
    ids = tokenize(load_tokenizer(checkpoint.path), decode_text(text, "--text-file"), "--text-file")
    window = window_size(window, load_config(checkpoint).max_position_embeddings, "--window")
    rows: list[QualityResult] = []
    notes: list[str] = []
    budget = Budget(threading.Event(), lambda: None, cap_s=float("inf"))
    for candidate in eval_candidates(device, kernels):
        try:
            loaded = load_model(
                checkpoint.path, torch.device(device), KernelRouter(Dispatch.single(candidate)), fuse=True
            )
        except Exception as error:  # e.g. a layout this kernel cannot pack for these shapes
            reason = f"load failed: {type(error).__name__}: {error}"
            rows.append(unscored(candidate.name, candidate.family, reason, 0.0))
            notes.append(f"{candidate.name}: not scored: {reason}")
            continue
        plan = QualityPlan(DecoderModel(loaded), (candidate,), tuple(ids), window)
        run = measure_quality(plan, budget)
        try:
            while True:
                on_progress(next(run))
        except StopIteration as finished:
            rows.extend(finished.value.rows)
            notes.extend(finished.value.notes)
        del loaded, plan
    return Evaluation(str(model_path), device, len(ids), window, tuple(compared(rows)), tuple(notes))


def table(evaluation: Evaluation) -> str:
    lines = [
        f"{evaluation.model_path} on {evaluation.device}: {evaluation.tokens} tokens, windows of {evaluation.window}",
        f"{'kernel':<28} {'family':<16} {'perplexity':>12} {'tokens':>8} {'vs reference':>13} {'ok':>4} {'s':>7}",
    ]
    for row in evaluation.rows:
        if row.error:
            lines.append(f"{row.kernel:<28} {row.family:<16} not scored: {row.error}")
            continue
        ok = "yes" if row.within_bound else "NO"
        lines.append(
            f"{row.kernel:<28} {row.family:<16} {row.perplexity:>12.4f} {row.tokens_scored:>8} "
            f"{row.delta_vs_reference_percent:>+12.3f}% {ok:>4} {row.seconds:>7.1f}"
        )
    return "\n".join(lines)
