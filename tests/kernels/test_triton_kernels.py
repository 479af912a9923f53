"""awqd's Triton kernels against the float32 reference, on the CPU under the Triton interpreter.

TRITON_INTERPRET=1 must be set before triton is imported, and other tests in this session import triton
normally, so the matrix runs in subprocesses (this file run as a script, one per kernel, both at once) that
print one JSON line per case. Shapes are tiny: the interpreter runs each program in numpy.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from awqd.errors import FailedPrecondition
from awqd.kernels import registry
from awqd.kernels.measure import random_weight

SHAPES = ((64, 128), (96, 256), (128, 512))  # (out, in)
GROUP_SIZES = (32, 64, 128)
DTYPES = ("float16", "bfloat16")
# Batches per (kernel, shape): every weight case runs batch 1 and the middle shape runs more. The interpreter runs
# each program in numpy, and the GEMV has one program per activation row, so its larger batches are few.
BATCHES = {
    "awqd_triton_gemv": {(64, 128): (1,), (96, 256): (1, 3), (128, 512): (1,)},
    "awqd_triton_gemm": {(64, 128): (1, 16), (96, 256): (1, 3, 16, 40), (128, 512): (1, 16)},
    "awqd_triton_skinny": {(64, 128): (1, 17), (96, 256): (1, 3, 16, 17, 33), (128, 512): (1, 33)},
    "awqd_triton_dequant_cublas": {(64, 128): (1,), (96, 256): (1, 40), (128, 512): (16,)},
}
# The dequantize kernel has nothing to tune.
TUNED_KERNELS = ("awqd_triton_gemv", "awqd_triton_gemm", "awqd_triton_skinny")
# skinny's TMA loads need 16-byte aligned activations; the GEMV reads them as int32 pairs of fp16 or bf16.
MISALIGNED_INPUT_KERNELS = ("awqd_triton_skinny", "awqd_triton_gemv")
GEMV_MANY_ROWS = ((64, 128), 128, 16)  # one weight, zero point on, both dtypes
# The GEMV's gated form (silu(gate) * up of a [gate; up] weight), both dtypes: (shape, group, batch, tile or None).
# 96 rows on a 64-row tile leave a program with 16 of its 32 columns; 80 rows on 8-row tiles, 10 whole programs.
GEMV_GATED = (
    ((96, 256), 64, 1, None),
    ((128, 512), 128, 3, None),
    ((96, 256), 32, 2, (64, 128, 1, 2)),
    ((80, 128), 32, 1, (8, 64, 3, 1)),  # split-K 3 asked for: gated runs unsplit
)
# The GEMV's deferred norm, both dtypes: (shape, group, batch, tile or None). As o or down, it adds its output to
# the residual stream (unsplit, whatever the tile asks); as the next layer, it runs on the weighted rows, scaled by
# 1/rms. The split-K tile checks that each slice's partial sums are scaled before they are added.
GEMV_DEFERRED_NORM = (
    ((96, 256), 64, 1, None),
    ((128, 512), 128, 3, None),
    ((80, 128), 32, 2, (8, 64, 3, 1)),
)
SUBPROCESS_TIMEOUT_S = 240


def case_weight(out_features: int, in_features: int, group_size: int, zero_point: bool, bias: bool, seed: int):
    generator = torch.Generator().manual_seed(seed)
    weight = random_weight(out_features, in_features, group_size, torch.device("cpu"), generator, bias=bias)
    if not zero_point:
        weight.zeros.fill_(8)  # symmetric checkpoints store zero 8
    return weight


def forced_configs(kernel: str) -> list[tuple[tuple[int, int], int, int, object]]:
    """Non-default tilings: split-K with uneven slices, M and N tiles, masked tails: (shape, g, batch, config)."""
    if kernel == "awqd_triton_gemv":
        from awqd.kernels.triton.gemv import GemvConfig

        # Whole K steps with split-K 3 (the last slice empty), a step longer than K (masked), a step shorter than the
        # group, and a row tail (96 = 64 + 32: clamped rows) with whole steps.
        return [
            ((96, 256), 32, 3, GemvConfig(8, 64, 3)),
            ((96, 256), 32, 1, GemvConfig(16, 512, 1)),
            ((128, 512), 128, 7, GemvConfig(8, 256, 1, num_warps=2)),
            ((128, 512), 128, 2, GemvConfig(16, 64, 2, num_warps=2)),
            ((96, 256), 64, 2, GemvConfig(64, 128, 2, num_warps=2)),
        ]
    if kernel == "awqd_triton_dequant_cublas":
        from awqd.kernels.triton.dequant import DequantConfig

        # A 64-column tile across two groups; K in one whole tile; a tile wider than K with a row tail (masked).
        return [
            ((96, 256), 32, 3, DequantConfig(16, 64, 4)),
            ((128, 512), 64, 5, DequantConfig(64, 512, 8)),
            ((96, 256), 32, 2, DequantConfig(64, 512, 4)),
        ]
    if kernel == "awqd_triton_skinny":
        from awqd.kernels.triton.skinny import SkinnyConfig

        # TMA and pointer loads; split-K 1, uneven 3, 4 and more slices than K steps; BLOCK_K above the group
        # (capped); N and M tails.
        return [
            ((96, 256), 32, 3, SkinnyConfig(16, 64, 128, 3, 4, 2)),
            ((96, 256), 64, 17, SkinnyConfig(32, 64, 64, 1, 4, 2, tma=False)),
            ((128, 512), 128, 33, SkinnyConfig(64, 32, 64, 4, 4, 3)),
            ((128, 512), 32, 5, SkinnyConfig(16, 256, 32, 3, 8, 2, tma=False)),
            ((64, 128), 128, 40, SkinnyConfig(16, 128, 128, 3, 4, 2)),  # one K step: two empty slices
            ((64, 128), 64, 2, SkinnyConfig(16, 64, 64, 4, 4, 2, tma=False)),
            # scale-first: the dequantized tile into one chained accumulator, with TMA and pointer loads
            ((96, 256), 32, 70, SkinnyConfig(64, 64, 32, 3, 4, 3, scale_first=True)),
            ((128, 512), 64, 17, SkinnyConfig(32, 128, 64, 1, 4, 2, tma=False, scale_first=True)),
        ]
    from awqd.kernels.triton.gemm import GemmConfig

    return [
        ((96, 256), 32, 40, GemmConfig(16, 32, 32, 1, 4, 1)),
        ((96, 256), 64, 40, GemmConfig(16, 64, 32, 3, 4, 1)),
        ((128, 512), 128, 5, GemmConfig(16, 64, 128, 4, 4, 1)),
        ((96, 256), 32, 3, GemmConfig(16, 32, 64, 3, 4, 1, prefetch=True)),
        ((128, 512), 64, 40, GemmConfig(32, 64, 64, 1, 4, 1, prefetch=True)),
    ]


def run_matrix(kernel: str) -> None:
    """Runs in the subprocess: prints one JSON line per case."""
    from awqd.errors import AwqdError
    from awqd.kernels.measure import relative_error
    from awqd.kernels.triton.layout import TOLERANCES, pack_awqd_w4
    from awqd.quant.reference import reference_linear

    candidate = registry.build(kernel)
    launch = candidate.kernel().launch
    cpu = torch.device("cpu")
    seed = 0

    def check(case: str, weight, packed, x: torch.Tensor, config=None, gated: bool = False) -> None:
        ref = reference_linear(x.float(), weight)
        if gated:
            gate, up = ref.chunk(2, dim=-1)
            ref = torch.nn.functional.silu(gate) * up
        try:
            if config is None:
                out = (candidate.forward_gated if gated else candidate.forward)(x, packed)
            else:
                kernel = candidate.kernel()
                out = (kernel.launch_gated if gated else launch)(x.contiguous(), packed, config).reshape(ref.shape)
            error = relative_error(out, ref)
            # Gating rounds gate, silu(gate), up and their product: the interpreter's truncating bf16 exceeds 1e-2.
            tolerance = TOLERANCES[x.dtype] * (2 if gated else 1)
            ok = out.dtype == x.dtype and out.shape == ref.shape and error <= tolerance
            detail = f"{out.dtype} {list(out.shape)} relative error {error:.3g} (tolerance {tolerance})"
        except Exception as error:
            ok, detail = False, f"{type(error).__name__}: {error}"
        print(json.dumps({"case": case, "ok": ok, "detail": detail}), flush=True)

    for (out_features, in_features), batches in BATCHES[kernel].items():
        for group_size in GROUP_SIZES:
            for zero_point in (True, False):
                seed += 1
                weight = case_weight(out_features, in_features, group_size, zero_point, bias=seed % 2 == 1, seed=seed)
                packed = candidate.prepare(weight, cpu)
                for dtype in DTYPES:
                    for batch in batches:
                        x = torch.randn(batch, in_features, generator=torch.Generator().manual_seed(seed))
                        case = f"[{out_features}x{in_features}] g{group_size} zp={zero_point} {dtype} batch {batch}"
                        check(case, weight, packed, x.to(getattr(torch, dtype)))
    if kernel == "awqd_triton_gemv":
        (out_features, in_features), group_size, batch = GEMV_MANY_ROWS
        seed += 1
        weight = case_weight(out_features, in_features, group_size, True, bias=True, seed=seed)
        packed = candidate.prepare(weight, cpu)
        for dtype in DTYPES:
            x = torch.randn(batch, in_features, generator=torch.Generator().manual_seed(seed))
            check(
                f"[{out_features}x{in_features}] g{group_size} {dtype} batch {batch}",
                weight,
                packed,
                x.to(getattr(torch, dtype)),
            )
    if kernel == "awqd_triton_gemv":
        from awqd.kernels.triton.gemv import GemvConfig

        for (out_features, in_features), group_size, batch, tile in GEMV_GATED:
            seed += 1
            weight = case_weight(out_features, in_features, group_size, True, bias=True, seed=seed)
            packed = candidate.prepare(weight, cpu)
            for dtype in DTYPES:
                x = torch.randn(batch, in_features, generator=torch.Generator().manual_seed(seed))
                config = GemvConfig(*tile) if tile else None
                case = f"gated [{out_features}x{in_features}] g{group_size} {dtype} batch {batch} {config}"
                check(case, weight, packed, x.to(getattr(torch, dtype)), config, gated=True)
    seed += 1
    weight = case_weight(96, 256, 64, True, bias=True, seed=seed)
    x = torch.randn(2, 5, 256, generator=torch.Generator().manual_seed(seed)).to(torch.float16)
    check("[96x256] g64 3-D input [2, 5, 256]", weight, candidate.prepare(weight, cpu), x)
    if kernel in MISALIGNED_INPUT_KERNELS:  # a view 2 bytes into a buffer
        buffer = torch.randn(3 * 256 + 1, generator=torch.Generator().manual_seed(seed)).to(torch.float16)
        check(
            "[96x256] g64 activations not 16-byte aligned",
            weight,
            candidate.prepare(weight, cpu),
            buffer[1:].view(3, 256),
        )
    for (out_features, in_features), group_size, batch, config in forced_configs(kernel):
        seed += 1
        weight = case_weight(out_features, in_features, group_size, True, bias=True, seed=seed)
        for dtype in DTYPES:
            x = torch.randn(batch, in_features, generator=torch.Generator().manual_seed(seed)).to(getattr(torch, dtype))
            check(
                f"[{out_features}x{in_features}] g{group_size} {dtype} batch {batch} {config}",
                weight,
                pack_awqd_w4(weight, cpu),
                x,
                config,
            )
    if kernel == "awqd_triton_skinny":
        check_merged_split_k(forced_configs(kernel), seed)
    if kernel == "awqd_triton_gemv":
        check_deferred_norm(seed)

    rejections = {
        "group size 16": case_weight(64, 128, 16, True, False, 1),
        "group size 256": case_weight(64, 512, 256, True, False, 1),
    }
    wrong_groups = case_weight(64, 128, 32, True, False, 1)
    wrong_groups.group_size = 64  # zeros/scales still hold 4 groups
    rejections["zeros/scales for another group size"] = wrong_groups
    for case, weight in rejections.items():
        try:
            candidate.prepare(weight, cpu)
            ok, detail = False, "prepare accepted it"
        except FailedPrecondition as error:
            ok, detail = True, str(error)
        print(json.dumps({"case": f"rejects {case}", "ok": ok, "detail": detail}), flush=True)
    packed = candidate.prepare(case_weight(64, 128, 32, True, False, 1), cpu)
    for case, x in {"fp32 activations": torch.randn(2, 128), "wrong in_features": torch.randn(2, 64).half()}.items():
        try:
            candidate.forward(x, packed)
            ok, detail = False, "forward accepted it"
        except AwqdError as error:
            ok, detail = error.code.name == "INVALID_ARGUMENT", f"{type(error).__name__}: {error}"
        print(json.dumps({"case": f"forward rejects {case}", "ok": ok, "detail": detail}), flush=True)
    if kernel == "awqd_triton_gemv":  # a gated weight is [gate; up]: an odd row count cannot be one
        odd = candidate.prepare(case_weight(65, 128, 32, True, False, 1), cpu)
        try:
            candidate.forward_gated(torch.randn(1, 128).half(), odd)
            ok, detail = False, "forward_gated accepted 65 rows"
        except AwqdError as error:
            ok = error.code.name == "INVALID_ARGUMENT" and "odd" in str(error)
            detail = f"{type(error).__name__}: {error}"
        print(json.dumps({"case": "forward_gated rejects an odd row count", "ok": ok, "detail": detail}), flush=True)


def merged_cases(configs: list) -> list:
    return [case for case in configs if case[3].split_k > 1]


def check_merged_split_k(configs: list, seed: int) -> None:
    """Runs in the subprocess: each split forced tile again, holding split counters, so that the K slice that
    completes a tile last adds the partials. It must launch no reduce, give the reduce launch's output bit for bit
    (the same sums in the same order) and leave every counter zero."""
    from awqd.kernels import split_counters
    from awqd.kernels.triton import skinny
    from awqd.kernels.triton.layout import pack_awqd_w4

    cpu = torch.device("cpu")
    launch = registry.build("awqd_triton_skinny").kernel().launch
    reduce_launches = []
    finish_split_k = skinny.finish_split_k
    skinny.finish_split_k = lambda partial, *rest: reduce_launches.append(partial) or finish_split_k(partial, *rest)
    for (out_features, in_features), group_size, batch, unmerged in merged_cases(configs):
        config = dataclasses.replace(unmerged, merge=True)
        seed += 1
        weight = case_weight(out_features, in_features, group_size, True, bias=True, seed=seed)
        packed = pack_awqd_w4(weight, cpu)
        x = torch.randn(batch, in_features, generator=torch.Generator().manual_seed(seed)).half()
        counters = split_counters.new(cpu)
        with split_counters.held(counters):
            merged = launch(x, packed, config)
        merged_reduces = len(reduce_launches)
        reduced = launch(x, packed, config)
        ok = merged_reduces == 0 and len(reduce_launches) == 1 and torch.equal(merged, reduced) and not counters.any()
        detail = (
            f"reduce launches {merged_reduces} merged, {len(reduce_launches) - merged_reduces} unheld; max difference "
            f"{(merged.float() - reduced.float()).abs().max():.3g}; counters left {counters.sum()}"
        )
        reduce_launches.clear()
        print(json.dumps({"case": f"merged split-K {config}", "ok": ok, "detail": detail}), flush=True)


def check_deferred_norm(seed: int) -> None:
    """Runs in the subprocess: the GEMV's two deferred-norm forms.
    - gemv_add_norm: the residual stream plus the GEMV's output, bit for bit as the engine's norm kernel adds them;
      the weighted sum within a last place of the sum times the norm weight; the partial sums of squares adding up
      to the sum's;
    - gemv and gemv_gated on a deferred norm: within tolerance of the reference on the normed rows."""
    from awqd.engine.layers.triton_norm import add_rms_norm_rows
    from awqd.kernels.measure import deferred_input, norm_weight_for, relative_error, rms_norm_reference
    from awqd.kernels.triton.gemv import DEFAULT_TILE, GemvConfig, gemv, gemv_add_norm, gemv_gated
    from awqd.kernels.triton.layout import TOLERANCES, pack_awqd_w4
    from awqd.quant.reference import reference_linear

    cpu = torch.device("cpu")
    for (out_features, in_features), group_size, batch, tile in GEMV_DEFERRED_NORM:
        seed += 1
        weight = case_weight(out_features, in_features, group_size, True, bias=True, seed=seed)
        packed = pack_awqd_w4(weight, cpu)
        config = GemvConfig(*tile) if tile else None
        for dtype in DTYPES:
            generator = torch.Generator().manual_seed(seed)
            x = torch.randn(batch, in_features, generator=generator).to(getattr(torch, dtype))
            residual = (4 * torch.randn(batch, out_features, generator=generator)).to(x.dtype)
            norm_weight = norm_weight_for(out_features, x.dtype, cpu)
            total, norm = gemv_add_norm(x, packed, residual, norm_weight, 1e-5, config)
            unsplit = dataclasses.replace(config or DEFAULT_TILE, split_k=1)
            added = add_rms_norm_rows(residual, gemv(x, packed, unsplit), norm_weight, 1e-5)[0]
            weighted = total.float() * norm_weight.float()
            last_place = torch.finfo(x.dtype).eps * weighted.abs().clamp(min=torch.finfo(x.dtype).tiny)  # 0 sums
            weighted_off = ((norm.weighted.float() - weighted).abs() / last_place).max()
            squares_error = (norm.partial_squares.sum(-1) / total.float().pow(2).sum(-1) - 1).abs().max()
            ok = torch.equal(total, added) and weighted_off <= 1 and squares_error <= 1e-5
            detail = (
                f"sum equal {torch.equal(total, added)}; weighted off by {weighted_off:.2f} last places; sum of "
                f"squares off by {squares_error:.3g}"
            )
            case = f"adds a deferred norm [{out_features}x{in_features}] g{group_size} {dtype} batch {batch} {config}"
            print(json.dumps({"case": case, "ok": bool(ok), "detail": detail}), flush=True)

            deferred = deferred_input(x)
            ref = reference_linear(rms_norm_reference(x.float(), norm_weight_for(in_features, x.dtype, cpu)), weight)
            gate, up = ref.chunk(2, dim=-1)
            outputs = {
                "": (gemv(deferred.weighted, packed, config, norm=deferred), ref, TOLERANCES[x.dtype]),
                "gated ": (
                    gemv_gated(deferred.weighted, packed, config, norm=deferred),
                    torch.nn.functional.silu(gate) * up,
                    2 * TOLERANCES[x.dtype],  # as the gated cases above
                ),
            }
            for form, (out, expected, tolerance) in outputs.items():
                error = relative_error(out, expected)
                case = f"{form}on a deferred norm [{out_features}x{in_features}] g{group_size} {dtype} {config}"
                detail = f"relative error {error:.3g} (tolerance {tolerance})"
                print(json.dumps({"case": case, "ok": error <= tolerance, "detail": detail}), flush=True)


def run_tuning(kernel: str) -> None:
    """Runs in the subprocess: boot-time tuning on a tiny shape, then the tuned kernel against the reference."""
    from awqd.kernels.measure import relative_error
    from awqd.kernels.triton import tuning
    from awqd.kernels.triton.layout import TOLERANCES
    from awqd.quant.reference import reference_linear

    tuning.TUNING_REPETITIONS = (1, 1)  # the interpreter only has to rank, not time, the tiles
    cpu = torch.device("cpu")
    candidate = registry.build(kernel)
    shape, buckets = (96, 256), (1, 16)
    stored = candidate.tune([shape, shape], buckets, 64, cpu, time.perf_counter() + 120).table
    tuned_buckets = sorted(int(b) for b in stored.get("96x256", {}))
    expected = [b for b in buckets if candidate.kernel().tuning_space(b)]
    print(json.dumps({"case": "tuned every bucket with a space", "ok": tuned_buckets == expected, "detail": stored}))
    compile_tile, space = candidate.kernel().compile_tile, candidate.kernel().tuning_space
    if compile_tile is not None:  # under the interpreter a compile is only the launch's set-up, on 8 threads
        compiled = tuning.precompile(compile_tile, space, [shape], buckets, 64, cpu, time.perf_counter() + 60)
        tiles = sum(len(space(bucket)) for bucket in buckets)
        print(json.dumps({"case": "precompiled every tile", "ok": compiled == tiles, "detail": f"{compiled}/{tiles}"}))
    installed = tuning.lookup(kernel, cpu, *shape, rows=1)
    stored_first = stored["96x256"][str(expected[0])]
    print(json.dumps({"case": "lookup", "ok": installed.__dict__ == stored_first, "detail": str(installed)}))
    print(json.dumps({"case": "untuned shape", "ok": tuning.lookup(kernel, cpu, 64, 128, 1) is None, "detail": ""}))
    weight = case_weight(*shape, 64, True, bias=True, seed=99)
    packed = candidate.prepare(weight, cpu)
    for rows in (1, 16):
        x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(rows)).half()
        error = relative_error(candidate.forward(x, packed), reference_linear(x.float(), weight))
        ok = error <= TOLERANCES[torch.float16]
        print(json.dumps({"case": f"tuned forward, {rows} rows", "ok": ok, "detail": f"relative error {error:.3g}"}))


@pytest.fixture(scope="module")
def matrix_results() -> dict[str, list[dict]]:
    """Both kernels' matrices, run at once (one subprocess per core)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    processes = {
        kernel: subprocess.Popen(
            [sys.executable, __file__, kernel], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for kernel in [*BATCHES, *(f"tune:{kernel}" for kernel in TUNED_KERNELS)]
    }
    results = {}
    for kernel, process in processes.items():
        stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
        assert process.returncode == 0, f"{kernel} matrix crashed:\n{stderr[-4000:]}"
        results[kernel] = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return results


