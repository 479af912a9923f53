"""The engine's Triton layer kernels (awqd.engine.layers) against their torch versions, under the Triton
interpreter on the CPU, in a subprocess (TRITON_INTERPRET=1 must be set before triton is imported).

Each case prints one JSON line. Besides closeness to torch, the attention cases check what decode relies on: the
kernel stores the new k and v where the torch path does (on the GPU, rotary may differ from torch's by a unit in
the last place; under the interpreter it is exact), a row's output is bitwise the same alone and inside a batch
whose other rows sit at other positions, and the same whatever stale block ids its table row holds past the
blocks its sequence owns (a CUDA graph's static table keeps what an earlier, longer step copied there). Split
launches (several programs per row and head, merged by the last to arrive) are as close to torch, store the same
k and v, give the same result on a second launch, and leave their counters at zero.
--batch-invariant's two matrix products (the fixed-tile AWQ GEMM and the Triton lm_head) are checked the same
way: close to the reference, and each row bitwise the same whatever the row count. The GEMV's gated form equals
the GEMV followed by the gating kernel, bit for bit. Its deferred norm (the residual add in o's launch, 1/rms in
gate_up's) gives the residual stream bit for bit, and gate_up's output within TOLERANCE of the norm kernel's path.

bf16 runs on the GPU only (`python tests/engine/test_engine_layers.py --device cuda`, in bench/engine_check.py's run):
the interpreter's float32 -> bf16 conversions do not round to nearest as the GPU does.
"""

import argparse
import json
import os
import subprocess
import sys

import torch

SUBPROCESS_TIMEOUT_S = 240
# (heads, kv_heads, head_dim, sliding window, rows' positions): MHA, grouped queries, a window, padding at 0
ATTENTION_CASES = (
    (4, 4, 32, None, (0, 5, 70, 130, 15, 16)),  # 15 and 16: the last position of a block, the first of the next
    (8, 2, 16, None, (3, 64, 65)),
    (4, 1, 64, 48, (100, 47, 0)),
    (6, 3, 24, None, (9, 140)),  # head_dim not a power of two
)
INTERPRETER_DTYPES = ("float16", "float32")
GPU_DTYPES = ("float16", "bfloat16")
TOLERANCE = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 1e-5}
LAST_PLACE = {"float16": 2**-10, "bfloat16": 2**-7, "float32": 2**-23}


def shuffled_tables(sequences: int, width: int, used: int, generator) -> tuple[torch.Tensor, int]:
    """Block tables as a running cache leaves them: each sequence's first `used` blocks drawn at random from a pool
    with spare blocks, the rest of its row on the padding block 0. Returns the tables and the pool's size."""
    from awqd.engine.kv_cache import PADDING_BLOCK

    blocks = sequences * used + 5
    drawn = torch.randperm(blocks, generator=generator)[: sequences * used] + 1
    tables = torch.full((sequences, width), PADDING_BLOCK, dtype=torch.int32)
    tables[:, :used] = drawn.view(sequences, used).int()
    return tables, blocks + 1


