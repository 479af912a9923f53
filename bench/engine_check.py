"""The decode engine on a GPU, end to end in one process: `python3 bench/engine_check.py --out DIR`.

On a Llama-2-7B-shaped synthetic AWQ checkpoint (awqd synth), P=128 prompt tokens and N=128 new tokens, greedy:

1. kernel selection for the device (the daemon's own code, with a short budget);
2. baseline: transformers' eager `generate` on the same checkpoint (unfused AwqLinear layers, DynamicCache),
   tokens/s and TTFT;
3. the engine (fused layers, paged KV cache, CUDA-graph decode): single-query tokens/s and TTFT for the
   model's AUTO dispatch and with the GEMM and GEMV families pinned;
4. concurrency: 1, 8 and 32 streams submitted together, aggregate tokens/s and inter-token p50/p99;
5. where the time goes: the GPU time of one captured decode step per batch bucket (CUDA events, no host), and a
   torch.profiler table of an eager decode step's kernels;
6. correctness: the engine's Triton layer kernels against torch on the GPU (tests/engine/test_engine_layers.py, bf16
   included); greedy batched (8 together) against each alone, with the per-bucket decisions and with
   --batch-invariant; CUDA-graph decode against eager decode. The batch-invariant engine's speed is measured too.

The synthetic model has random weights and could emit its EOS token at any step; every run here decodes exactly
N tokens (transformers: min_new_tokens; the engine: EOS ignored), so runs are comparable.

Every step has a time limit. A step that overruns, or a failure, is recorded and the script writes what it has
(engine-check.json and engine-check.md in --out, naming the device) before it exits; it never hangs.
"""

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "engine"))

from test_engine_layers import failures, run_cases

from awqd.config import EngineSettings
from awqd.engine.build import build_engine
from awqd.engine.kv_cache import blocks_for
from awqd.engine.request import GenerateParams
from awqd.engine.sequence import Finished, Job
from awqd.errors import FailedPrecondition
from awqd.kernels import registry
from awqd.kernels.base import Dispatch
from awqd.kernels.candidates.awqd_triton_gemm import AwqdTritonGemm, AwqdTritonGemmBatchInvariant
from awqd.kernels.linear import KernelRouter
from awqd.kernels.selection import DeviceDecisions, resolve_forced, select_kernels
from awqd.kernels.shapes import engine_layer_shapes
from awqd.models.checkpoint import open_checkpoint
from awqd.models.loader import LoadedModel, load_model
from awqd.models.synth import synthesize
from awqd.node.devices import discover

PROMPT_TOKENS = 128
NEW_TOKENS = 128
RUNS = 5
CONCURRENCY = (1, 8, 32)
EQUALITY_PROMPTS = 8
EQUALITY_TOKENS = 64
STEP_TIMING_BUCKETS = (1, 8, 32)
LONG_POSITION, LONG_POSITION_BUCKETS = 2048, (1, 8)  # decode steps timed again deep into the context
PREFILL_CHECK_LENGTHS = (37, 100, 128, 300)  # prompts alone: padded to 48, 128, 128 and 384 tokens
GRAPH_VS_EAGER_BATCHES = (1, 16, 32)
STEP_TIMING_REPLAYS = 50
PROFILE_ROWS = 25
TARGETS = {"single_query_tokens_per_s": 550.0, "ttft_ms": 12.0, "concurrent_32_tokens_per_s": 6000.0}  # issue 15


class Results:
    """A check's results so far, written as OUT/NAME.json and OUT/NAME.md (rendered by `render`) at every step."""

    def __init__(self, out: Path, name: str = "engine-check", render: Callable[[dict], str] | None = None):
        self.out = out
        self.name = name
        self.render = render or markdown
        self.data: dict = {"started_at": datetime.now(UTC).isoformat(), "steps": {}, "errors": []}
        self.lock = threading.Lock()

    def write(self) -> None:
        with self.lock:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / f"{self.name}.json").write_text(json.dumps(self.data, indent=2))
            (self.out / f"{self.name}.md").write_text(self.render(self.data))


