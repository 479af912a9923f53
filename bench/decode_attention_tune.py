"""Times the decode-attention kernel's launch settings against its defaults: `python3 bench/decode_attention_tune.py`.

awqd.engine.layers.triton_attention runs one program per (row, kv head), which walks the row's cached positions in
steps of BLOCK_N. At one row that is 32 programs for Llama-2-7B and 8 for Llama-3-8B, each a chain of dependent
loads, so the step loop's software pipelining (stages), its step size and the warps per program are what can move it.

Per model shape (Llama-2-7B: 32 kv heads; Llama-3-8B: 8 kv heads of a 4-query group), rows and context, every setting
runs as the engine runs it: one launch per layer, layers captured in one CUDA graph, each layer with its own KV cache
so that a pass reads more than L2 holds. Reports µs per launch (median of the replays) and whether the setting's
output equals the defaults' bit for bit. Writes JSON to stdout (--out FILE also writes it there).
"""

import argparse
import itertools
import json
import statistics
import sys

import torch

from awqd.engine.kv_cache import BLOCK_TOKENS, blocks_for
from awqd.engine.layers.attention import AttentionShape
from awqd.engine.layers.triton_attention import BLOCK_N, STAGES, WARPS, decode_attention_rows

SHAPES = {"llama-2-7b": AttentionShape(32, 32, 128, None), "llama-3-8b": AttentionShape(32, 8, 128, None)}
CASES = ((1, 256), (1, 2048), (8, 256), (32, 256), (32, 2048), (256, 256))  # (rows, context)
SETTINGS = [
    *itertools.product((32, 64, 128), (1, 2, 3, 4), (WARPS,)),
    (BLOCK_N, STAGES, 2),
    (BLOCK_N, STAGES, 8),
]
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


def time_setting(inputs, shape: AttentionShape, setting: tuple[int, int, int]) -> tuple[float, torch.Tensor]:
    """µs per launch (median over replays of a graph of one launch per layer), and the first layer's output."""
    qkv, positions, tables, cos, sin, caches = inputs
    block_n, stages, warps = setting

    def one_pass() -> list[torch.Tensor]:
        return [
            decode_attention_rows(qkv, positions, tables, cos, sin, c[0], c[1], shape, block_n, stages, warps)
            for c in caches
        ]

    out = one_pass()[0].clone()  # compiles, and rewrites each row's own position with the same k and v
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        one_pass()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        one_pass()
    times = []
    for _ in range(REPLAYS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / len(caches))
    return statistics.median(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    device = torch.device("cuda")
    rows_out = []
    for (model, shape), (rows, context) in itertools.product(SHAPES.items(), CASES):
        inputs = case_inputs(shape, rows, context, device, torch.Generator().manual_seed(rows * 7919 + context))
        default_us, default_out = time_setting(inputs, shape, (BLOCK_N, STAGES, WARPS))
        for setting in SETTINGS:
            block_n, stages, warps = setting
            row = {
                "model": model,
                "rows": rows,
                "context": context,
                "block_n": block_n,
                "stages": stages,
                "warps": warps,
            }
            try:
                us, out = time_setting(inputs, shape, setting)
            except Exception as error:  # e.g. a setting whose pipeline buffers exceed shared memory
                row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
            else:
                row["us"], row["vs_default"] = round(us, 2), round(us / default_us, 3)
                row["equals_default"] = torch.equal(out, default_out)
                row["max_abs_diff"] = (out.float() - default_out.float()).abs().max().item()
            rows_out.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        del inputs
        torch.cuda.empty_cache()
    report = {"device": torch.cuda.get_device_name(device), "defaults": [BLOCK_N, STAGES, WARPS], "rows": rows_out}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as file:
            file.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
