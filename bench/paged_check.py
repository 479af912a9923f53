"""The paged KV cache and large decode batches on a GPU, in one process: `python3 bench/paged_check.py --out DIR`.

On a Llama-2-7B-shaped synthetic AWQ checkpoint (awqd synth), P=128 prompt tokens and N=128 new tokens, greedy
(EOS ignored, so every stream decodes exactly N tokens):

1. the KV cache the engine planned: blocks, tokens, bytes, and the decode batch buckets;
2. concurrency: 64, 128 and 256 streams submitted together, each level warmed up first (its graphs captured):
   aggregate tokens/s, TTFT p50/p99, inter-token p50/p99, and preemptions (there should be none: 256 x 256
   tokens fit the cache many times over); each level twice, without and with overlapped decode (--overlap-decode:
   the host streams a step's tokens while the next step runs), on the same engine;
3. CUDA-graph decode against eager decode: the same prompts at batch 1, 16 and 32, 64 new tokens, token for
   token, three ways (and, on the graph engine, overlapped decode against sequential decode): with the selected
   kernels, eager against eager with the selected kernels (a kernel whose split-K sums with atomics, such as
   AutoAWQ's Triton GEMM, differs from run to run: a graph-vs-eager mismatch that eager-vs-eager shows too is the
   kernel's, not the graph's), and with one deterministic kernel pinned at every bucket (the batch-invariant awqd
   GEMM: fixed tile, no atomics; a mismatch there is a graph or paging bug). The kernels each comparison's steps
   used are listed. Jobs are queued together before the scheduler admits any, so both engines group the prefills
   and decode batches the same way;
4. preemption: 32 streams on a KV cache cut to half what they need, so the newest are preempted, once with
   --preemption swap (their blocks wait in host memory and come back bit for bit; no prefill) and once with
   --preemption recompute (prefilled again over prompt and generated tokens), each token for token against the same
   32 streams on a full cache (run twice: a reference that differs from itself would make the check meaningless),
   with the preemptions by mode and the prefills each run took. Every prompt is prefilled alone, one per step
   boundary (--prefill-tokens-per-step = the prompt length), so prefill row counts are the same in every run and only
   preemption (and the decode batch sizes it changes) separates them. It runs twice: with the selected kernels, and
   with the fixed deterministic kernel pinned and --batch-invariant (lm_head too), where the decode batch size
   cannot change a row's bits: a swap divergence there is a swap bug, one only with the selected kernels is the
   per-bucket kernels'.

Every step has a time limit (bench/engine_check.py's watchdog): a step that overruns or fails is recorded, and
paged-check.json and paged-check.md are written to --out whatever happens. One engine lives at a time: each
phase's engine is closed and unreferenced, and its memory given back, before the next is built.

A dry run on the CPU: `python3 bench/paged_check.py --out /tmp/pc --device cpu --arch tiny --streams 4,8
--tokens 40 --equality-batches 1,4` (a small model, small levels: it checks the script, not the speed).
`--phases preemption` runs only phase 4 (after the model and kernel selection).
"""

import argparse
import contextlib
import dataclasses
import gc
import statistics
import sys
import tempfile
import time
import weakref
from itertools import pairwise
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_check
from engine_check import Results, compare, kv_cache_summary, run_jobs, step, synchronize

from awqd.config import EngineSettings
from awqd.engine.build import build_engine
from awqd.engine.kv_cache import BLOCK_TOKENS, blocks_for
from awqd.engine.model import ModelShape
from awqd.engine.request import GenerateParams
from awqd.engine.sequence import Job
from awqd.kernels import registry
from awqd.kernels.candidates.awqd_triton_gemm import AwqdTritonGemm, AwqdTritonGemmBatchInvariant
from awqd.kernels.linear import KernelRouter
from awqd.kernels.selection import select_kernels
from awqd.kernels.shapes import engine_layer_shapes
from awqd.models.checkpoint import open_checkpoint
from awqd.models.loader import load_model
from awqd.models.synth import synthesize
from awqd.node.devices import discover