@contextmanager
def step(results: Results, name: str, limit_s: float):
    """Runs a step under a watchdog: past its limit the results so far are written and the process exits."""

    def overrun() -> None:
        results.data["errors"].append(f"{name}: exceeded its {limit_s:.0f} s limit; stopped here")
        results.write()
        print(f"engine_check: {name} exceeded {limit_s:.0f} s", file=sys.stderr, flush=True)
        os._exit(3)

    watchdog = threading.Timer(limit_s, overrun)
    watchdog.daemon = True
    started = time.perf_counter()
    print(f"engine_check: {name} ...", file=sys.stderr, flush=True)
    watchdog.start()
    try:
        yield
        results.data["steps"][name] = round(time.perf_counter() - started, 2)
    except Exception as error:
        results.data["errors"].append(f"{name}: {type(error).__name__}: {error}")
        traceback.print_exc()
    finally:
        watchdog.cancel()
        results.write()


def device_summary(device: torch.device) -> dict:
    """What a check's results say of the device it ran on."""
    on_gpu = device.type == "cuda"
    return {
        "name": torch.cuda.get_device_name(device) if on_gpu else f"CPU ({platform.processor() or 'host'})",
        "capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if on_gpu else "",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def add_engine_arguments(parser: argparse.ArgumentParser, selection_budget_s: float = 150.0) -> None:
    """The options every in-process engine check shares: where results go, the synthetic architecture, the device,
    and the kernel selection's budget and decision cache."""
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", default="llama-2-7b")
    parser.add_argument("--device", default="cuda:0", help="cpu runs the same steps slowly (use --arch tiny)")
    parser.add_argument("--selection-budget", type=float, default=selection_budget_s)
    parser.add_argument("--cache-dir", type=Path, help="a decision cache to re-validate (a daemon's --cache-dir)")


def synthesized_decisions(
    results: Results, args: argparse.Namespace, device: torch.device, buckets: list[int] | None = None
) -> tuple[Path, DeviceDecisions] | None:
    """Synthesizes --arch into a temporary folder and selects its kernels on `device` (re-validating --cache-dir's
    decisions, when given), each as a step of `results`: the checkpoint and the decisions, or None if a step
    failed."""
    work = Path(tempfile.mkdtemp(prefix=f"awqd-{results.name}-"))
    checkpoint = work / args.arch
    with step(results, "synthesize", 240):
        synthesize(args.arch, checkpoint, version="GEMM")
    if "synthesize" not in results.data["steps"]:
        return None
    with step(results, "kernel_selection", args.selection_budget + 180):
        info = next(d for d in discover().devices if d.torch_device == str(device))
        shapes = list(engine_layer_shapes(open_checkpoint(checkpoint).config).values())
        cache_dir = args.cache_dir or work / "cache"
        decisions = select_kernels(info, shapes, 128, cache_dir, budget_s=args.selection_budget, buckets=buckets)
        results.data["decisions"] = {d.batch_tokens: d.kernel for d in decisions.decisions}
        results.data["selection_notes"] = decisions.notes
    if "kernel_selection" not in results.data["steps"]:
        return None
    return checkpoint, decisions


def prompt(vocab_size: int, seed: int, tokens: int = PROMPT_TOKENS) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab_size, (tokens,), generator=generator).tolist()


def greedy(max_new_tokens: int, kernel: str = "auto") -> GenerateParams:
    return GenerateParams("synth", "", (), max_new_tokens, 0.0, None, 0, 0, (), kernel)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hf_baseline(loaded, runs: int) -> dict:
    model = loaded.model
    ids = torch.tensor([prompt(loaded.config.vocab_size, 0)], device=loaded.device)
    options = {"attention_mask": torch.ones_like(ids), "do_sample": False, "pad_token_id": 0}

    def timed(new_tokens: int) -> float:
        synchronize(loaded.device)
        started = time.perf_counter()
        output = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **options)
        synchronize(loaded.device)
        assert output.shape[1] == PROMPT_TOKENS + new_tokens
        return time.perf_counter() - started

    with torch.inference_mode():
        timed(NEW_TOKENS)  # warm-up
        ttft = statistics.median(timed(1) for _ in range(runs)) * 1000
        total = statistics.median(timed(NEW_TOKENS) for _ in range(runs))
    return {"tokens_per_s": NEW_TOKENS / total, "ttft_ms": ttft, "total_ms": total * 1000, "runs": runs}


