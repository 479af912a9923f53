"""Large prefill steps on a GPU, per kernel: `python3 bench/prefill_check.py --out DIR [--cache-dir D]`.

A burst of requests is prefilled in steps of up to --prefill-tokens-per-step (8192) prompt tokens, far past the
largest decode bucket, and those steps set the burst's time to first token. On a Llama-2-7B-shaped synthetic AWQ
checkpoint (awqd synth), with 128-token prompts, this times one eager prefill step of 4, 16 and 64 prompts (512,
2048 and 8192 tokens) on the engine's runner:

1. the kernel selection (its buckets reach the largest prefill step) and its choice per bucket;
2. ms per prefill step and prompt tokens/s, for the selection's dispatch (auto) and with each large-batch
   candidate pinned, every one in the same process on the same engine;
3. one flash-attention call for several prompts against a call per prompt (mixed lengths, grouped-query heads);
4. the floor: the step's linear-layer FLOPs at the fp16 dense tensor-core rate measured here (torch.matmul of
   the largest shape), beside each measured step;
5. torch.profiler's kernel table for one 8192-token step with the auto dispatch (prefill-profile.txt).

Writes prefill-check.json and prefill-check.md to --out. A CPU dry run: --device cpu --arch tiny --prompts 1,2.
"""

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_check
from engine_check import Results, idle_tables, step, synchronize

from awqd.config import EngineSettings
from awqd.engine.build import build_engine
from awqd.engine.layers.attention import AttentionShape, prompt_attention
from awqd.kernels import registry
from awqd.kernels.linear import KernelRouter
from awqd.kernels.shapes import engine_layer_shapes
from awqd.models.checkpoint import open_checkpoint
from awqd.models.loader import load_model

PROMPT_TOKENS = 128
LARGE_CANDIDATES = (
    "fbgemm_bf16i4_shuffled",
    "fbgemm_bf16i4_rowwise",
    "awqd_triton_dequant_cublas",
    "dequant_cublas",
    "awqd_triton_gemm",
)
RUNS = 3
PROFILE_ROWS = 25


