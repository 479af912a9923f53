"""The prefix cache on a GPU, in-process: `python3 bench/prefix_cache_check.py --out DIR [--cache-dir D]`.

On a Llama-2-7B-shaped synthetic AWQ checkpoint (awqd synth), for prompts whose first S tokens are in the KV cache
already (a prefix-cache hit), on the engine's own runner and scheduler:

0. attention_after_cached's one variable-length flash call against its per-prompt SDPA path, and PaddedSpan's
   (a lone prompt's rest after a hit) against its masked form, on random tensors;
1. correctness, against the whole prompt prefilled eagerly in one pass: the last position's logits (largest
   difference relative to the logits' own size, and whether the argmax agrees, or else is a near-tie: compare) and
   the k/v the rest wrote. For several prompts in one eager pass (their rest attends over the cached blocks), and
   for a prompt alone, its graph captured and replayed: its rest's (padded, attending over its gathered keys), or
   its whole prompt's where flash does not serve the span. The shared blocks must come out unchanged, bit for bit.
   Then every (rows, keys) graph a lone prompt's hit can run, each reached by a prompt of its own, captured and
   replayed;
2. time of one eager prefill step of --prompts prompts of P tokens, S of each cached, against the whole prompts,
   both in this run; and of a prompt alone after a hit as the runner serves it (a CUDA graph, as above) against a
   miss as served (the whole prompt: its padded graph within the prefill buckets, eager past them), its rest run
   eagerly (a lone hit past the buckets as served before the rest's graph) and the whole prompt eagerly. Each gives
   the host's share (the time until the call returned), and with --profile the eager ones torch.profiler's table
   (profile-alone-eager-*.txt);
3. greedy tokens through the scheduler for --prompts prompts sharing S tokens, with the cache and without: how many
   streams match, and each one's cached_prompt_tokens. The synthetic weights are random, so near-ties are common, and
   the pass that skips the cached tokens runs fewer tokens, which can pick another kernel (on this CPU's dry run,
   3 of 4 streams matched: 384 tokens ran the reference kernel, 128 the int4 one).

Writes prefix-cache-check.json and prefix-cache-check.md to --out. A CPU dry run: --device cpu --arch tiny
--prompt-tokens 96 --cached-tokens 64.
"""

import argparse
import functools
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_check
import prefill_check
from engine_check import Results, greedy, run_jobs, step, synchronize

from awqd.config import EngineSettings
from awqd.engine.build import build_engine
from awqd.engine.kv_cache import BLOCK_TOKENS, PADDING_BLOCK, blocks_for
from awqd.engine.layers.attention import AttentionShape, CachedSpans, PaddedSpan, attention_after_cached
from awqd.kernels import registry
from awqd.kernels.linear import KernelRouter
from awqd.models.loader import load_model

RUNS = 5
NEW_TOKENS = 64
SERVED_AS = {
    "hit": "its rest padded, its CUDA graph over the gathered keys",
    "padded": "padded, its CUDA graph over the whole prompt",
    "eager": "no graph bucket here",
}
RELATIVE_TOLERANCE = 2e-2  # of the logits' largest magnitude: fp16 rounding differs between the two attention paths


class Blocks:
    """Hands out fresh block tables from the scheduler's BlockTables, and gives them all back at the end."""

    def __init__(self, scheduler):
        self.tables = scheduler.blocks
        self.owners: list[str] = []

    def take(self, tokens: int) -> list[int]:
        owner = f"prefix-check-{len(self.owners)}"
        if not self.tables.grow(owner, tokens):
            raise RuntimeError(f"the KV cache has too few free blocks for {tokens} tokens")
        self.owners.append(owner)
        return self.tables.table(owner)

    def release(self) -> None:
        for owner in self.owners:
            self.tables.release(owner)
        self.owners.clear()