def run_jobs(scheduler, prompts: list[list[int]], request: GenerateParams, pinned=None) -> list[tuple[list, Finished]]:
    jobs = [Job(request, ids, pinned=pinned) for ids in prompts]
    for job in jobs:
        scheduler.submit(job)
    outcomes = []
    for job in jobs:
        events = list(job.results())
        outcomes.append(([t for event in events[:-1] for t in event.token_ids], events[-1]))
    return outcomes


def single_query(scheduler, vocab_size: int, pinned, runs: int) -> dict:
    request = greedy(NEW_TOKENS, pinned.name if pinned else "auto")
    ids = [prompt(vocab_size, 0)]
    run_jobs(scheduler, ids, request, pinned)  # warm-up: compiles kernels, captures the decode graphs
    run_jobs(scheduler, ids, request, pinned)
    finished = [run_jobs(scheduler, ids, request, pinned)[0][1] for _ in range(runs)]
    totals = [f.total_ms - f.queue_ms for f in finished]
    ttfts = [f.time_to_first_token_ms - f.queue_ms for f in finished]
    gaps = [later - earlier for f in finished for earlier, later in pairwise(f.token_times_ms)]
    return {
        "kernel": pinned.name if pinned else "auto",
        "kernels_used": sorted({f"{u.phase}@{u.batch_tokens}:{u.kernel}" for u in finished[-1].kernels}),
        "tokens_per_s": NEW_TOKENS / (statistics.median(totals) / 1000),
        "ttft_ms": statistics.median(ttfts),
        "ms_per_token_p50": statistics.median(gaps),
        "total_ms": statistics.median(totals),
        "runs": runs,
    }


def concurrency(scheduler, vocab_size: int, streams: int) -> dict:
    prompts = [prompt(vocab_size, seed) for seed in range(streams)]
    run_jobs(scheduler, prompts, greedy(16))  # warm-up: the graphs for this batch bucket
    started = time.perf_counter()
    outcomes = run_jobs(scheduler, prompts, greedy(NEW_TOKENS))
    wall = time.perf_counter() - started
    gaps = sorted(later - earlier for _, f in outcomes for earlier, later in pairwise(f.token_times_ms))
    tokens = sum(f.completion_tokens for _, f in outcomes)
    return {
        "streams": streams,
        "tokens_per_s": tokens / wall,
        "inter_token_p50_ms": statistics.median(gaps),
        "inter_token_p99_ms": gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))],
        "ttft_p50_ms": statistics.median(f.time_to_first_token_ms for _, f in outcomes),
        "wall_s": wall,
    }


def idle_tables(rows: int, tokens: int) -> list[list[int]]:
    """Block tables for steps run straight on an idle engine's runner: row i gets its own blocks, after row i-1's."""
    per_row = blocks_for(tokens)
    return [list(range(1 + row * per_row, 1 + (row + 1) * per_row)) for row in range(rows)]


def decode_step_gpu_ms(scheduler, position: int, buckets=STEP_TIMING_BUCKETS) -> dict:
    """GPU milliseconds of one captured decode step per bucket, every row at `position`: replays timed with CUDA
    events, no host work."""
    runner = scheduler.runner
    timings = {}
    if position >= runner.cache.plan.max_seq_len:
        return timings
    for bucket in buckets:
        if bucket > runner.max_rows:
            continue
        tokens, positions = [7] * bucket, [position] * bucket
        tables = idle_tables(bucket, position + 1)
        runner.decode(tokens, positions, tables)  # eager: compiles and captures
        runner.decode(tokens, positions, tables)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(STEP_TIMING_REPLAYS):
            runner.decode(tokens, positions, tables)
        end.record()
        end.synchronize()
        timings[bucket] = start.elapsed_time(end) / STEP_TIMING_REPLAYS
    return timings