def dense_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """fp16 (or the model's dtype) dense matmul rate here: 8192 x 4096 @ 4096 x 22016, the largest fused linear."""
    a = torch.randn(8192, 4096, device=device, dtype=dtype)
    b = torch.randn(4096, 22016, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start, runs = time.perf_counter(), 10
    for _ in range(runs):
        a @ b
    synchronize(device)
    return 2 * 8192 * 4096 * 22016 * runs / (time.perf_counter() - start) / 1e12


def linear_flops(shapes: dict, layers: int, tokens: int) -> float:
    return 2.0 * tokens * layers * sum(out_features * in_features for out_features, in_features in shapes.values())


def time_prefill(runner, prompts: list[list[int]], device: torch.device) -> float:
    """Median ms of one eager prefill step of these prompts (after one untimed step)."""
    tables = idle_tables(len(prompts), PROMPT_TOKENS + 1)
    runner.prefill(prompts, tables)
    synchronize(device)
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        runner.prefill(prompts, tables)
        synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def attention_errors(compare: Callable) -> list[dict]:
    """compare(shape, dtype, seed) -> (one flash call's output, the per-prompt path's), with and without grouped-query
    heads (32/32, 32/8, head_dim 128), in fp16 and bf16: the relative error of each."""
    rows = []
    for heads, kv_heads in ((32, 32), (32, 8)):
        shape = AttentionShape(heads, kv_heads, 128, None)
        for dtype in (torch.float16, torch.bfloat16):
            flash, per_prompt = compare(shape, dtype, heads + kv_heads)
            error = ((flash.float() - per_prompt.float()).norm() / per_prompt.float().norm()).item()
            rows.append({"heads": heads, "kv_heads": kv_heads, "dtype": str(dtype), "relative_error": error})
    return rows


def varlen_against_per_prompt(device: torch.device) -> list[dict]:
    """prompt_attention's one flash-attention call for several prompts against one SDPA call per prompt (the CPU
    path), on mixed lengths: attention_errors."""
    lengths = [1, 17, 128, 300, 513, 64]
    offsets = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)

    def compare(shape: AttentionShape, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator(device=device).manual_seed(seed)
        q, k, v = (
            torch.randn(sum(lengths), h, 128, device=device, dtype=dtype, generator=generator)
            for h in (shape.num_heads, shape.num_kv_heads, shape.num_kv_heads)
        )
        return prompt_attention(q, k, v, lengths, offsets, shape), prompt_attention(q, k, v, lengths, None, shape)

    return attention_errors(compare)


def profile_prefill(runner, prompts: list[list[int]], out: Path) -> str:
    from torch.profiler import ProfilerActivity, profile

    tables = idle_tables(len(prompts), PROMPT_TOKENS + 1)
    runner.prefill(prompts, tables)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        runner.prefill(prompts, tables)
        torch.cuda.synchronize()
    table = profiler.key_averages().table(sort_by="self_device_time_total", row_limit=PROFILE_ROWS)
    (out / "prefill-profile.txt").write_text(table)
    return table


def markdown(data: dict) -> str:
    lines = [
        f"# Prefill steps per kernel on {data['device']['name']}",
        "",
        f"Dense matmul here: {data.get('dense_tflops', '-')} TFLOPS (8192 x 4096 @ 4096 x 22016).",
        "",
        "## Selection's kernel per bucket",
        "",
        ", ".join(f"{b}: {k}" for b, k in data.get("decisions", {}).items()),
        "",
        "## One eager prefill step of 128-token prompts (ms; prompt tokens/s; share of the dense floor)",
        "",
        "| prompts | tokens | kernel | ms | tokens/s | floor ms | floor / ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data.get("prefill", []):
        lines.append(
            f"| {row['prompts']} | {row['tokens']} | {row['kernel']} | {row['ms']:.1f} | {row['tokens_per_s']:.0f} | "
            f"{row['floor_ms']:.1f} | {row['floor_ratio']:.2f} |"
        )
    varlen = data.get("varlen_against_per_prompt", [])
    if varlen:
        lines += ["", "## One flash-attention call for several prompts against one SDPA call per prompt", ""]
        lines += [
            f"- {r['heads']} heads, {r['kv_heads']} kv heads, {r['dtype']}: relative error {r['relative_error']:.2e}"
            for r in varlen
        ]
    if data["errors"]:
        lines += ["", "## Errors", "", *[f"- {e}" for e in data["errors"]]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    engine_check.add_engine_arguments(parser, selection_budget_s=240.0)
    parser.add_argument("--buckets", help="comma-separated selection buckets (default: the daemon's for the device)")
    parser.add_argument("--prompts", default="4,16,64", help="prompts per prefill step (128 tokens each)")
    parser.add_argument("--kernels", default=",".join(LARGE_CANDIDATES), help="candidates to pin, where usable")
    args = parser.parse_args()
    results = Results(args.out, "prefill-check", markdown)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    results.data["device"] = engine_check.device_summary(device)
    if on_gpu:
        with step(results, "varlen_against_per_prompt", 60):
            results.data["varlen_against_per_prompt"] = varlen_against_per_prompt(device)
    buckets = [int(b) for b in args.buckets.split(",")] if args.buckets else None
    if (synthesized := engine_check.synthesized_decisions(results, args, device, buckets)) is None:
        return 1
    checkpoint, decisions = synthesized
    shapes = engine_layer_shapes(open_checkpoint(checkpoint).config)
    usable = set(decisions.usable_names())
    pins = [name for name in args.kernels.split(",") if name in usable]
    results.data["not_usable"] = [name for name in args.kernels.split(",") if name not in usable]
    router = KernelRouter(decisions.dispatch())
    with step(results, "engine_load", 300):
        held = [registry.build(name) for name in sorted(usable | set(pins))]
        loaded = load_model(checkpoint, device, router, extra_candidates=held, fuse=True)
        scheduler = build_engine("synth", loaded, router, EngineSettings(kv_cache_fraction=0.5, prefix_caching=False))
    if "engine_load" not in results.data["steps"]:
        return 1
    runner, vocab = scheduler.runner, loaded.config.vocab_size
    if on_gpu:
        with step(results, "dense_tflops", 60):
            results.data["dense_tflops"] = round(dense_tflops(device, loaded.model.dtype), 1)
    rate = results.data.get("dense_tflops")
    results.data["prefill"] = []
    counts = [int(c) for c in args.prompts.split(",")]
    for count in counts:
        prompts = [engine_check.prompt(vocab, seed, PROMPT_TOKENS) for seed in range(count)]
        tokens = count * PROMPT_TOKENS
        floor_ms = linear_flops(shapes, loaded.config.num_hidden_layers, tokens) / (rate * 1e12) * 1000 if rate else 0.0
        for pin in [None, *pins]:
            with step(results, f"prefill_{tokens}_{pin or 'auto'}", 120):
                if pin is None:
                    router.unpin()
                else:
                    router.pin(registry.build(pin))
                label = pin or f"auto ({router.candidate_for(tokens).name})"
                ms = time_prefill(runner, prompts, device)
                results.data["prefill"].append(
                    {
                        "prompts": count,
                        "tokens": tokens,
                        "kernel": label,
                        "ms": ms,
                        "tokens_per_s": tokens / ms * 1000,
                        "floor_ms": floor_ms,
                        "floor_ratio": floor_ms / ms if floor_ms else 0.0,
                    }
                )
                results.write()
    router.unpin()
    if on_gpu:
        with step(results, "profile", 120):
            prompts = [engine_check.prompt(vocab, seed, PROMPT_TOKENS) for seed in range(max(counts))]
            profile_prefill(runner, prompts, args.out)
    scheduler.close()
    results.write()
    print(markdown(results.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