def flash_against_per_prompt(device: torch.device) -> list[dict]:
    """attention_after_cached's one flash-attention call against its per-prompt SDPA path (the CPU's), on random
    queries and a random paged cache: mixed cached starts (one of them 0) and rests, with and without grouped-query
    heads, in fp16 and bf16: prefill_check.attention_errors."""
    lengths, cached = [1, 17, 128, 40, 300], [16, 0, 256, 512, 32]
    offsets = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)
    per_sequence = max(map(blocks_for, (c + n for c, n in zip(cached, lengths, strict=True))))
    order = torch.randperm(len(lengths) * per_sequence, generator=torch.Generator().manual_seed(0)) + 1
    tables = order.view(len(lengths), per_sequence).to(device=device, dtype=torch.int32)
    spans = CachedSpans.build(tables, lengths, cached, BLOCK_TOKENS)

    def compare(shape: AttentionShape, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator(device=device).manual_seed(seed)
        blocks = (1 + len(lengths) * per_sequence, shape.num_kv_heads, BLOCK_TOKENS, 128)
        cache_k, cache_v = (torch.randn(blocks, device=device, dtype=dtype, generator=generator) for _ in range(2))
        q = torch.randn(sum(lengths), shape.num_heads, 128, device=device, dtype=dtype, generator=generator)
        flash = attention_after_cached(q, lengths, offsets, spans, cache_k, cache_v, shape)
        return flash, attention_after_cached(q, lengths, None, spans, cache_k, cache_v, shape)

    return prefill_check.attention_errors(compare)


def padded_span_flash_against_masked(device: torch.device) -> list[dict]:
    """PaddedSpan.attend's flash call (what a lone prompt's graph after a hit runs) against its masked SDPA form in
    float32 on the CPU, on random queries and a random paged cache: a 100-token rest padded to 128 rows after 512
    cached positions, gathered into 1024 key slots; every row, the padding rows' too."""
    cached, rest, rows, keys = 512, 100, 128, 1024
    width = blocks_for(keys)
    table = (torch.randperm(width, generator=torch.Generator().manual_seed(1)) + 1).to(device, torch.int32)
    offsets = torch.tensor([0, rest, rows, 0, cached + rest, cached + rows], device=device)
    span = PaddedSpan.build(table, offsets, keys, BLOCK_TOKENS, PADDING_BLOCK)
    on_cpu = PaddedSpan.build(table.cpu(), offsets.cpu(), keys, BLOCK_TOKENS, PADDING_BLOCK)

    def compare(shape: AttentionShape, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator(device=device).manual_seed(seed)
        blocks = (1 + width, shape.num_kv_heads, BLOCK_TOKENS, 128)
        cache_k, cache_v = (torch.randn(blocks, device=device, dtype=dtype, generator=generator) for _ in range(2))
        q = torch.randn(rows, shape.num_heads, 128, device=device, dtype=dtype, generator=generator)
        flash = span.attend(q, cache_k, cache_v, shape)
        masked = on_cpu.attend(*(t.cpu().float() for t in (q, cache_k, cache_v)), shape)
        return flash, masked.to(device, dtype)

    return prefill_check.attention_errors(compare)


def prefill_eagerly(model, cache, ids: list[int], table: list[int]) -> torch.Tensor:
    """One prompt prefilled whole into `table`'s blocks, eagerly: a cached start as an earlier request would have
    written it, or a whole prompt to check a hit against. Returns its last position's logits."""
    tables = torch.tensor([table], dtype=torch.int32, device=model.device)
    return model.prefill([torch.tensor(ids, device=model.device)], tables, cache)


def kv_rows(cache, table: list[int], start: int, end: int) -> torch.Tensor:
    """Positions start..end-1 of the sequence in `table`, every layer's k and v: [2 * layers, kv_heads, n, dim]."""
    index = torch.tensor(table, device=cache.k[0].device)
    layers = [layer[index].transpose(0, 1).flatten(1, 2)[:, start:end] for layer in (*cache.k, *cache.v)]
    return torch.stack(layers)


def argmax(check: dict) -> str:
    """Whether the argmax agrees, for the report: a near-tie says by how much the measured pick scored below the
    reference's best (relative to the largest logit)."""
    if check["argmax_agrees"]:
        return "True"
    return f"{'near-tie' if check['near_tie'] else 'False'}, {check['argmax_shortfall']:.1e} short"


def compare(reference: torch.Tensor, measured: torch.Tensor) -> dict:
    """The largest difference relative to the logits' largest magnitude, and whether each row's argmax agrees. Where
    it does not, whether the row is a near-tie: the measured argmax scores, in the reference, within the largest
    difference of the reference's best, so rounding alone can swap them (random synthetic weights make such ties
    common). A swap outside that margin fails the check."""
    reference, measured = reference.float(), measured.float()
    scale = reference.abs().max().item() or 1.0
    largest = (measured - reference).abs().max().item()
    agree = bool((measured.argmax(-1) == reference.argmax(-1)).all())
    picked = reference.gather(-1, measured.argmax(-1, keepdim=True)).squeeze(-1)
    shortfall = (reference.max(-1).values - picked).max().item()  # 0 where every argmax agrees
    near_tie = not agree and shortfall <= largest
    return {
        "relative_difference": largest / scale,
        "argmax_agrees": agree,
        "near_tie": near_tie,
        "argmax_shortfall": shortfall / scale,
        "ok": (agree or near_tie) and largest / scale <= RELATIVE_TOLERANCE,
    }


def correctness(scheduler, vocab: int, prompt_tokens: int, cached: int) -> dict:
    runner, model, cache = scheduler.runner, scheduler.runner.model, scheduler.runner.cache
    blocks = Blocks(scheduler)
    shared_start = engine_check.prompt(vocab, 1, cached)
    prompts = [shared_start + engine_check.prompt(vocab, 10 + i, prompt_tokens - cached) for i in range(2)]
    device = model.device
    rows = {}
    try:
        whole_tables = [blocks.take(prompt_tokens) for _ in prompts]
        whole = model.prefill(
            [torch.tensor(ids, device=device) for ids in prompts],
            torch.tensor(whole_tables, dtype=torch.int32, device=device),
            cache,
        )
        # The cached start, then shared by both prompts' tables.
        start_table = blocks.take(cached)
        prefill_eagerly(model, cache, shared_start, start_table)
        rest_tables = [start_table + blocks.take(prompt_tokens - cached) for _ in prompts]
        shared_before = kv_rows(cache, start_table, 0, cached).clone()
        logits, _ = runner.prefill(prompts, rest_tables, [cached, cached])
        rows["together"] = compare(whole, logits)
        rows["together"]["rest_kv"] = compare_kv(cache, whole_tables, rest_tables, cached, prompt_tokens)
        alone_table = start_table + blocks.take(prompt_tokens - cached)
        served = served_as(runner, prompt_tokens, cached)
        for replay in range(2 if served != "eager" else 0):  # the first pass captures the graph, the second replays it
            logits, _ = runner.prefill([prompts[0]], [alone_table], [cached])
            rows[f"alone_{served}_{'replayed' if replay else 'captured'}"] = compare(whole[:1], logits)
        if served != "eager":
            rows["alone_rest_kv"] = compare_kv(cache, whole_tables[:1], [alone_table], cached, prompt_tokens)
        rows["shared_blocks_unchanged"] = bool(torch.equal(kv_rows(cache, start_table, 0, cached), shared_before))
        synchronize(device)
    finally:
        blocks.release()
    return rows


def served_as(runner, prompt_tokens: int, cached: int) -> str:
    """How the runner serves a lone prompt after a hit: its rest's graph, its whole prompt's graph (within the
    prefill buckets, where flash does not serve the rest's span), or eagerly."""
    if runner.hit_buckets(prompt_tokens, cached) is not None:
        return "hit"
    return "padded" if prompt_tokens <= max(runner.prefill_buckets, default=0) else "eager"


def reaching(runner, shape: tuple[int, int]) -> tuple[int, int] | None:
    """A (prompt length, cached start) whose hit the runner serves with the (rows, keys) graph `shape`: the longest
    rest the row bucket takes, after the longest whole-block start the key bucket and the context allow."""
    rows, keys = shape
    for rest in range(rows, 0, -1):
        cached = min(keys - rows, runner.cache.plan.max_seq_len - rest) // BLOCK_TOKENS * BLOCK_TOKENS
        if cached > 0 and runner.hit_buckets(cached + rest, cached) == shape:
            return cached + rest, cached
    return None


def hit_shapes(scheduler, vocab: int) -> list[dict]:
    """Every (rows, keys) graph a lone prompt's hit can run, each reached by a prompt of its own and checked captured
    and replayed against that whole prompt prefilled eagerly. On the CPU, eagerly, with small buckets: the same code
    minus the capture."""
    runner, model, cache = scheduler.runner, scheduler.runner.model, scheduler.runner.cache
    served = runner.prefill_buckets
    if not runner.cuda_graphs:
        runner.prefill_buckets = (16, 32)
    rows = []
    try:
        for shape in runner.hit_shapes():
            found = reaching(runner, shape)
            if found is None:
                rows.append({"rows": shape[0], "keys": shape[1], "reached": False})
                continue
            length, cached = found
            ids = engine_check.prompt(vocab, 300 + len(rows), length)
            blocks = Blocks(scheduler)
            try:
                whole = prefill_eagerly(model, cache, ids, blocks.take(length))
                start_table = blocks.take(cached)
                prefill_eagerly(model, cache, ids[:cached], start_table)
                table = start_table + blocks.take(length - cached)
                row = {"rows": shape[0], "keys": shape[1], "reached": True, "prompt_tokens": length, "cached": cached}
                for replay in ("captured", "replayed"):
                    logits, _ = runner.prefill([ids], [table], [cached])
                    row[replay] = compare(whole, logits)
                rows.append(row)
            finally:
                blocks.release()
    finally:
        runner.prefill_buckets = served
    return rows


def compare_kv(cache, whole_tables, rest_tables, cached: int, prompt_tokens: int) -> float:
    """The largest difference of the rests' k/v from the whole prompts', relative to their largest magnitude."""
    worst = 0.0
    for whole_table, rest_table in zip(whole_tables, rest_tables, strict=True):
        reference = kv_rows(cache, whole_table, cached, prompt_tokens).float()
        measured = kv_rows(cache, rest_table, cached, prompt_tokens).float()
        worst = max(worst, ((measured - reference).abs().max() / reference.abs().max().clamp_min(1e-6)).item())
    return worst


def timed_ms(run, device) -> tuple[float, float]:
    """The median ms from run()'s call to the end of its device work, and the median ms until run() returned: the
    host's share, near the whole where the host's launches bound the step."""
    run()
    synchronize(device)
    times, host = [], []
    for _ in range(RUNS):
        started = time.perf_counter()
        run()
        host.append((time.perf_counter() - started) * 1000)
        synchronize(device)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), statistics.median(host)


def profiled(run, device, path: Path) -> None:
    """torch.profiler's table of one run (after a warm one), by the host time each op takes itself, into path."""
    run()
    synchronize(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        run()
        synchronize(device)
    path.write_text(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60))


def prefill_times(scheduler, vocab: int, count: int, prompt_tokens: int, cached: int, profiles: Path | None) -> dict:
    runner, model, cache = scheduler.runner, scheduler.runner.model, scheduler.runner.cache
    blocks = Blocks(scheduler)
    shared_start = engine_check.prompt(vocab, 2, cached)
    prompts = [shared_start + engine_check.prompt(vocab, 100 + i, prompt_tokens - cached) for i in range(count)]
    device = model.device
    try:
        start_table = blocks.take(cached)
        prefill_eagerly(model, cache, shared_start, start_table)
        whole_tables = [blocks.take(prompt_tokens) for _ in prompts]
        rest_tables = [start_table + blocks.take(prompt_tokens - cached) for _ in prompts]
        # Several prompts go eagerly in both forms: the runner pads and replays only a prompt alone.
        times = {"prompts": count}
        times["whole_ms"], _ = timed_ms(lambda: runner.prefill(prompts, whole_tables), device)
        times["cached_ms"], _ = timed_ms(lambda: runner.prefill(prompts, rest_tables, [cached] * count), device)
        times["speedup"] = times["whole_ms"] / times["cached_ms"]
        # A prompt alone, as served: a hit and a miss (the whole prompt); then both eagerly.
        alone_rest = functools.partial(runner.prefill, prompts[:1], rest_tables[:1], [cached])
        alone_whole = functools.partial(runner.prefill, prompts[:1], whole_tables[:1])
        times["alone_served_as"] = served_as(runner, prompt_tokens, cached)
        times["alone_served_ms"], times["alone_served_host_ms"] = timed_ms(alone_rest, device)
        times["alone_miss_served_ms"], times["alone_miss_served_host_ms"] = timed_ms(alone_whole, device)
        buckets, runner.prefill_buckets = runner.prefill_buckets, ()
        try:
            times["alone_eager_rest_ms"], times["alone_eager_rest_host_ms"] = timed_ms(alone_rest, device)
            times["alone_eager_whole_ms"], times["alone_eager_whole_host_ms"] = timed_ms(alone_whole, device)
            if profiles is not None:
                profiled(alone_rest, device, profiles / "profile-alone-eager-rest.txt")
                profiled(alone_whole, device, profiles / "profile-alone-eager-whole.txt")
        finally:
            runner.prefill_buckets = buckets
    finally:
        blocks.release()
    return times


def greedy_tokens(scheduler, vocab: int, count: int, prompt_tokens: int, cached: int) -> dict:
    shared_start = engine_check.prompt(vocab, 3, cached)
    prompts = [shared_start + engine_check.prompt(vocab, 200 + i, prompt_tokens - cached) for i in range(count)]
    scheduler.prefix_caching = False
    without = run_jobs(scheduler, prompts, greedy(NEW_TOKENS))
    scheduler.prefix_caching = True
    run_jobs(scheduler, [[*shared_start, 5]], greedy(1))  # an earlier request publishes the shared start
    with_cache = run_jobs(scheduler, prompts, greedy(NEW_TOKENS))
    return {
        "streams": count,
        "streams_matching": sum(a == b for (a, _), (b, _) in zip(without, with_cache, strict=True)),
        "cached_prompt_tokens": sorted({finished.cached_prompt_tokens for _, finished in with_cache}),
        "ttft_ms_without": statistics.median(f.time_to_first_token_ms for _, f in without),
        "ttft_ms_with": statistics.median(f.time_to_first_token_ms for _, f in with_cache),
    }


def markdown(data: dict) -> str:
    setup = data.get("setup", {})
    lines = [
        f"# Prefix cache on {data.get('device', {}).get('name', '?')}",
        "",
        f"{setup.get('arch')}: prompts of {setup.get('prompt_tokens')} tokens, the first {setup.get('cached_tokens')} "
        f"cached. Started {data['started_at']}.",
        "",
        "## Against the whole prompt prefilled at once",
        "",
        "| pass | logits: largest difference / largest logit | argmax agrees | ok |",
        "|---|---|---|---|",
    ]
    checks = data.get("correctness", {})
    for name, row in checks.items():
        if isinstance(row, dict):
            lines.append(f"| {name} | {row['relative_difference']:.2e} | {argmax(row)} | {row['ok']} |")
    if "together" in checks:
        lines.append(f"\nThe rests' k/v: largest difference {checks['together']['rest_kv']:.2e} of the largest value.")
    if "alone_rest_kv" in checks:
        lines.append(f"A lone prompt's rest k/v: largest difference {checks['alone_rest_kv']:.2e} of the largest.")
    if "shared_blocks_unchanged" in checks:
        lines.append(f"Shared blocks unchanged, bit for bit: {checks['shared_blocks_unchanged']}.")
    if shapes := data.get("hit_shapes"):
        lines += [
            "",
            "## Every graph a lone prompt's hit can run, against its whole prompt",
            "",
            "| rows | keys | prompt | cached | captured: difference, argmax | replayed: difference, argmax | ok |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in shapes:
            if not row["reached"]:
                lines.append(f"| {row['rows']} | {row['keys']} | no prompt reaches it | | | | False |")
                continue
            captured, replayed = row["captured"], row["replayed"]
            lines.append(
                f"| {row['rows']} | {row['keys']} | {row['prompt_tokens']} | {row['cached']} | "
                f"{captured['relative_difference']:.2e}, {argmax(captured)} | "
                f"{replayed['relative_difference']:.2e}, {argmax(replayed)} | "
                f"{captured['ok'] and replayed['ok']} |"
            )
    if times := data.get("prefill"):
        lines += [
            "",
            "## One eager prefill step",
            "",
            "| prompts | whole ms | cached start ms | speedup |",
            "|---|---|---|---|",
            f"| {times['prompts']} | {times['whole_ms']:.2f} | {times['cached_ms']:.2f} | {times['speedup']:.2f}x |",
            "",
            f"A prompt alone after its hit: {times['alone_served_ms']:.2f} ms as served "
            f"({SERVED_AS[times['alone_served_as']]}; {times['alone_served_host_ms']:.2f} ms of the host). "
            f"A miss as served: {times['alone_miss_served_ms']:.2f} ms "
            f"({times['alone_miss_served_host_ms']:.2f} ms of the host). "
            f"{times['alone_eager_rest_ms']:.2f} ms with only its rest run eagerly. Eagerly, its rest took "
            f"{times['alone_eager_rest_host_ms']:.2f} ms of the host until the call returned, and the whole prompt "
            f"{times['alone_eager_whole_ms']:.2f} ms ({times['alone_eager_whole_host_ms']:.2f} ms of the host).",
        ]
    if tokens := data.get("greedy"):
        lines += [
            "",
            f"## Greedy, {NEW_TOKENS} tokens, through the scheduler",
            "",
            f"{tokens['streams_matching']} of {tokens['streams']} streams give the same tokens with the cache as "
            f"without; cached_prompt_tokens {tokens['cached_prompt_tokens']}; median TTFT "
            f"{tokens['ttft_ms_with']:.1f} ms with, {tokens['ttft_ms_without']:.1f} ms without.",
        ]
    if rows := data.get("flash_against_per_prompt"):
        lines += ["", "## One flash call against a call per prompt (random tensors)", ""]
        lines += [f"- {r['heads']}/{r['kv_heads']} heads, {r['dtype']}: {r['relative_error']:.2e}" for r in rows]
    if rows := data.get("padded_span_flash_against_masked"):
        lines += ["", "## A lone prompt's rest after a hit: flash against the masked form (random tensors)", ""]
        lines += [f"- {r['heads']}/{r['kv_heads']} heads, {r['dtype']}: {r['relative_error']:.2e}" for r in rows]
    lines += [f"- **Error:** {error}" for error in data["errors"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    engine_check.add_engine_arguments(parser)
    parser.add_argument("--prompt-tokens", type=int, default=384, help="within the CUDA-graph buckets (512)")
    parser.add_argument("--cached-tokens", type=int, default=256, help="whole blocks of 16")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step, and streams, in steps 2 and 3")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables of a lone prompt's eager passes")
    args = parser.parse_args()
    if args.cached_tokens % BLOCK_TOKENS or not 0 < args.cached_tokens < args.prompt_tokens:
        parser.error(f"--cached-tokens must be whole blocks of {BLOCK_TOKENS}, below --prompt-tokens")
    results = Results(args.out, "prefix-cache-check", markdown)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    results.data["device"] = engine_check.device_summary(device)
    results.data["setup"] = {key: value for key, value in vars(args).items() if key not in ("out", "cache_dir")}
    if on_gpu:
        with step(results, "flash_against_per_prompt", 60):
            results.data["flash_against_per_prompt"] = flash_against_per_prompt(device)
        with step(results, "padded_span_flash_against_masked", 60):
            results.data["padded_span_flash_against_masked"] = padded_span_flash_against_masked(device)
    synthesized = engine_check.synthesized_decisions(results, args, device)
    if synthesized is None or results.data["errors"]:
        return 1
    checkpoint, decisions = synthesized
    router = KernelRouter(decisions.dispatch())
    with step(results, "engine_load", 300):
        held = [registry.build(name) for name in decisions.usable_names()]
        loaded = load_model(checkpoint, device, router, extra_candidates=held, fuse=True)
        scheduler = build_engine("synth", loaded, router, EngineSettings(kv_cache_fraction=0.5))
        scheduler.eos_ids = frozenset()  # random weights: decode exactly NEW_TOKENS every run
    if results.data["errors"]:
        return 1
    vocab, sizes = loaded.config.vocab_size, (args.prompt_tokens, args.cached_tokens)
    with torch.inference_mode():
        with step(results, "correctness", 300):
            results.data["correctness"] = correctness(scheduler, vocab, *sizes)
        with step(results, "hit_shapes", 300):
            results.data["hit_shapes"] = hit_shapes(scheduler, vocab)
        with step(results, "prefill", 300):
            profiles = args.out if args.profile else None
            results.data["prefill"] = prefill_times(scheduler, vocab, args.prompts, *sizes, profiles)
    with step(results, "greedy", 300):
        results.data["greedy"] = greedy_tokens(scheduler, vocab, args.prompts, *sizes)
    scheduler.close()
    results.write()
    print(markdown(results.data))
    return 0 if not results.data["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