def prefill_graph_vs_eager(scheduler, vocab_size: int) -> list[dict]:
    """A prompt alone as served (padded to its bucket, replayed as a CUDA graph) against the same prompt prefilled
    eagerly at its own length: the logits' relative error and whether the greedy token agrees, per length."""
    runner, served = scheduler.runner, scheduler.runner.prefill_buckets
    rows = []
    for length in PREFILL_CHECK_LENGTHS:
        ids, tables = prompt(vocab_size, 700 + length, length), idle_tables(1, length)
        runner.prefill([ids], tables)  # eager, then captured
        replayed = runner.prefill([ids], tables)[0].float()
        runner.prefill_buckets = ()
        try:
            eager = runner.prefill([ids], tables)[0].float()
        finally:
            runner.prefill_buckets = served
        rows.append(
            {
                "prompt_tokens": length,
                "padded_to": next((b for b in served if b >= length), None),
                "relative_error": float((replayed - eager).norm() / eager.norm()),
                "same_greedy_token": bool(torch.equal(replayed.argmax(-1), eager.argmax(-1))),
            }
        )
    return rows


def profile_decode_step(scheduler, out: Path) -> str:
    """torch.profiler's kernel table for one eager decode step at batch 1 (written to decode-profile.txt)."""
    from torch.profiler import ProfilerActivity, profile

    runner = scheduler.runner
    tables = idle_tables(1, PROMPT_TOKENS + 1)
    runner.decode([7], [PROMPT_TOKENS], tables)  # warm: every kernel compiled
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        runner.decode([7], [PROMPT_TOKENS], tables)
        torch.cuda.synchronize()
    table = profiler.key_averages().table(sort_by="self_device_time_total", row_limit=PROFILE_ROWS)
    (out / "decode-profile.txt").write_text(table)
    return table


def kv_cache_summary(scheduler) -> dict:
    plan = scheduler.runner.cache.plan
    return {
        "blocks": plan.blocks,
        "block_tokens": plan.block_tokens,
        "capacity_tokens": plan.capacity_tokens,
        "max_sequence_tokens": plan.max_seq_len,
        "max_batch_rows": scheduler.runner.max_rows,
        "source": plan.source,
    }