@pytest.mark.parametrize("kernel", list(BATCHES))
def test_kernel_matches_reference_and_rejects_what_it_cannot_compute(matrix_results, kernel):
    results = matrix_results[kernel]
    batch_cases = sum(len(batches) for batches in BATCHES[kernel].values()) * len(GROUP_SIZES) * 2 * len(DTYPES)
    many_rows = (1 + len(GEMV_GATED)) * len(DTYPES) + 1 if kernel == "awqd_triton_gemv" else 0  # + odd gated rows
    misaligned = int(kernel in MISALIGNED_INPUT_KERNELS)
    merged = len(merged_cases(forced_configs(kernel))) if kernel == "awqd_triton_skinny" else 0
    deferred_norm = 3 * len(GEMV_DEFERRED_NORM) * len(DTYPES) if kernel == "awqd_triton_gemv" else 0
    forced = len(forced_configs(kernel)) * len(DTYPES)
    expected_cases = batch_cases + many_rows + 1 + misaligned + forced + merged + deferred_norm + 5
    assert len(results) == expected_cases
    failures = [f"{r['case']}: {r['detail']}" for r in results if not r["ok"]]
    assert not failures, f"{len(failures)} of {len(results)} cases failed:\n" + "\n".join(failures)
    rejection = next(r for r in results if r["case"] == "rejects group size 16")
    assert "group_size" in rejection["detail"] and "supported: 32, 64, 128" in rejection["detail"]


