"""w4_mma.cu's kernels on a GPU (issue 15), checked and timed as ../h100-2026-12-05-mma2-sync/mma2_check.py does the
Gluon one: every tile against awqd's reference (eagerly, and in CUDA-graph replay on 4096 x 4096), then µs per
Llama-2-7B linear and ms per layer beside awqd's own kernels (the skinny kernel on every tile of its tuning space, and
at 1 token the GEMV on its) and fp16 cuBLAS, timed as awqd times kernels (CUDA-graph replay, weights rotated past L2).

    PYTHONPATH=<this folder>:<repo> python3 w4_mma_check.py OUT [buckets...]
"""

import json
import sys

import torch
from w4_mma import SHARED_LIMIT, SPILLS, Config, Kernels, check_configs, spilling, timing_configs

from awqd.kernels.measure import (
    measure_copy_bandwidth_gbps,
    per_launch_ms,
    random_layer_weights,
    random_weight,
    relative_error,
    rotation_copies,
    time_dense_baseline,
    time_passes,
)
from awqd.kernels.triton import gemv, skinny
from awqd.kernels.triton.layout import TOLERANCES, pack_awqd_w4
from awqd.quant.reference import dequantize

DEVICE = torch.device("cuda")
SHAPES = ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008))
BUCKETS = (16, 64, 1, 128, 32)
REPETITIONS = (3, 30)
SMS = torch.cuda.get_device_properties(DEVICE).multi_processor_count
SPLITS = (1, 2, 3, 4, 6, 8, 12, 16)
REGISTERS = {line.split()[0]: int(line.split()[2]) for line in SPILLS.read_text().splitlines()}
SKIP = spilling()


TILES = (1, 2, 4, 8)