def compare(expected: list[list[int]], actual: list[list[int]]) -> dict:
    first_diffs = [
        next((i for i, (a, b) in enumerate(zip(x, y, strict=True)) if a != b), None)
        for x, y in zip(expected, actual, strict=True)
    ]
    return {
        "sequences": len(expected),
        "identical": sum(d is None for d in first_diffs),
        "first_divergence": [d for d in first_diffs if d is not None],
        # A model that emits one token forever makes any equality trivial: say how varied the compared text is.
        "distinct_tokens": len({token for sequence in expected for token in sequence}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_engine_arguments(parser)
    parser.add_argument("--kv-cache-fraction", type=float, default=0.8)
    parser.add_argument(
        "--graph-vs-eager-only",
        action="store_true",
        help=f"only selection and CUDA-graph decode vs eager decode at batch {GRAPH_VS_EAGER_BATCHES}",
    )
    args = parser.parse_args()
    results = Results(args.out)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        results.data["errors"].append("no CUDA device: this script measures a GPU (or pass --device cpu)")
        results.write()
        return 2
    on_gpu = device.type == "cuda"
    results.data["device"] = device_summary(device)
    results.data["setup"] = {"arch": args.arch, "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS}
    results.data["targets"] = TARGETS
    work = Path(tempfile.mkdtemp(prefix="awqd-engine-check-"))
    checkpoint = work / args.arch

    if on_gpu and not args.graph_vs_eager_only:
        with step(results, "layer_kernels", 240):
            cases = run_cases(args.device)
            results.data["layer_kernels"] = {"cases": len(cases), "failures": failures(cases)}

    with step(results, "synthesize", 240):
        synthesize(args.arch, checkpoint, version="GEMM")
    if results.data["errors"]:
        return 1
    with step(results, "kernel_selection", args.selection_budget + 120):
        info = next(d for d in discover().devices if d.torch_device == str(device))
        config = open_checkpoint(checkpoint).config
        decisions = select_kernels(
            info,
            list(engine_layer_shapes(config).values()),
            128,
            args.cache_dir or work / "cache",
            budget_s=args.selection_budget,
        )
        results.data["decisions"] = {d.batch_tokens: d.kernel for d in decisions.decisions}
        dispatch = decisions.dispatch()
        held = [registry.build(name) for name in decisions.usable_names()]
    if results.data["errors"]:
        return 1

    if args.graph_vs_eager_only:
        return graph_vs_eager(results, checkpoint, device, dispatch, held, args.kv_cache_fraction)

    with step(results, "hf_eager_baseline", 240):
        router = KernelRouter(dispatch)
        loaded = load_model(checkpoint, device, router, extra_candidates=held)
        results.data["hf_eager"] = hf_baseline(loaded, runs=3)
        del loaded
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()

    router = KernelRouter(dispatch)
    with step(results, "engine_load", 120):
        loaded = load_model(checkpoint, device, router, extra_candidates=held, fuse=True)
        # Its prompts repeat: a prefix-cache hit would skip the prefills it times and compares.
        settings = EngineSettings(kv_cache_fraction=args.kv_cache_fraction, prefix_caching=False)
        scheduler = build_engine("synth", loaded, router, settings)
        scheduler.eos_ids = frozenset()  # random weights: decode exactly N tokens every run
        results.data["kv_cache"] = kv_cache_summary(scheduler)
    if "engine_load" not in results.data["steps"]:
        return 1
    vocab_size = loaded.config.vocab_size

    results.data["single_query"] = []
    results.data["notes"] = []
    for family in ("auto", "gemm", "gemv"):
        try:
            pinned = None if family == "auto" else resolve_forced(decisions, family)
        except Exception as error:  # e.g. no GEMV candidate on this device: a finding, not a failure
            results.data["notes"].append(f"{family}: not measured: {error}")
            continue
        with step(results, f"single_query_{family}", 120):
            results.data["single_query"].append(single_query(scheduler, vocab_size, pinned, RUNS))
    with step(results, "single_query_eager_prefill", 120):
        # The same engine with a lone prompt's prefill run eagerly at its length (no padding, no graph).
        served, scheduler.runner.prefill_buckets = scheduler.runner.prefill_buckets, ()
        try:
            results.data["single_query_eager_prefill"] = single_query(scheduler, vocab_size, None, RUNS)
        finally:
            scheduler.runner.prefill_buckets = served

    results.data["concurrency"] = []
    for streams in CONCURRENCY:
        with step(results, f"concurrency_{streams}", 120):
            results.data["concurrency"].append(concurrency(scheduler, vocab_size, streams))

    if on_gpu:
        with step(results, "decode_step_gpu_ms", 120):
            results.data["decode_step_gpu_ms"] = decode_step_gpu_ms(scheduler, PROMPT_TOKENS)
            long = decode_step_gpu_ms(scheduler, LONG_POSITION, LONG_POSITION_BUCKETS)
            results.data[f"decode_step_gpu_ms_at_{LONG_POSITION}"] = long
        with step(results, "prefill_graph_vs_eager", 120):
            results.data["prefill_graph_vs_eager"] = prefill_graph_vs_eager(scheduler, vocab_size)

    prompts = [prompt(vocab_size, 100 + seed) for seed in range(EQUALITY_PROMPTS)]
    with step(results, "greedy_batched_vs_alone", 180):
        alone = [run_jobs(scheduler, [ids], greedy(EQUALITY_TOKENS))[0][0] for ids in prompts]
        together = [tokens for tokens, _ in run_jobs(scheduler, prompts, greedy(EQUALITY_TOKENS))]
        results.data["greedy_batched_vs_alone"] = compare(alone, together)
        results.data["captured_graphs"] = len(scheduler.runner.graphs)
        results.data["graph_capture_failures"] = len(scheduler.runner.eager_keys)

    with step(results, "cuda_graph_vs_eager", 180):
        scheduler.close()
        del scheduler
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
        eager = build_engine("synth", loaded, router, dataclasses.replace(settings, cuda_graphs=False))
        eager.eos_ids = frozenset()
        eager_alone = [run_jobs(eager, [ids], greedy(EQUALITY_TOKENS))[0][0] for ids in prompts]
        results.data["cuda_graph_vs_eager"] = compare(alone, eager_alone)
        results.data["eager_single_query"] = single_query(eager, vocab_size, None, 3)
        if on_gpu:
            results.data["decode_profile"] = profile_decode_step(eager, args.out)
        eager.close()

    try:  # the daemon's own check: --batch-invariant needs awqd's Triton GEMM usable here
        resolve_forced(decisions, AwqdTritonGemm.name)
    except FailedPrecondition as error:
        results.data["batch_invariant_not_run"] = str(error)
    else:
        batch_invariant(results, loaded, router, settings, prompts, vocab_size)
        router.dispatch = dispatch

    results.data["finished_at"] = datetime.now(UTC).isoformat()
    results.write()
    return 0 if not results.data["errors"] else 1


def batch_invariant(
    results: Results,
    loaded: LoadedModel,
    router: KernelRouter,
    settings: EngineSettings,
    prompts: list[list[int]],
    vocab_size: int,
) -> None:
    """What --batch-invariant serves, where the daemon would serve it: greedy batched against alone, one query and
    32 streams."""
    with step(results, "batch_invariant", 300):
        # What --batch-invariant serves: one fixed-tile GEMM for every batch size, the Triton lm_head.
        router.dispatch = Dispatch.single(AwqdTritonGemmBatchInvariant())
        invariant = build_engine("synth", loaded, router, dataclasses.replace(settings, batch_invariant=True))
        invariant.eos_ids = frozenset()
        invariant_alone = [run_jobs(invariant, [ids], greedy(EQUALITY_TOKENS))[0][0] for ids in prompts]
        invariant_together = [tokens for tokens, _ in run_jobs(invariant, prompts, greedy(EQUALITY_TOKENS))]
        results.data["greedy_batched_vs_alone_batch_invariant"] = compare(invariant_alone, invariant_together)
        results.data["batch_invariant_single_query"] = single_query(invariant, vocab_size, None, 3)
        results.data["batch_invariant_concurrency"] = concurrency(invariant, vocab_size, 32)
        invariant.close()


def graph_vs_eager(results: Results, checkpoint: Path, device, dispatch, held, kv_cache_fraction: float) -> int:
    """Greedy decode of the same prompts, batched together, replayed as CUDA graphs and run eagerly, on the
    chosen kernels: every sequence should match token for token."""
    router = KernelRouter(dispatch)
    loaded = load_model(checkpoint, device, router, extra_candidates=held, fuse=True)
    settings = EngineSettings(
        kv_cache_fraction=kv_cache_fraction, max_batch_size=max(GRAPH_VS_EAGER_BATCHES), prefix_caching=False
    )
    vocab_size = loaded.config.vocab_size
    request = greedy(EQUALITY_TOKENS)
    results.data["graph_vs_eager"] = {}
    for batch in GRAPH_VS_EAGER_BATCHES:
        prompts = [prompt(vocab_size, 300 + seed) for seed in range(batch)]
        with step(results, f"graph_vs_eager_{batch}", 300):
            runs = {}
            for cuda_graphs in (True, False):
                engine = build_engine("synth", loaded, router, dataclasses.replace(settings, cuda_graphs=cuda_graphs))
                engine.eos_ids = frozenset()
                runs[cuda_graphs] = [tokens for tokens, _ in run_jobs(engine, prompts, request)]
                engine.close()
                del engine  # its KV cache goes before the next engine sizes its own from the free memory
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            result = compare(runs[False], runs[True])
            result["distinct_tokens_per_sequence"] = sorted(len(set(tokens)) for tokens in runs[True])
            results.data["graph_vs_eager"][batch] = result
        results.write()
    results.data["finished_at"] = datetime.now(UTC).isoformat()
    results.write()
    return 0 if not results.data["errors"] else 1


def markdown(data: dict) -> str:
    device = data.get("device", {})
    lines = [
        f"# Decode engine check on {device.get('name', 'unknown device')}",
        "",
        f"{data.get('setup', {}).get('arch', '?')}-shaped synthetic AWQ model, P={PROMPT_TOKENS}, N={NEW_TOKENS}, "
        f"greedy. torch {device.get('torch', '?')}, CUDA {device.get('cuda', '?')}, capability "
        f"{device.get('capability', '?')}. Started {data.get('started_at', '?')}.",
        "",
        "| run | tokens/s | TTFT ms | ms/token p50 | kernels |",
        "|---|---|---|---|---|",
    ]
    if "hf_eager" in data:
        hf = data["hf_eager"]
        lines.append(
            f"| transformers eager generate (baseline) | {hf['tokens_per_s']:.1f} | {hf['ttft_ms']:.1f} | | auto |"
        )
    for row in data.get("single_query", []):
        lines.append(
            f"| engine, {row['kernel']} | {row['tokens_per_s']:.1f} | {row['ttft_ms']:.1f} | "
            f"{row['ms_per_token_p50']:.2f} | {', '.join(row['kernels_used'])} |"
        )
    for key, label in (
        ("single_query_eager_prefill", "with a lone prompt's prefill eager"),
        ("eager_single_query", "without CUDA graphs"),
        ("batch_invariant_single_query", "--batch-invariant"),
    ):
        if key in data:
            row = data[key]
            lines.append(
                f"| engine {label}, auto | {row['tokens_per_s']:.1f} | {row['ttft_ms']:.1f} | "
                f"{row['ms_per_token_p50']:.2f} | {', '.join(row['kernels_used'])} |"
            )
    if data.get("concurrency"):
        lines += ["", "| streams | aggregate tokens/s | inter-token p50 ms | inter-token p99 ms | TTFT p50 ms |"]
        lines.append("|---|---|---|---|---|")
        invariant = data.get("batch_invariant_concurrency")
        for row in data["concurrency"] + ([{**invariant, "streams": "32, --batch-invariant"}] if invariant else []):
            lines.append(
                f"| {row['streams']} | {row['tokens_per_s']:.0f} | {row['inter_token_p50_ms']:.2f} | "
                f"{row['inter_token_p99_ms']:.2f} | {row['ttft_p50_ms']:.1f} |"
            )
    lines += ["", f"Targets: {data.get('targets', {})}."]
    for key, label in (
        ("greedy_batched_vs_alone", "Greedy, 8 prompts batched vs each alone (kernels per bucket)"),
        ("greedy_batched_vs_alone_batch_invariant", "Greedy, 8 prompts batched vs each alone (--batch-invariant)"),
        ("cuda_graph_vs_eager", "Greedy, CUDA-graph decode vs eager decode"),
    ):
        if key in data:
            check = data[key]
            lines.append(
                f"- {label}: {check['identical']} of {check['sequences']} identical over {EQUALITY_TOKENS} tokens "
                f"({check.get('distinct_tokens', '?')} distinct token ids among them)"
                + (f"; first divergences at tokens {check['first_divergence']}" if check["first_divergence"] else "")
            )
    for batch, check in data.get("graph_vs_eager", {}).items():
        lines.append(
            f"- Greedy, {batch} prompts batched, CUDA-graph decode vs eager decode: {check['identical']} of "
            f"{check['sequences']} identical over {EQUALITY_TOKENS} tokens; distinct tokens per sequence "
            f"{check['distinct_tokens_per_sequence']}"
            + (f"; first divergences at tokens {check['first_divergence']}" if check["first_divergence"] else "")
        )
    if "batch_invariant_not_run" in data:
        lines.append(f"- --batch-invariant: not run: {data['batch_invariant_not_run']}")
    if "layer_kernels" in data:
        kernels = data["layer_kernels"]
        lines.append(f"- Layer kernels vs torch on this GPU: {kernels['cases']} cases, failures: {kernels['failures']}")
    if "decode_step_gpu_ms" in data:
        lines.append(f"- GPU ms of one captured decode step, by batch bucket: {data['decode_step_gpu_ms']}")
    if f"decode_step_gpu_ms_at_{LONG_POSITION}" in data:
        long = data[f"decode_step_gpu_ms_at_{LONG_POSITION}"]
        lines.append(f"- The same at position {LONG_POSITION}: {long}")
    for row in data.get("prefill_graph_vs_eager", []):
        lines.append(
            f"- A {row['prompt_tokens']}-token prompt alone, padded to {row['padded_to']} and replayed, against eager "
            f"at its length: logits relative error {row['relative_error']:.2e}, same greedy token: "
            f"{row['same_greedy_token']}"
        )
    if "kv_cache" in data:
        lines.append(f"- KV cache: {data['kv_cache']}; graphs captured: {data.get('captured_graphs', '?')}")
    if "decisions" in data:
        lines.append(f"- Kernel decisions by bucket: {data['decisions']}")
    lines.append(f"- Step seconds: {data.get('steps', {})}")
    for note in data.get("notes", []):
        lines.append(f"- Note: {note}")
    for error in data.get("errors", []):
        lines.append(f"- **Error:** {error}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
