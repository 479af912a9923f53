"""Times the decode-attention kernel's launch settings against the unsplit defaults:
`python3 bench/decode_attention_tune.py [--sweep splits|engine|pipelining|split-pipelining]`.

awqd.engine.layers.triton_attention runs SPLITS programs per (row, kv head), each walking its share of the row's
cached positions in steps of BLOCK_N. Unsplit, one row is 32 programs for Llama-2-7B and 8 for Llama-3-8B, each a
chain of dependent loads, so the step loop's software pipelining (stages), its step size, the warps per program and
the split count are what can move it.
- `--sweep splits` (the default): split counts 1-16 at step sizes 32-128, and the engine's own choice
  (split_count by rows, SPLIT_BLOCK_N);
- `--sweep engine`: the engine's choice alone, on the same cases;
- `--sweep pipelining`: the unsplit step size, stages and warps (bench/results/h200-2026-12-02-decode-attention);
- `--sweep split-pipelining`: the engine's split launches with 1-3 stages and 1-8 warps. A split program walks one or
  two steps at short contexts, where pipeline buffers only hold shared memory that other programs could use.

Per model shape (Llama-2-7B: 32 kv heads; Llama-3-8B: 8 kv heads of a 4-query group), rows and context, every setting
runs as the engine runs it: one launch per layer, layers captured in one CUDA graph, each layer with its own KV cache
so that a pass reads more than L2 holds. Reports µs per launch (median of the replays), the largest difference from
the unsplit defaults' output, whether it equals that output bit for bit, and whether the last replay's output of
every layer equals the eager pass's bit for bit (a split launch's merge must not race). Writes JSON to stdout (--out
FILE also writes it there).
"""

import argparse
import itertools
import json
import statistics
import sys

import torch
from graph_timing import capture, emit, replay_ms

from awqd.engine.kv_cache import BLOCK_TOKENS, blocks_for
from awqd.engine.layers.attention import AttentionShape
from awqd.engine.layers.triton_attention import BLOCK_N, STAGES, WARPS, decode_attention_rows

SHAPES = {"llama-2-7b": AttentionShape(32, 32, 128, None), "llama-3-8b": AttentionShape(32, 8, 128, None)}
# (rows, context)
SPLIT_CASES = ((1, 128), (1, 256), (1, 1024), (1, 4096), (2, 256), (4, 256), (8, 256), (8, 2048), (32, 256))
CASES = {
    "engine": SPLIT_CASES,
    "splits": SPLIT_CASES,
    "pipelining": ((1, 256), (1, 2048), (8, 256), (32, 256), (32, 2048), (256, 256)),
    "split-pipelining": ((1, 128), (1, 256), (1, 512), (1, 2048), (4, 256), (8, 256)),
}
DEFAULT = (1, BLOCK_N, STAGES, WARPS)  # (splits, block_n, stages, warps)
ENGINE = (None, None, None, None)  # split_count's choice, at the split step size, stages and warps
SETTINGS = {
    "engine": [ENGINE],
    "splits": [ENGINE, *((s, n, STAGES, WARPS) for s, n in itertools.product((2, 4, 8, 16), (32, 64, 128)))],
    "pipelining": [
        *((1, n, s, WARPS) for n, s in itertools.product((32, 64, 128), (1, 2, 3, 4))),
        (1, BLOCK_N, STAGES, 2),
        (1, BLOCK_N, STAGES, 8),
    ],
    "split-pipelining": [(None, None, s, w) for s, w in itertools.product((1, 2, 3), (1, 2, 4, 8))],
}
L2_PASS_BYTES = 200 * 2**20  # KV read per pass, at least: four times the H200's L2
MAX_LAYERS = 32
REPLAYS = 30


def case_inputs(shape: AttentionShape, rows: int, context: int, device: torch.device, generator: torch.Generator):
    blocks_per_row = blocks_for(context)
    kv_bytes = rows * context * shape.num_kv_heads * shape.head_dim * 2 * 2
    layers = max(2, min(MAX_LAYERS, -(-L2_PASS_BYTES // kv_bytes)))
    blocks = rows * blocks_per_row + 1
    tables = (torch.randperm(blocks - 1, generator=generator)[: rows * blocks_per_row] + 1).int()
    tables = tables.view(rows, blocks_per_row).to(device)
    qkv = torch.randn(rows, (shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim, generator=generator)
    angles = torch.rand(context, shape.head_dim // 2, generator=generator) * 6.3
    cos, sin = (torch.cat((t, t), dim=-1).half().to(device) for t in (angles.cos(), angles.sin()))
    caches = [
        torch.randn(2, blocks, shape.num_kv_heads, BLOCK_TOKENS, shape.head_dim, device=device, dtype=torch.half)
        for _ in range(layers)
    ]
    positions = torch.full((rows,), context - 1, device=device)
    return qkv.half().to(device), positions, tables, cos, sin, caches


def time_setting(inputs, shape: AttentionShape, setting: tuple) -> tuple[float, torch.Tensor, bool]:
    """µs per launch (median over replays of a graph of one launch per layer), the first layer's output, and
    whether the last replay's outputs equal the eager pass's."""
    qkv, positions, tables, cos, sin, caches = inputs
    splits, block_n, stages, warps = setting
    rows = qkv.shape[0]
    counters = None if splits == 1 else torch.zeros(rows * shape.num_kv_heads, dtype=torch.int32, device=qkv.device)

    def one_pass() -> list[torch.Tensor]:
        return [
            decode_attention_rows(
                qkv, positions, tables, cos, sin, c[0], c[1], shape, counters, splits, block_n, stages, warps
            )
            for c in caches
        ]

    eager = [out.clone() for out in one_pass()]  # compiles, and rewrites each row's own position with the same k, v
    graph, replayed = capture(one_pass)
    times = [ms * 1000 / len(caches) for ms in replay_ms(graph, REPLAYS)]
    stable = all(torch.equal(a, b) for a, b in zip(eager, replayed, strict=True))
    return statistics.median(times), eager[0], stable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", choices=sorted(SETTINGS), default="splits")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    device = torch.device("cuda")
    rows_out = []
    for (model, shape), (rows, context) in itertools.product(SHAPES.items(), CASES[args.sweep]):
        inputs = case_inputs(shape, rows, context, device, torch.Generator().manual_seed(rows * 7919 + context))
        default_us, default_out, _ = time_setting(inputs, shape, DEFAULT)
        for setting in SETTINGS[args.sweep]:
            splits, block_n, stages, warps = setting
            row = {"model": model, "rows": rows, "context": context, "splits": splits, "block_n": block_n}
            row |= {"stages": stages, "warps": warps, "default_us": round(default_us, 2)}
            try:
                us, out, stable = time_setting(inputs, shape, setting)
            except Exception as error:  # e.g. a setting whose pipeline buffers exceed shared memory
                row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
            else:
                row["us"], row["vs_default"] = round(us, 2), round(us / default_us, 3)
                row["equals_default"] = torch.equal(out, default_out)
                row["max_abs_diff"] = (out.float() - default_out.float()).abs().max().item()
                row["replay_equals_eager"] = stable
            rows_out.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        del inputs
        torch.cuda.empty_cache()
    emit({"device": torch.cuda.get_device_name(device), "defaults": list(DEFAULT), "rows": rows_out}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