def k_slice(config: Config, in_features: int, splits: int) -> int:
    steps = in_features // 128
    return 128 * config.kw * -(-steps // (splits * config.kw))


def resident(config: Config, in_features: int, splits: int) -> int:
    """Blocks an SM holds, by registers (allocated per warp in units of 256), shared memory and threads."""
    per_warp = -(-REGISTERS[config.name] * 32 // 256) * 256
    by_registers = 65536 // (per_warp * config.threads // 32)
    by_shared = (SHARED_LIMIT + 1024) // (config.shared_bytes(k_slice(config, in_features, splits)) + 1024)
    return max(0, min(by_registers, by_shared, 2048 // config.threads, 32))


def launches_for(config: Config, out_features: int, in_features: int, count: int = 3) -> list[tuple[int, int]]:
    """(splits, tiles) worth timing: usable splits (the blocks fit, whole KW steps a slice), scored by how full the
    last wave is and then by fewer activation bytes staged per weight byte (more tiles a block)."""
    row_tiles = -(-out_features // config.block_rows)
    scored = []
    for splits in SPLITS:
        slice_ = k_slice(config, in_features, splits)
        if -(-in_features // slice_) != splits or (in_features - (splits - 1) * slice_) % (128 * config.kw):
            continue
        held = resident(config, in_features, splits)
        if held == 0:
            continue
        for tiles in TILES:
            if tiles > row_tiles:
                continue
            blocks = -(-row_tiles // tiles) * splits
            slots = held * SMS
            fill = blocks / (-(-blocks // slots) * slots)
            scored.append((-(min(blocks, slots) / slots) - fill + 0.02 * (8 - tiles), (splits, tiles)))
    return [choice for _, choice in sorted(scored)[:count]]


DENSE = {}  # (id(weight), dtype) -> (weight, its dequantized fp32 form, its bias in fp32)


def reference(x: torch.Tensor, weight) -> torch.Tensor:
    key = (id(weight), x.dtype)
    if key not in DENSE:
        bias = weight.bias.float() if weight.bias is not None else 0.0
        DENSE[key] = (weight, dequantize(weight, x.dtype).float(), bias)
    _, dense, bias = DENSE[key]
    return x.float() @ dense.T + bias


def error(kernels, x, weight, packed, config: Config, splits: int, tiles: int, graph: bool) -> float | str:
    ref = reference(x, weight)
    try:
        if graph:
            kernels(x, packed, config, splits, tiles)
            captured = torch.cuda.CUDAGraph()
            with torch.cuda.graph(captured):
                y = kernels(x, packed, config, splits, tiles)
            y.zero_()
            captured.replay()
        else:
            y = kernels(x, packed, config, splits, tiles)
        torch.cuda.synchronize()
    except Exception as failure:
        return f"{type(failure).__name__}: {str(failure)[:200]}"
    return relative_error(y, ref)


def check(kernels, results: dict, out: str, mts: set[int]) -> None:
    """Every tile: row and token tails (one token too) on a 200 x 512 weight at 1, 2 and 4 splits and 1 to 3 row
    tiles a block, then each Llama linear at its two best launches (graph replay too on 4096 x 4096); its group size
    and dtype as the tile says."""
    generator = torch.Generator(device=DEVICE).manual_seed(1)
    configs = [c for mt in (1, 2, 4, 8, 16) for c in timing_configs(mt)] + check_configs()
    configs = [c for c in configs if c.mt in mts]
    weights = {}
    for config in configs:
        if config.name in SKIP:
            continue
        dtype = torch.bfloat16 if config.bf16 else torch.float16
        tokens = 8 * config.mt
        for out_features, in_features in ((200, 512), *SHAPES):
            key = (out_features, in_features, config.group)
            if key not in weights:
                weight = random_weight(out_features, in_features, config.group, DEVICE, generator, bias=True)
                weights[key] = (weight, pack_awqd_w4(weight, DEVICE))
            weight, packed = weights[key]
            small = out_features == 200
            for m in sorted({tokens, max(1, tokens - 3), 1}) if small else (tokens,):
                x = torch.randn(m, in_features, device=DEVICE, generator=generator).to(dtype)
                chosen = launches_for(config, out_features, in_features, 2)
                for splits, tiles in ((1, 1), (2, 3), (4, 2)) if small else chosen:
                    for graph in (False, True) if out_features == in_features == 4096 else (False,):
                        err = error(kernels, x, weight, packed, config, splits, tiles, graph)
                        ok = isinstance(err, float) and err < TOLERANCES[dtype]
                        case = [config.name, m, out_features, in_features, splits, tiles, graph, err, ok]
                        results["check"].append(case)
                        if not ok:
                            print("FAIL", *case, flush=True)
    passed = sum(case[-1] for case in results["check"])
    results["check_summary"] = f"{passed} of {len(results['check'])} pass"
    print(f"{passed} of {len(results['check'])} checks pass", flush=True)
    save(results, out)


def timing(kernels, results: dict, rows: int, packed: list, out: str) -> None:
    xs = [torch.randn(rows, in_features, device=DEVICE).half() for _, in_features in SHAPES]
    mt = -(-rows // 8)
    ours = [c for c in timing_configs(mt) if c.name not in SKIP]
    own = [("skinny", c, skinny.skinny) for c in skinny.tuning_space(rows)]
    if rows == 1:
        own += [("gemv", c, gemv.gemv) for c in gemv.tuning_space(rows)]
    fastest = {"w4mma": [], "awqd": []}
    for index, (out_features, in_features) in enumerate(SHAPES):
        us = {}
        for config in ours:
            for splits, tiles in launches_for(config, out_features, in_features):
                launches = [
                    lambda c=copy[index], x=xs[index], t=config, s=splits, r=tiles: kernels(x, c, t, s, r)
                    for copy in packed
                ]
                label = f"{config.name} s{splits} t{tiles}"
                us[label] = (
                    per_launch_ms(label, launches, DEVICE, REPETITIONS) * 1e3,
                    ("w4mma", config, (splits, tiles)),
                )
        for kind, config, run in own:
            launches = [lambda c=copy[index], x=xs[index], t=config, f=run: f(x, c, t) for copy in packed]
            label = f"{kind} {config}"
            us[label] = (per_launch_ms(label, launches, DEVICE, REPETITIONS) * 1e3, (kind, config, run))
        results["linear_us"].setdefault(str(rows), {})[f"{out_features}x{in_features}"] = {
            label: value[0] for label, value in us.items()
        }
        save(results, out)  # a call cut short keeps every linear timed so far
        best_awqd = min((v[0], label) for label, v in us.items() if v[1][0] != "w4mma")
        fastest["awqd"].append(us[best_awqd[1]][1])
        line = f"{rows} tokens {out_features}x{in_features}: awqd {best_awqd[0]:.1f} µs ({best_awqd[1]}); "
        ours_us = [(v[0], label) for label, v in us.items() if v[1][0] == "w4mma"]
        if ours_us:  # none where no tile's staged K slice fits in shared memory at any split tried
            best_ours = min(ours_us)
            fastest["w4mma"].append(us[best_ours[1]][1])
            print(line + f"w4mma {best_ours[0]:.1f} ({best_ours[1]})", flush=True)
        else:
            print(line + "w4mma: no tile fits", flush=True)

    def ours_pass(copy, chosen=fastest["w4mma"], xs=xs):
        return lambda: [kernels(x, w, c, *s) for x, w, (_, c, s) in zip(xs, copy, chosen, strict=True)]

    def awqd_pass(copy, chosen=fastest["awqd"], xs=xs):
        return lambda: [run(x, w, c) for x, w, (_, c, run) in zip(xs, copy, chosen, strict=True)]

    layer = {
        "awqd Triton, fastest tile per linear": time_passes(
            "awqd", [awqd_pass(c) for c in packed], DEVICE, *REPETITIONS
        ),
        "fp16 cuBLAS": time_dense_baseline(SHAPES, 128, DEVICE, rows, *REPETITIONS),
    }
    if len(fastest["w4mma"]) == len(SHAPES):
        layer["w4mma, fastest tile per linear"] = time_passes(
            "w4mma", [ours_pass(c) for c in packed], DEVICE, *REPETITIONS
        )
    results["layer_ms"][str(rows)] = {name: t.median_ms for name, t in layer.items()}
    results["fastest"][str(rows)] = {
        "w4mma": [f"{c.name} s{s[0]} t{s[1]}" for _, c, s in fastest["w4mma"]],
        "awqd": [f"{kind} {c}" for kind, c, _ in fastest["awqd"]],
    }
    save(results, out)
    print(f"{rows} tokens, ms per layer: " + ", ".join(f"{k} {v.median_ms:.4f}" for k, v in layer.items()), flush=True)


def save(results: dict, out: str) -> None:
    with open(f"{out}/w4-mma-check.json", "w") as file:
        json.dump(results, file, indent=1)


def main() -> None:
    out = sys.argv[1]
    buckets = [int(b) for b in sys.argv[2:]] or BUCKETS
    results = {
        "device": torch.cuda.get_device_name(DEVICE),
        "check": [],
        "check_summary": {},
        "linear_us": {},
        "layer_ms": {},
        "fastest": {},
    }
    kernels = Kernels(DEVICE)
    check(kernels, results, out, {-(-rows // 8) for rows in buckets})
    weights = random_layer_weights(SHAPES, 128, DEVICE, rotation_copies(SHAPES, DEVICE))
    packed = [[pack_awqd_w4(weight, DEVICE) for weight in copy] for copy in weights]
    for rows in buckets:
        timing(kernels, results, rows, packed, out)
    results["copy_gbps"] = measure_copy_bandwidth_gbps(DEVICE)
    save(results, out)


if __name__ == "__main__":
    main()