def test_nibble_order_pairs_consecutive_columns_for_the_gemv():
    """worddot.py pairs nibbles (k, k + 4) in one register with the int32 of columns (2p, 2p + 1), p = 0, 2, 1, 3."""
    from awqd.kernels.triton.layout import NIBBLE_ORDER

    assert [(NIBBLE_ORDER[k], NIBBLE_ORDER[k + 4]) for k in range(4)] == [(0, 1), (4, 5), (2, 3), (6, 7)]


def test_each_word_holds_one_lanes_mma_fragment_as_activation_pairs():
    """Word q of a run of 32 columns holds what lane q (mod 4) holds of the 16-bit MMA A fragment over two k16 steps,
    columns 2q, 2q + 1, 2q + 8 and 2q + 9 of each (skinny.py), as the GEMV's pairs q, q + 4, q + 8, q + 12."""
    from awqd.kernels.triton.layout import FRAGMENT_COLUMNS, NIBBLE_ORDER, PACK_ORDER
    from awqd.quant.packing import pack_int4, unpack_int4

    assert sorted(FRAGMENT_COLUMNS) == list(range(32))
    for q in range(4):
        word = FRAGMENT_COLUMNS[8 * q : 8 * q + 8]
        assert set(word) == {16 * step + 2 * q + 8 * half + p for step in (0, 1) for half in (0, 1) for p in (0, 1)}
        assert [word[2 * i] for i in range(4)] == [2 * (q + 4 * i) for i in range(4)]
        assert [word[2 * i + 1] - word[2 * i] for i in range(4)] == [1] * 4
    columns = torch.arange(64)
    values = torch.stack((columns % 16, columns // 16))  # each column's index in two rows of nibbles
    positions = unpack_int4(pack_int4(values, PACK_ORDER), NIBBLE_ORDER)  # as the kernels' join_words lays them
    assert (positions[0] + 16 * positions[1]).tolist() == [32 * run + c for run in (0, 1) for c in FRAGMENT_COLUMNS]


@pytest.mark.parametrize("kernel", list(BATCHES))
def test_prepare_refuses_cpu_tensors_outside_the_interpreter(monkeypatch, kernel):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(FailedPrecondition, match="device cpu: awqd's Triton kernels run on CUDA devices only"):
        registry.build(kernel).prepare(case_weight(64, 128, 32, True, False, 1), torch.device("cpu"))


@pytest.mark.parametrize("kernel", TUNED_KERNELS)
def test_boot_tuning_picks_installs_and_runs_a_tile_per_shape_and_bucket(matrix_results, kernel):
    results = matrix_results[f"tune:{kernel}"]
    precompiled = registry.build(kernel).kernel().compile_tile is not None
    assert len(results) == 5 + precompiled
    failures = [f"{r['case']}: {r['detail']}" for r in results if not r["ok"]]
    assert not failures, "\n".join(failures)


if __name__ == "__main__":
    mode, _, kernel = sys.argv[1].rpartition(":")
    (run_tuning if mode == "tune" else run_matrix)(kernel)