def attention_case(heads, kv_heads, head_dim, window, positions, dtype, device, seed):
    from awqd.engine.kv_cache import BLOCK_TOKENS, blocks_for
    from awqd.engine.layers.attention import AttentionShape, decode_attention_torch
    from awqd.engine.layers.triton_attention import decode_attention_rows

    generator = torch.Generator().manual_seed(seed)
    shape = AttentionShape(heads, kv_heads, head_dim, window)
    rows, context = len(positions), 256
    tables, blocks = shuffled_tables(rows, blocks_for(context), blocks_for(max(positions) + 1), generator)
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * head_dim, generator=generator).to(dtype)
    angles = torch.rand(context, head_dim // 2, generator=generator) * 6.3
    cos, sin = (torch.cat((t, t), dim=-1).to(dtype) for t in (angles.cos(), angles.sin()))
    cache = torch.randn(2, blocks, kv_heads, BLOCK_TOKENS, head_dim, generator=generator).to(dtype)
    qkv, cos, sin, cache, tables = (t.to(device) for t in (qkv, cos, sin, cache, tables))
    positions = torch.tensor(positions, device=device)
    torch_cache, triton_cache = cache.clone(), cache.clone()
    expected = decode_attention_torch(qkv, positions, tables, cos, sin, torch_cache[0], torch_cache[1], shape)
    got = decode_attention_rows(qkv, positions, tables, cos, sin, triton_cache[0], triton_cache[1], shape, None)
    alone = decode_attention_rows(
        qkv[-1:], positions[-1:], tables[-1:], cos, sin, triton_cache[0], triton_cache[1], shape, None
    )
    # A captured graph's static table keeps, past each row's own blocks, whatever an earlier, longer step left.
    stale = tables.clone()
    own = [blocks_for(int(position) + 1) for position in positions]
    for row, blocks_owned in enumerate(own):
        stale[row, blocks_owned:] = torch.randint(1, blocks, (stale.shape[1] - blocks_owned,), generator=generator)
    stale_cache = cache.clone()
    with_stale = decode_attention_rows(qkv, positions, stale, cos, sin, stale_cache[0], stale_cache[1], shape, None)
    return {
        "max_error": (got.float() - expected.float()).abs().max().item(),
        "cache_error": relative_error(triton_cache, torch_cache),
        "alone_equals_batched": torch.equal(alone[0], got[-1]),
        "stale_tail_ignored": torch.equal(with_stale, got) and torch.equal(stale_cache, triton_cache),
        "split": split_cases(qkv, positions, tables, cos, sin, cache, triton_cache, expected, shape),
    }


def split_cases(qkv, positions, tables, cos, sin, cache, unsplit_cache, expected, shape) -> dict:
    """A split launch of 4 programs per (row, kv head), each program stepping 16 positions (so most rows'
    steps spread over every program, and row 0's position 0 leaves all but the first idle), and the launch the
    engine makes (splits by row count, the split step size)."""
    from awqd.engine.layers.triton_attention import decode_attention_rows

    errors, repeatable, clean = [], True, True
    for splits, block_n in ((4, 16), (None, None)):
        counters = torch.zeros(qkv.shape[0] * shape.num_kv_heads, dtype=torch.int32, device=qkv.device)
        split_cache = cache.clone()
        runs = [
            decode_attention_rows(
                qkv, positions, tables, cos, sin, split_cache[0], split_cache[1], shape, counters, splits, block_n
            )
            for _ in range(2)
        ]
        errors.append((runs[0].float() - expected.float()).abs().max().item())
        repeatable &= torch.equal(runs[0], runs[1]) and torch.equal(split_cache, unsplit_cache)
        clean &= not counters.any().item()
    return {"max_error": max(errors), "repeatable_and_same_cache": repeatable, "counters_zero": clean}


ROTATE_AND_STORE_CASES = ((4, 4, 32), (8, 2, 24), (16, 8, 16))  # (heads, kv heads, head_dim): 4, 2, 8 per program


def rotate_and_store_case(heads, kv_heads, head_dim, dtype, device, seed):
    """Prefill's rotary and KV store: three prompts' rows (positions restart per prompt, two cross blocks) into
    their sequences' shuffled blocks."""
    from awqd.engine.kv_cache import BLOCK_TOKENS
    from awqd.engine.layers.attention import AttentionShape, rotate_and_store_torch
    from awqd.engine.layers.triton_attention import rotate_and_store_rows

    generator = torch.Generator().manual_seed(seed)
    shape = AttentionShape(heads, kv_heads, head_dim, None)
    lengths = (21, 40, 3)
    rows = sum(lengths)
    tables, blocks = shuffled_tables(len(lengths), 4, 3, generator)
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * head_dim, generator=generator).to(device, dtype)
    angles = torch.rand(64, head_dim // 2, generator=generator) * 6.3
    cos, sin = (torch.cat((t, t), dim=-1).to(device, dtype) for t in (angles.cos(), angles.sin()))
    sequences = torch.tensor([s for s, n in enumerate(lengths) for _ in range(n)], device=device)
    positions = torch.tensor([p for n in lengths for p in range(n)], device=device)
    tables = tables.to(device)
    cache = torch.zeros(2, blocks, kv_heads, BLOCK_TOKENS, head_dim, dtype=dtype, device=device)
    torch_cache, triton_cache = cache.clone(), cache.clone()
    expected = rotate_and_store_torch(qkv, sequences, positions, tables, cos, sin, *torch_cache, shape)
    got = rotate_and_store_rows(qkv, sequences, positions, tables, cos, sin, *triton_cache, shape)
    return {
        "errors": {
            **{name: relative_error(g, e) for name, g, e in zip("qkv", got, expected, strict=True)},
            "cache": relative_error(triton_cache, torch_cache),
        }
    }


def norm_and_activation_cases(dtype, device, seed):
    from awqd.engine.layers.activation import silu_and_mul_torch
    from awqd.engine.layers.norm import add_rms_norm_torch
    from awqd.engine.layers.triton_activation import silu_and_mul_rows
    from awqd.engine.layers.triton_norm import add_rms_norm_rows

    generator = torch.Generator().manual_seed(seed)
    results = {}
    for hidden in (64, 200):
        x, delta = (torch.randn(3, hidden, generator=generator).to(device, dtype) for _ in range(2))
        weight = (torch.rand(hidden, generator=generator) + 0.5).to(device, dtype)
        for name, added in (("norm", None), ("add_norm", delta)):
            (x_torch, normed_torch), (x_triton, normed_triton) = (
                f(x, added, weight, 1e-5) for f in (add_rms_norm_torch, add_rms_norm_rows)
            )
            results[f"{name}_{hidden}"] = max(
                relative_error(x_triton, x_torch), relative_error(normed_triton, normed_torch)
            )
        gate_up = torch.randn(3, 2 * hidden, generator=generator).to(device, dtype) * 3
        results[f"silu_and_mul_{hidden}"] = relative_error(silu_and_mul_rows(gate_up), silu_and_mul_torch(gate_up))
    return results


def gated_gemv_case(dtype, device, seed):
    """The engine's gating of a gate_up layer routed to awqd's GEMV, which gates in its epilogue: bitwise what the
    GEMV and then the gating kernel give, and close to gating the float32 reference."""
    from awqd.engine.layers.activation import silu_and_mul_torch
    from awqd.engine.model import gate, through_router
    from awqd.kernels.base import Dispatch
    from awqd.kernels.candidates.awqd_triton_gemv import AwqdTritonGemv
    from awqd.kernels.linear import AwqLinear, KernelRouter
    from awqd.kernels.measure import random_weight
    from awqd.quant.reference import reference_linear

    generator = torch.Generator().manual_seed(seed)
    weight = random_weight(2 * 96, 256, 64, torch.device("cpu"), generator, bias=True)
    gate_up = AwqLinear(weight, KernelRouter(Dispatch.single(AwqdTritonGemv())), torch.device(device))
    results = {}
    for rows in (1, 3):
        x = torch.randn(rows, 256, generator=generator).to(device, dtype)
        fused = gate(gate_up, x, through_router)
        results[f"{rows} rows"] = {
            "fused": gate_up.forward_gated(x) is not None,
            "equals_gemv_then_gating": torch.equal(fused, gate(gate_up, x, own_project)),
            "relative_error": relative_error(
                fused.cpu(), silu_and_mul_torch(reference_linear(x.float().cpu(), weight))
            ),
        }
    return results


def own_project(linear, rows):
    """A caller's own project: the engine then runs the layer as it is, and the norm and gating kernels after it."""
    return linear(rows)


def deferred_norm_case(dtype, device, seed):
    """The engine's residual add and norm between o and gate_up, both routed to awqd's GEMV: the norm deferred
    (no norm launch) gives the residual stream bit for bit, and gate_up's output close to the norm kernel's path.
    Told not to defer (the last layer's down, before lm_head), it runs the norm kernel."""
    from awqd.engine.model import add_norm_after, gate, through_router
    from awqd.kernels.base import Dispatch
    from awqd.kernels.candidates.awqd_triton_gemv import AwqdTritonGemv
    from awqd.kernels.linear import AwqLinear, KernelRouter
    from awqd.kernels.measure import random_weight

    generator = torch.Generator().manual_seed(seed)
    router = KernelRouter(Dispatch.single(AwqdTritonGemv()))
    o_proj, gate_up = (
        AwqLinear(random_weight(out, inp, 64, torch.device("cpu"), generator, bias=False), router, torch.device(device))
        for out, inp in ((192, 256), (2 * 128, 192))
    )
    norm = (torch.rand(192, generator=generator) + 0.5).to(device, dtype)
    results = {}
    for rows in (1, 3):
        h, x = (torch.randn(rows, n, generator=generator).to(device, dtype) for n in (256, 192))
        deferred_x, deferred = add_norm_after(o_proj, h, x, norm, 1e-5, through_router, defer=True)
        kept = add_norm_after(o_proj, h, x, norm, 1e-5, through_router, defer=False)[1]
        plain_x, plain = add_norm_after(o_proj, h, x, norm, 1e-5, own_project, defer=True)
        mlp = gate(gate_up, deferred, through_router)
        results[f"{rows} rows"] = {
            "deferred": not isinstance(deferred, torch.Tensor) and isinstance(kept, torch.Tensor),
            "residual_equal": torch.equal(deferred_x, plain_x),
            "relative_error": relative_error(mlp, gate(gate_up, plain, own_project)),
        }
    return results


def batch_invariance_cases(dtype, device, seed):
    """Rows 0..rows-1 computed alone and inside batches of 5 and 37 rows must be bitwise equal."""
    from awqd.engine.layers.triton_logits import logits_rows
    from awqd.kernels.candidates.awqd_triton_gemm import AwqdTritonGemmBatchInvariant
    from awqd.kernels.measure import random_weight
    from awqd.quant.reference import dequantize

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(37, 256, generator=generator).to(device, dtype)
    weight = random_weight(96, 256, 64, torch.device("cpu"), generator, bias=True)
    kernel = AwqdTritonGemmBatchInvariant()
    packed = kernel.prepare(weight, torch.device(device))
    reference = x.float() @ dequantize(weight, torch.float32).to(device).T + weight.bias.to(device).float()
    head = (torch.randn(200, 256, generator=generator) * 0.05).to(device, dtype)
    products = {
        "gemm": (lambda rows: kernel.forward(rows, packed), reference),
        "logits": (lambda rows: logits_rows(rows, head), x.float() @ head.float().T),
    }
    results = {}
    for name, (product, expected) in products.items():
        outputs = [product(x[:rows]) for rows in (1, 5, 37)]
        results[name] = {
            "relative_error": relative_error(outputs[-1], expected),
            "invariant": all(torch.equal(out, outputs[-1][: out.shape[0]]) for out in outputs),
        }
    return results


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest error, in units of the largest expected magnitude (at least 1)."""
    return ((got.float() - expected.float()).abs().max() / expected.float().abs().max().clamp(min=1)).item()


def run_cases(device: str) -> list[dict]:
    cases = []
    for dtype in INTERPRETER_DTYPES if device == "cpu" else GPU_DTYPES:
        torch_dtype = getattr(torch, dtype)
        for index, case in enumerate(ATTENTION_CASES):
            result = attention_case(*case, torch_dtype, device, seed=index)
            cases.append({"case": f"attention {case}", "dtype": dtype, **result})
        for case in ROTATE_AND_STORE_CASES:
            cases.append(
                {
                    "case": f"rotate and store {case}",
                    "dtype": dtype,
                    **rotate_and_store_case(*case, torch_dtype, device, 5),
                }
            )
        errors = norm_and_activation_cases(torch_dtype, device, seed=7)
        cases.append({"case": "norm/activation", "dtype": dtype, "errors": errors})
        if dtype != "float32":  # the AWQ kernels take fp16 and bf16 activations
            cases.append({"case": "batch invariance", "dtype": dtype, **batch_invariance_cases(torch_dtype, device, 9)})
            cases.append({"case": "gated gemv", "dtype": dtype, "rows": gated_gemv_case(torch_dtype, device, 11)})
            cases.append({"case": "deferred norm", "dtype": dtype, "rows": deferred_norm_case(torch_dtype, device, 13)})
    return cases


def failures(cases: list[dict]) -> list[dict]:
    """Norms and gating round as torch does: within a few units in the last place of the dtype. Attention sums in
    another order (online softmax), within TOLERANCE; its cache writes are exact and rows batch-invariant."""
    bad = []
    for case in cases:
        if "errors" in case:
            ok = all(error <= 8 * LAST_PLACE[case["dtype"]] for error in case["errors"].values())
        elif case["case"] == "gated gemv":
            ok = all(
                r["fused"] and r["equals_gemv_then_gating"] and r["relative_error"] <= TOLERANCE[case["dtype"]]
                for r in case["rows"].values()
            )
        elif case["case"] == "deferred norm":
            ok = all(
                r["deferred"] and r["residual_equal"] and r["relative_error"] <= TOLERANCE[case["dtype"]]
                for r in case["rows"].values()
            )
        elif case["case"] == "batch invariance":
            products = (case["gemm"], case["logits"])
            ok = all(p["invariant"] and p["relative_error"] <= 4 * TOLERANCE[case["dtype"]] for p in products)
        else:
            ok = (
                case["max_error"] <= TOLERANCE[case["dtype"]]
                and case["cache_error"] <= 2 * LAST_PLACE[case["dtype"]]
                and case["alone_equals_batched"]
                and case["stale_tail_ignored"]
                and case["split"]["max_error"] <= TOLERANCE[case["dtype"]]
                and case["split"]["repeatable_and_same_cache"]
                and case["split"]["counters_zero"]
            )
        if not ok:
            bad.append(case)
    return bad


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    for case in run_cases(parser.parse_args().device):
        print(json.dumps(case), flush=True)


def test_layer_kernels_match_torch_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cases = [json.loads(line) for line in done.stdout.splitlines()]
    per_dtype = len(ATTENTION_CASES) + len(ROTATE_AND_STORE_CASES) + 1  # and one norm/activation case
    # and fp16's batch invariance, gated GEMV and deferred norm
    assert len(cases) == len(INTERPRETER_DTYPES) * per_dtype + 3
    assert failures(cases) == []


if __name__ == "__main__":
    main()