PREEMPTION_STREAMS = 32
BUILT: list[weakref.ref] = []  # every engine's KV cache, to check that a finished engine left nothing behind


def greedy(tokens: int, pinned=None) -> GenerateParams:
    return GenerateParams("synth", "", (), tokens, 0.0, None, 0, 0, (), pinned.name if pinned else "auto")


def prompts(vocab_size: int, count: int, prompt_tokens: int, first_seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(first_seed)
    return torch.randint(100, vocab_size, (count, prompt_tokens), generator=generator).tolist()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def concurrency(scheduler, ids: list[list[int]], tokens: int) -> dict:
    run_jobs(scheduler, ids, greedy(16))  # warm-up: compiles kernels, captures this level's graphs
    preempted_before = scheduler.preemptions
    synchronize(scheduler.runner.model.device)
    started = time.perf_counter()
    outcomes = run_jobs(scheduler, ids, greedy(tokens))
    wall = time.perf_counter() - started
    gaps = [later - earlier for _, f in outcomes for earlier, later in pairwise(f.token_times_ms)]
    ttfts = [f.time_to_first_token_ms for _, f in outcomes]
    return {
        "streams": len(ids),
        "tokens_per_s": sum(f.completion_tokens for _, f in outcomes) / wall,
        "ttft_p50_ms": statistics.median(ttfts),
        "ttft_p99_ms": percentile(ttfts, 0.99),
        "inter_token_p50_ms": statistics.median(gaps),
        "inter_token_p99_ms": percentile(gaps, 0.99),
        "preemptions": scheduler.preemptions - preempted_before,
        "all_complete": all(f.completion_tokens == tokens for _, f in outcomes),
        "wall_s": wall,
    }


def engine(loaded, router, settings: EngineSettings):
    scheduler = build_engine("synth", loaded, router, settings)
    scheduler.eos_ids = frozenset()  # random weights: decode exactly N tokens every run
    BUILT.append(weakref.ref(scheduler.runner.cache))
    return scheduler


@contextlib.contextmanager
def running(loaded, router, settings: EngineSettings):
    """An engine for one phase: its thread is stopped however the phase ends. The caller keeps no reference past
    the phase's function, so free_engines() can give its KV cache and graphs back before the next one is built."""
    scheduler = engine(loaded, router, settings)
    try:
        yield scheduler
    finally:
        scheduler.close()


def free_engines(device: torch.device) -> None:
    """Gives every finished engine's memory back; fails if one is still referenced (it would hold its KV cache)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    alive = sum(ref() is not None for ref in BUILT)
    if alive:
        raise RuntimeError(f"{alive} finished engine(s) still referenced: their KV cache is not freed")


def together(scheduler, ids: list[list[int]], tokens: int, pinned=None) -> list[tuple[list, object]]:
    """run_jobs, with every job queued before the scheduler admits any, so the prefill groups and decode batches
    are the same in every run (a job arriving mid-admission would change them, and with them the kernels' row
    counts). The scheduler's condition is reentrant: submit takes it again."""
    with scheduler._condition:
        jobs = [Job(greedy(tokens, pinned), ids_, pinned=pinned) for ids_ in ids]
        for job in jobs:
            scheduler.submit(job)
    outcomes = []
    for job in jobs:
        events = list(job.results())
        outcomes.append(([t for event in events[:-1] for t in event.token_ids], events[-1]))
    return outcomes


def token_lists(outcomes) -> list[list[int]]:
    return [tokens for tokens, _ in outcomes]


def kernels_used(outcomes) -> list[str]:
    """Every (phase, bucket, kernel) the runs' steps used."""
    return sorted({f"{use.phase}@{use.batch_tokens}:{use.kernel}" for _, f in outcomes for use in f.kernels})


def cut_settings(settings: EngineSettings, device: torch.device, tokens: int, bytes_per_token: int) -> EngineSettings:
    """Settings whose KV cache holds about `tokens` tokens on this device."""
    if device.type != "cuda":
        return dataclasses.replace(settings, kv_cache_tokens=tokens)
    free, _ = torch.cuda.mem_get_info(device)
    return dataclasses.replace(settings, kv_cache_fraction=tokens * bytes_per_token / free)


def deterministic_kernel(device: torch.device, decisions):
    """The kernel the fixed-kernel graph-vs-eager comparison pins at every bucket: on a GPU the batch-invariant
    awqd GEMM (one fixed tile and split-K 2 at every row count, its split-K summed by a second pass, no atomics),
    on the CPU the smallest bucket's kernel (torch: no atomics either)."""
    if device.type == "cuda":
        if AwqdTritonGemm.name not in decisions.usable_names():
            return None
        return AwqdTritonGemmBatchInvariant()
    return registry.build(decisions.decisions[0].kernel)


@dataclasses.dataclass
class Equality:
    """The prompts and tokens of the graph-vs-eager comparisons: per batch size, auto kernels and a fixed kernel."""

    ids: dict[int, list[list[int]]]
    tokens: int  # new tokens per stream
    fixed: object  # the pinned deterministic candidate, or None where there is none
    graph: dict[int, list[list[int]]] = dataclasses.field(default_factory=dict)
    graph_fixed: dict[int, list[list[int]]] = dataclasses.field(default_factory=dict)


def graph_phase(results, loaded, router, settings, levels, args, equality: Equality) -> None:
    """The CUDA-graph engine: concurrency levels and the graph side of the comparisons."""
    # The outer step records an engine that cannot be built; the inner steps time and record each measurement.
    with step(results, "graph_engine", 2400), running(loaded, router, settings) as scheduler:
        results.data["kv_cache"] = kv_cache_summary(scheduler)
        results.data["batch_buckets"] = list(scheduler.runner.batch_buckets)
        results.write()
        results.data["concurrency"] = []
        for streams in levels:
            for overlap in (False, True):  # the same engine and graphs, without and with overlapped decode
                name = f"concurrency_{streams}" + ("" if overlap else "_no_overlap")
                with step(results, name, 300), overlapping(scheduler, overlap):
                    ids = prompts(loaded.config.vocab_size, streams, args.prompt_tokens)
                    results.data["concurrency"].append({**concurrency(scheduler, ids, args.tokens), "overlap": overlap})
        with step(results, "graph_decode", 300):
            used = results.data.setdefault("kernels_used", {})
            for batch, ids in equality.ids.items():
                outcomes = together(scheduler, ids, equality.tokens)
                equality.graph[batch], used[f"graph_auto@{batch}"] = token_lists(outcomes), kernels_used(outcomes)
                with overlapping(scheduler, False):
                    sequential = token_lists(together(scheduler, ids, equality.tokens))
                overlap_checks = results.data.setdefault("overlap_vs_no_overlap", {})
                overlap_checks[batch] = compare(equality.graph[batch], sequential)
                if equality.fixed is not None:
                    outcomes = together(scheduler, ids, equality.tokens, equality.fixed)
                    equality.graph_fixed[batch] = token_lists(outcomes)
                    used[f"graph_fixed@{batch}"] = kernels_used(outcomes)
            runner = scheduler.runner
            results.data["captured_graphs"] = sorted(f"{pin or 'auto'}@{bucket}" for pin, bucket in runner.graphs)
            results.data["graph_capture_failures"] = len(runner.eager_keys)


@contextlib.contextmanager
def overlapping(scheduler, on: bool):
    """The engine with overlapped decode on or off (read at each step), as before afterwards."""
    before, scheduler.overlap_decode = scheduler.overlap_decode, on
    try:
        yield
    finally:
        scheduler.overlap_decode = before


def eager_phase(results, loaded, router, settings, equality: Equality) -> None:
    """The eager engine: each batch twice with the auto kernels (eager vs eager: how much the kernels alone vary
    from run to run) and once with the fixed kernel; each compared with the graph engine's tokens."""
    eager_settings = dataclasses.replace(settings, cuda_graphs=False)
    with step(results, "eager_decode", 600), running(loaded, router, eager_settings) as eager:
        used = results.data.setdefault("kernels_used", {})
        checks = results.data["cuda_graph_vs_eager"] = {}
        for batch, ids in equality.ids.items():
            first, second = (together(eager, ids, equality.tokens) for _ in range(2))
            used[f"eager_auto@{batch}"] = kernels_used(first)
            checks[batch] = {
                "graph_vs_eager": compare(equality.graph[batch], token_lists(first)),
                "eager_vs_eager": compare(token_lists(first), token_lists(second)),
            }
            if batch in equality.graph_fixed:
                fixed = together(eager, ids, equality.tokens, equality.fixed)
                used[f"eager_fixed@{batch}"] = kernels_used(fixed)
                checks[batch]["graph_vs_eager_fixed_kernel"] = compare(equality.graph_fixed[batch], token_lists(fixed))


def preemption_run(loaded, router, settings: EngineSettings, ids, tokens: int, pinned, runs: int = 1) -> dict:
    """One engine, the streams submitted together `runs` times: each run's tokens, and the preemptions by mode and
    the prefills they all took. Returns with the engine closed and unreferenced."""
    with running(loaded, router, settings) as scheduler:
        outcomes = [together(scheduler, ids, tokens, pinned) for _ in range(runs)]
        finished = [f for outcome in outcomes for _, f in outcome]
        return {
            "tokens": [token_lists(outcome) for outcome in outcomes],
            "kv_cache": kv_cache_summary(scheduler),
            "swap_space_blocks": scheduler.swap.tables.blocks,
            "swap_space_bytes": scheduler.swap.bytes,
            "preemptions": {mode: scheduler.preempted_by[mode] for mode in ("swap", "recompute")},
            "prefills": sum(use.steps for f in finished for use in f.kernels if use.phase == "prefill"),
            "all_complete": all(f.completion_tokens == tokens for f in finished),
        }


def preemption_phase(results, loaded, router, settings, args, bytes_per_token, ids, fixed) -> None:
    """Per kernel setup: the unpreempted reference on a full cache, then swap and recompute on a cache cut to half.
    One engine at a time, each freed inside its step; the cut cache is sized from the memory free once the reference
    engine is gone."""
    device = loaded.device
    one_by_one = dataclasses.replace(settings, prefill_tokens_per_step=args.prompt_tokens)
    needed = PREEMPTION_STREAMS * blocks_for(args.prompt_tokens + args.tokens) * BLOCK_TOKENS
    data = results.data["preemption"] = {"streams": PREEMPTION_STREAMS, "tokens_needed": needed, "setups": {}}
    setups = {"selected_kernels": ("the selected kernels", one_by_one, None)}
    if fixed is not None:
        invariant = dataclasses.replace(one_by_one, batch_invariant=True)
        setups["fixed_kernel"] = (f"{fixed.name} pinned, --batch-invariant", invariant, fixed)
    for key, (kernels, base, pinned) in setups.items():
        entry = data["setups"][key] = {"kernels": kernels}
        with step(results, f"preemption_reference_{key}", 600):
            reference = preemption_run(loaded, router, base, ids, args.tokens, pinned, runs=2)
            expected = reference.pop("tokens")
            reference["vs_itself"] = compare(expected[0], expected[1])
            entry["reference"] = reference
            free_engines(device)
        if "reference" not in entry:
            continue
        for mode in ("swap", "recompute"):
            with step(results, f"preemption_{mode}_{key}", 600):
                cut = cut_settings(dataclasses.replace(base, preemption=mode), device, needed // 2, bytes_per_token)
                run = preemption_run(loaded, router, cut, ids, args.tokens, pinned)
                run["vs_unpreempted"] = compare(expected[0], run.pop("tokens")[0])
                entry[mode] = run
                free_engines(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    engine_check.add_engine_arguments(parser)
    parser.add_argument("--kv-cache-fraction", type=float, default=0.9)
    parser.add_argument("--streams", default="64,128,256")
    parser.add_argument("--equality-batches", default="1,16,32")
    parser.add_argument("--equality-tokens", type=int, default=64, help="new tokens per stream in the comparisons")
    parser.add_argument("--prompt-tokens", type=int, default=engine_check.PROMPT_TOKENS)
    parser.add_argument("--prefill-tokens-per-step", type=int, default=EngineSettings.prefill_tokens_per_step)
    parser.add_argument("--tokens", type=int, default=engine_check.NEW_TOKENS, help="new tokens per stream")
    parser.add_argument(
        "--phases", default="graph,eager,preemption", help="the phases to run: graph (1-3), eager (3), preemption (4)"
    )
    args = parser.parse_args()
    levels = [int(n) for n in args.streams.split(",")]
    batches = [int(n) for n in args.equality_batches.split(",")]
    results = Results(args.out, "paged-check", markdown)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        results.data["errors"].append("no CUDA device: this script measures a GPU (or pass --device cpu)")
        results.write()
        return 2
    results.data["device"] = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    results.data["setup"] = {
        "arch": args.arch, "prompt_tokens": args.prompt_tokens, "new_tokens": args.tokens,
        "equality_tokens": args.equality_tokens, "prefill_tokens_per_step": args.prefill_tokens_per_step,
        "torch": torch.__version__,
    }  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="awqd-paged-check-"))
    checkpoint = work / args.arch

    with step(results, "synthesize_and_select", args.selection_budget + 300):
        synthesize(args.arch, checkpoint, version="GEMM")
        info = next(d for d in discover().devices if d.torch_device == str(device))
        config = open_checkpoint(checkpoint).config
        shapes, cache_dir = list(engine_layer_shapes(config).values()), args.cache_dir or work / "cache"
        decisions = select_kernels(info, shapes, 128, cache_dir, budget_s=args.selection_budget)
        results.data["decisions"] = {d.batch_tokens: d.kernel for d in decisions.decisions}
        router = KernelRouter(decisions.dispatch())
        fixed = deterministic_kernel(device, decisions)
        results.data["fixed_kernel"] = fixed.name if fixed is not None else None
        held = [registry.build(name) for name in decisions.usable_names()] + ([fixed] if fixed else [])
        loaded = load_model(checkpoint, device, router, extra_candidates=held, fuse=True)
    if results.data["errors"]:
        return 1
    vocab_size = loaded.config.vocab_size
    most = max([*levels, *batches, PREEMPTION_STREAMS])
    settings = EngineSettings(
        kv_cache_fraction=args.kv_cache_fraction,
        max_batch_size=most,
        max_queued_requests=most,
        prefill_tokens_per_step=args.prefill_tokens_per_step,
        prefix_caching=False,  # its prompts repeat: a prefix-cache hit would skip the prefills it compares
    )
    equality_ids = {batch: prompts(vocab_size, batch, args.prompt_tokens, first_seed=1000 + batch) for batch in batches}
    equality = Equality(equality_ids, args.equality_tokens, fixed)
    preemption_ids = prompts(vocab_size, PREEMPTION_STREAMS, args.prompt_tokens, first_seed=2000)
    bytes_per_token = ModelShape.from_config(loaded.config).kv_bytes_per_token(loaded.model.dtype)

    # One engine at a time: each phase's engine is closed and unreferenced when its function returns.
    phases = set(args.phases.split(","))
    if "graph" in phases:
        graph_phase(results, loaded, router, settings, levels, args, equality)
    with step(results, "free_graph_engine", 120):
        free_engines(device)
    if "eager" in phases and equality.graph:
        eager_phase(results, loaded, router, settings, equality)
    with step(results, "free_eager_engine", 120):
        free_engines(device)
    if "preemption" in phases:
        preemption_phase(results, loaded, router, settings, args, bytes_per_token, preemption_ids, fixed)

    results.write()
    return 0 if not results.data["errors"] else 1


def markdown(data: dict) -> str:
    setup = data.get("setup", {})
    lines = [
        f"# Paged KV cache and large decode batches on {data.get('device', '?')}",
        "",
        f"{setup.get('arch', '?')}-shaped synthetic AWQ model, P={setup.get('prompt_tokens')}, "
        f"N={setup.get('new_tokens')}, greedy, in one process, up to {setup.get('prefill_tokens_per_step')} prompt "
        f"tokens prefilled per step boundary. torch {setup.get('torch', '?')}.",
        "",
        f"- KV cache: {data.get('kv_cache', '?')}",
        f"- Decode batch buckets: {data.get('batch_buckets', '?')}; graphs captured: {data.get('captured_graphs', '?')}"
        f" (capture failures: {data.get('graph_capture_failures', '?')})",
    ]
    if data.get("concurrency"):
        lines += [
            "",
            "| streams | overlap | aggregate tokens/s | TTFT p50 ms | TTFT p99 ms | inter-token p50 ms | "
            "inter-token p99 ms | preemptions | all complete |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in data["concurrency"]:
            lines.append(
                f"| {row['streams']} | {'on' if row.get('overlap', True) else 'off'} | {row['tokens_per_s']:.0f} "
                f"| {row['ttft_p50_ms']:.1f} | {row['ttft_p99_ms']:.1f} "
                f"| {row['inter_token_p50_ms']:.2f} | {row['inter_token_p99_ms']:.2f} | {row['preemptions']} "
                f"| {row['all_complete']} |"
            )
    lines += ["", f"- Kernel decisions (bucket: kernel): {data.get('decisions', '?')}"]
    lines.append(f"- Fixed kernel of the deterministic comparison: {data.get('fixed_kernel')}")
    for comparison, used in data.get("kernels_used", {}).items():
        lines.append(f"- Kernels used, {comparison}: {', '.join(used)}")
    for batch, checks in data.get("cuda_graph_vs_eager", {}).items():
        for name, check in checks.items():
            lines.append(
                f"- {name.replace('_', ' ')}, batch {batch}: {check['identical']} of {check['sequences']} identical "
                f"({check['distinct_tokens']} distinct token ids); first divergences: {check['first_divergence']}"
            )
    for batch, check in data.get("overlap_vs_no_overlap", {}).items():
        lines.append(
            f"- overlapped vs sequential decode (graphs, selected kernels), batch {batch}: {_identical(check)}"
        )
    pre = data.get("preemption", {})
    for entry in pre.get("setups", {}).values():
        if "reference" not in entry:
            continue
        reference = entry["reference"]
        lines.append(
            f"- Preemption with {entry['kernels']}: {pre['streams']} streams needing {pre['tokens_needed']} KV-cache "
            f"tokens, each prompt prefilled alone. Unpreempted reference on "
            f"{reference['kv_cache']['capacity_tokens']} tokens: {reference['preemptions']} preemptions, "
            f"{_identical(reference['vs_itself'])} against a second run of itself"
        )
        for mode in ("swap", "recompute"):
            if mode in entry:
                run = entry[mode]
                lines.append(
                    f"  - `--preemption {mode}` on {run['kv_cache']['capacity_tokens']} tokens (swap space "
                    f"{run['swap_space_blocks']} blocks, {run['swap_space_bytes'] / 2**30:.2f} GiB): preemptions "
                    f"{run['preemptions']}, {run['prefills']} prefills, all complete: {run['all_complete']}; "
                    f"{_identical(run['vs_unpreempted'])} to the unpreempted run"
                )
    lines.append(f"- Step seconds: {data.get('steps', {})}")
    for error in data.get("errors", []):
        lines.append(f"- **Error:** {error}")
    return "\n".join(lines) + "\n"


def _identical(check: dict) -> str:
    return (
        f"{check['identical']} of {check['sequences']} identical ({check['distinct_tokens']} distinct token ids; "
        f"first divergences: {check['first_divergence']})"
    )


if __name__ == "__main__":
    sys.exit(main())
