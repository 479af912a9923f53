"""A model with trained weights, made here: train a small Llama on Python's standard-library sources, quantize it
three ways, and score every version through awqd's engine with each kernel family (awqd.benchmark.evaluate).

1. Text: the .py files of this Python's standard library (site-packages left out), split by file, by a hash of
   its relative path: 1 in 20 held out (scored, never trained or calibrated on), 1 in 20 for AWQ calibration, the
   rest for training. The split is the same on every machine with the same Python.
2. A byte-level BPE tokenizer trained on the training split (awqd.models.tokenizer), no model hub.
3. A Llama (GPU: hidden 512, 8 layers, 8 heads, intermediate 1536, vocabulary 8192: 35M parameters) trained with
   AdamW under bf16 autocast for --train-seconds, saved in fp16 (config, tokenizer, safetensors).
4. Three W4 g128 versions with zero point: AutoAWQ (awqd.quantize.autoawq, calibrated on the calibration split),
   round-to-nearest written as an AutoAWQ GEMM checkpoint through awqd's packing, and the same round-to-nearest
   weights as a compressed-tensors pack-quantized checkpoint written by the compressed-tensors library.
5. Perplexity on the held-out text: fp16 with transformers (awqd's engine serves only quantized weights), and
   each quantized version through awqd's engine with every kernel the device is eligible for, the pure-torch
   reference first. quality.json and quality.md land in --out.

GPU (about 7 minutes on an H200, 3.5 of them training):  python3 bench/train_tiny.py --out $OUT/quality
CPU dry run (about 2 minutes):                         python bench/train_tiny.py --tiny --out /tmp/tiny-quality
"""

import argparse
import importlib
import json
import math
import platform
import shutil
import sys
import sysconfig
import tempfile
import time
import types
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from awqd.benchmark.evaluate import Evaluation, evaluate
from awqd.benchmark.quality import BOUND_PERCENT, MAX_TOKENS, spans
from awqd.models.tokenizer import train_tokenizer
from awqd.quant.packing import pack
from awqd.quant.reference import dequantize
from awqd.quant.tensors import QuantizedWeight

GROUP_SIZE = 128
QUANTIZED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HELD_OUT, CALIBRATION = 0, 1  # crc32(relative path) % 20
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class Settings:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    context: int
    batch: int  # sequences per step
    seq_len: int
    lr: float
    train_seconds: float
    max_steps: int
    train_bytes: int  # training text read, at most
    tokenizer_bytes: int  # of which the tokenizer is trained on, at most
    heldout_tokens: int  # held-out tokens scored, at most
    calib_samples: int
    calib_seq_len: int
    window: int  # tokens per scored window


GPU = Settings(
    hidden=512, layers=8, heads=8, intermediate=1536, vocab=8192, context=1024, batch=32, seq_len=512, lr=1.5e-3,
    train_seconds=210.0, max_steps=1_000_000, train_bytes=96 << 20, tokenizer_bytes=16 << 20, heldout_tokens=30_000,
    calib_samples=128, calib_seq_len=512, window=1024,
)  # fmt: skip
TINY = Settings(
    hidden=128, layers=2, heads=4, intermediate=256, vocab=512, context=256, batch=8, seq_len=64, lr=3e-3,
    train_seconds=60.0, max_steps=300, train_bytes=512 << 10, tokenizer_bytes=512 << 10, heldout_tokens=3_000,
    calib_samples=16, calib_seq_len=64, window=256,
)  # fmt: skip


def stdlib_sources() -> dict[str, list[Path]]:
    """The standard library's .py files by split, in path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    splits: dict[str, list[Path]] = {"train": [], "calibration": [], "heldout": []}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if "site-packages" in relative or "dist-packages" in relative:
            continue
        bucket = zlib.crc32(relative.encode()) % 20
        splits["heldout" if bucket == HELD_OUT else "calibration" if bucket == CALIBRATION else "train"].append(path)
    return splits


def read_texts(files: list[Path], max_bytes: int) -> list[str]:
    """Whole files in order until `max_bytes`; files that are not UTF-8 are skipped."""
    texts, total = [], 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            texts.append(text)
            total += len(text.encode())
            if total >= max_bytes:
                break
    return texts


def heldout_text(tokenizer: PreTrainedTokenizerFast, files: list[Path], max_tokens: int) -> tuple[str, int]:
    """Whole held-out files joined, while the text stays within `max_tokens` tokens and 1 MiB; and how many."""
    chosen, tokens = [], 0
    for text in read_texts(files, 1 << 20):
        count = len(tokenizer(text)["input_ids"])
        if tokens + count > max_tokens:
            continue  # a smaller file may still fit
        chosen.append(text)
        tokens += count
    return "\n".join(chosen), len(chosen)


def token_stream(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """Every text's ids (each starting with <s>) end to end."""
    ids = tokenizer(texts)["input_ids"]
    return torch.tensor([token for sequence in ids for token in sequence], dtype=torch.long)


def build_model(settings: Settings, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=settings.hidden,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        intermediate_size=settings.intermediate,
        vocab_size=settings.vocab,
        max_position_embeddings=settings.context,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def train(model: LlamaForCausalLM, tokens: torch.Tensor, settings: Settings, device: torch.device) -> dict:
    """AdamW with a short warm-up and a cosine decay over the time budget (or max_steps, whichever ends first)."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.1)
    generator = torch.Generator().manual_seed(0)
    tokens = tokens.to(device)
    started, step, losses = time.perf_counter(), 0, []
    warmup = min(50, max(1, settings.max_steps // 10))
    while step < settings.max_steps:
        progress = max(step / settings.max_steps, (time.perf_counter() - started) / settings.train_seconds)
        if progress >= 1.0:
            break
        lr = settings.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(tokens) - settings.seq_len - 1, (settings.batch,), generator=generator)
        batch = torch.stack([tokens[s : s + settings.seq_len + 1] for s in starts.tolist()])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(batch[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
    model.eval()
    seconds = time.perf_counter() - started
    final = sum(losses[-20:]) / len(losses[-20:])
    return {
        "steps": step,
        "seconds": seconds,
        "final_loss": final,
        "tokens_seen": step * settings.batch * settings.seq_len,
    }


def save_fp16(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> Path:
    model.to(torch.float16).cpu().save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def rtn(weight: torch.Tensor, group_size: int = GROUP_SIZE) -> QuantizedWeight:
    """Round-to-nearest W4 with zero point, as AutoAWQ's pseudo_quantize_tensor computes it: per group of
    `group_size` input channels, scale = (max - min) / 15, zero = -round(min / scale), q = round(w / scale) + zero."""
    out_features, in_features = weight.shape
    grouped = weight.float().reshape(-1, group_size)
    high, low = grouped.amax(dim=1, keepdim=True), grouped.amin(dim=1, keepdim=True)
    scales = ((high - low).clamp(min=1e-5) / 15).to(torch.float16).float()
    zeros = (-torch.round(low / scales)).clamp(0, 15)
    q = (torch.round(grouped / scales) + zeros).clamp(0, 15)
    return QuantizedWeight(
        q=q.to(torch.uint8).reshape(out_features, in_features),
        zeros=zeros.to(torch.uint8).reshape(out_features, -1),
        scales=scales.to(torch.float16).reshape(out_features, -1),
        group_size=group_size,
    )


def quantized_name(name: str) -> bool:
    return name.endswith(".weight") and name.rsplit(".", 2)[-2] in QUANTIZED


def write_rtn(fp16_dir: Path, out_dir: Path) -> dict[str, QuantizedWeight]:
    """An AutoAWQ GEMM checkpoint of the round-to-nearest weights; returns them by weight name."""
    state = load_file(fp16_dir / "model.safetensors")
    weights = {name: rtn(tensor) for name, tensor in state.items() if quantized_name(name)}
    tensors = {name: tensor for name, tensor in state.items() if name not in weights}
    for name, weight in weights.items():
        prefix = name.removesuffix("weight")
        tensors.update({f"{prefix}{part}": tensor for part, tensor in pack(weight, "GEMM").items()})
    out_dir.mkdir(parents=True)
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((fp16_dir / "config.json").read_text())
    config["quantization_config"] = {  # what AutoAWQ 0.2.9's save_quantized writes
        "quant_method": "awq",
        "bits": 4,
        "group_size": GROUP_SIZE,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": None,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    copy_tokenizer(fp16_dir, out_dir)
    return weights


def import_compressed_tensors() -> types.ModuleType:
    """compressed-tensors 0.20 imports transformers.masking_utils (transformers >= 4.53), which writing a checkpoint
    never uses; with the transformers 4.51 AutoAWQ needs, an empty registry stands in for it."""
    try:
        importlib.import_module("transformers.masking_utils")
    except ModuleNotFoundError:
        shim = types.ModuleType("transformers.masking_utils")
        shim.ALL_MASK_ATTENTION_FUNCTIONS = {}
        sys.modules["transformers.masking_utils"] = shim
    return importlib.import_module("compressed_tensors")


def write_compressed_tensors(fp16_dir: Path, weights: dict[str, QuantizedWeight], out_dir: Path) -> None:
    """The same round-to-nearest weights as a pack-quantized checkpoint, compressed by the library itself.

    The model gets the dequantized weights and the exact scales and zero points, so the library's own
    quantization (round(w / scale) + zero, in its signed range -8..7) gives back the same integers."""
    import_compressed_tensors()
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )

    model = AutoModelForCausalLM.from_pretrained(fp16_dir, torch_dtype=torch.float16)
    args = QuantizationArgs(num_bits=4, type="int", strategy="group", group_size=GROUP_SIZE, symmetric=False)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    modules = dict(model.named_modules())
    for name, weight in weights.items():
        module = modules[name.removesuffix(".weight")]
        module.weight.data.copy_(dequantize(weight, torch.float16))
        module.weight_scale.data.copy_(weight.scales.reshape(module.weight_scale.shape))
        zero_points = weight.zeros.to(torch.int16) - 8
        module.weight_zero_point.data.copy_(zero_points.reshape(module.weight_zero_point.shape))
    compressor = ModelCompressor.from_pretrained_model(model, "pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(out_dir)
    compressor.update_config(out_dir)
    copy_tokenizer(fp16_dir, out_dir)


def write_awq(fp16_dir: Path, calibration: list[str], settings: Settings, out_dir: Path) -> dict:
    from awqd.quantize.autoawq import quantize

    report = quantize(
        fp16_dir,
        calibration,
        out_dir,
        group_size=GROUP_SIZE,
        version="GEMM",
        max_calib_seq_len=settings.calib_seq_len,
        max_calib_blocks=settings.calib_samples,
        progress=False,
    )
    return {"seconds": report.seconds, "device": report.device, "calibration": report.calibration}


def copy_tokenizer(source: Path, target: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, target / name)


def fp16_perplexity(fp16_dir: Path, ids: list[int], window: int, device: torch.device) -> float:
    """transformers' forward over the same windows awqd scores (fp32 on the CPU, where fp16 matmul is slow)."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(fp16_dir, torch_dtype=dtype).to(device).eval()
    tokens = torch.tensor(ids, device=device)
    nll, scored = 0.0, 0
    with torch.inference_mode():
        for start, end in spans(len(ids), window):
            logits = model(tokens[start:end][None]).logits[0].float()
            nll += F.cross_entropy(logits[:-1], tokens[start + 1 : end], reduction="sum").item()
            scored += end - start - 1
    return math.exp(nll / scored)


def checks(fp16_ppl: float, evaluations: dict[str, Evaluation]) -> list[dict]:
    """The issue's claims, each with its numbers and whether it holds."""
    reference = {name: rows_by_kernel(e)["reference_torch"].perplexity for name, e in evaluations.items()}
    results = []
    for name, evaluation in evaluations.items():
        scored = [row for row in evaluation.rows if not row.error]
        worst = max(scored, key=lambda row: abs(row.delta_vs_reference_percent))
        results.append(
            {
                "claim": f"{name}: every kernel within {BOUND_PERCENT}% of the reference",
                "holds": all(row.within_bound for row in evaluation.rows),
                "detail": f"largest: {worst.kernel} {worst.delta_vs_reference_percent:+.3f}%; "
                f"not scored: {[row.kernel for row in evaluation.rows if row.error]}",
            }
        )
    if "awq" in reference and "rtn" in reference:
        awq_gap, rtn_gap = reference["awq"] / fp16_ppl - 1, reference["rtn"] / fp16_ppl - 1
        results.append(
            {
                "claim": "AWQ's gap to fp16 is smaller than RTN's",
                "holds": abs(awq_gap) < abs(rtn_gap),
                "detail": f"AWQ {100 * awq_gap:+.2f}%, RTN {100 * rtn_gap:+.2f}% (reference kernel)",
            }
        )
    if "ct" in evaluations and "rtn" in evaluations:
        rtn_rows, ct_rows = rows_by_kernel(evaluations["rtn"]), rows_by_kernel(evaluations["ct"])
        deltas = {
            kernel: 100 * (row.perplexity / rtn_rows[kernel].perplexity - 1)
            for kernel, row in ct_rows.items()
            if not row.error and kernel in rtn_rows and not rtn_rows[kernel].error
        }
        results.append(
            {
                "claim": f"compressed-tensors scores as the AutoAWQ-format RTN checkpoint, within {BOUND_PERCENT}%",
                "holds": bool(deltas) and all(abs(d) <= BOUND_PERCENT for d in deltas.values()),
                "detail": ", ".join(f"{kernel} {delta:+.4f}%" for kernel, delta in deltas.items()),
            }
        )
    return results


def rows_by_kernel(evaluation: Evaluation) -> dict:
    return {row.kernel: row for row in evaluation.rows}


LABELS = {"rtn": "RTN W4 g128", "awq": "AWQ W4 g128", "ct": "RTN W4 g128, compressed-tensors"}


def markdown(result: dict, evaluations: dict[str, Evaluation]) -> str:
    kernels = list(dict.fromkeys(row.kernel for e in evaluations.values() for row in e.rows))
    fp16 = result["fp16_perplexity"]
    lines = [
        f"# Perplexity of a trained {result['parameters'] / 1e6:.1f}M-parameter Llama on held-out Python source",
        "",
        f"{result['device_name']}, {result['date']}. Held out: {result['heldout']['files']} standard-library files, "
        f"{result['heldout']['tokens']} tokens in windows of {result['window']} (never trained or calibrated on). "
        f"Trained {result['training']['steps']} steps in {result['training']['seconds']:.0f} s "
        f"(final loss {result['training']['final_loss']:.3f}). Perplexity per kernel, as awqd's engine serves it; "
        "in brackets the difference from the pure-torch reference kernel.",
        "",
        "| model | " + " | ".join(kernels) + " | gap to fp16 (reference) |",
        "|---|" + "---|" * (len(kernels) + 1),
        f"| fp16 (transformers) | {fp16:.3f} |" + " |" * (len(kernels) - 1) + " |",
    ]
    for name, evaluation in evaluations.items():
        rows = rows_by_kernel(evaluation)
        cells = []
        for kernel in kernels:
            row = rows.get(kernel)
            if row is None or row.error:
                cells.append("not run" if row is None else "failed")
            else:
                cells.append(f"{row.perplexity:.3f} ({row.delta_vs_reference_percent:+.3f}%)")
        reference = rows["reference_torch"].perplexity if not rows["reference_torch"].error else float("nan")
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + f" | {100 * (reference / fp16 - 1):+.2f}% |")
    lines += ["", "| claim | holds | detail |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {'yes' if c['holds'] else 'NO'} | {c['detail']} |" for c in result["checks"]]
    failures = [(name, row.kernel, row.error) for name, e in evaluations.items() for row in e.rows if row.error]
    if failures:
        lines += ["", "Not scored:"] + [f"- {name} {kernel}: {error}" for name, kernel, error in failures]
    return "\n".join(lines) + "\n"


def make_trained(settings: Settings, work: Path, device: torch.device) -> tuple[Path, dict, dict[str, list[Path]]]:
    """Tokenizer, training and the fp16 checkpoint; returns its directory, the training report and the split."""
    splits = stdlib_sources()
    tokenizer_dir = work / "tokenizer"
    train_texts = read_texts(splits["train"], settings.train_bytes)
    if sum(map(len, train_texts)) < min(settings.train_bytes, 1 << 20) // 2:
        raise SystemExit(f"too little standard-library source under {sysconfig.get_paths()['stdlib']} to train on")
    tokenizer_texts = read_texts(splits["train"], settings.tokenizer_bytes)
    tokenizer = train_tokenizer(tokenizer_dir, settings.vocab, extra_tokens_to=settings.vocab, texts=tokenizer_texts)
    tokens = token_stream(tokenizer, train_texts)
    model = build_model(settings, tokenizer)
    report = train(model, tokens, settings, device)
    report.update(train_files=len(splits["train"]), train_tokens=len(tokens))
    report["parameters"] = sum(p.numel() for p in model.parameters())
    return save_fp16(model, tokenizer, work / "fp16"), report, splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="quality.json and quality.md land here")
    parser.add_argument("--work", type=Path, help="checkpoints land here [default: a temporary directory]")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized settings for a dry run")
    parser.add_argument("--train-seconds", type=float, help="training time budget")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip", default="", help="comma-separated versions not to make: awq, ct")
    args = parser.parse_args()
    settings = TINY if args.tiny else GPU
    if args.train_seconds is not None:
        settings = replace(settings, train_seconds=args.train_seconds)
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    work = args.work or Path(tempfile.mkdtemp(prefix="train-tiny-"))
    if work.exists():
        shutil.rmtree(work)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    started = time.perf_counter()

    def step(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    step(f"training on {device}")
    fp16_dir, training, splits = make_trained(settings, work, device)
    step(f"trained: {training}")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(fp16_dir)
    text, heldout_files = heldout_text(tokenizer, splits["heldout"], min(settings.heldout_tokens, MAX_TOKENS))
    (args.out / "heldout.txt").write_text(text)
    ids = tokenizer(text)["input_ids"]
    weights = write_rtn(fp16_dir, work / "rtn")
    step("RTN written")
    versions = {"rtn": work / "rtn"}
    if "awq" not in skip:
        calibration = read_texts(splits["calibration"], 4 << 20)
        training["awq"] = write_awq(fp16_dir, calibration, settings, work / "awq")
        versions["awq"] = work / "awq"
        step(f"AWQ written: {training['awq']}")
    if "ct" not in skip:
        write_compressed_tensors(fp16_dir, weights, work / "ct")
        versions["ct"] = work / "ct"
        step("compressed-tensors written")
    fp16_ppl = fp16_perplexity(fp16_dir, ids, settings.window, device)
    step(f"fp16 perplexity {fp16_ppl:.4f}")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    evaluations = {}
    for name, path in versions.items():
        evaluations[name] = evaluate(path, text.encode(), args.device, window=settings.window)
        step(f"{name} scored")
        # Written after each version, so a run cut short keeps what it scored.
        result = {
            "device_name": device_name,
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "settings": asdict(settings),
            "parameters": training["parameters"],
            "training": training,
            "heldout": {"files": heldout_files, "tokens": len(ids), "bytes": len(text.encode())},
            "window": settings.window,
            "fp16_perplexity": fp16_ppl,
            "evaluations": {name: asdict(e) for name, e in evaluations.items()},
            "seconds": time.perf_counter() - started,
            "checks": checks(fp16_ppl, evaluations),
        }
        (args.out / "quality.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "quality.md").write_text(markdown(result, evaluations))
    step(f"wrote {args.out / 'quality.md'}; checkpoints in {work}")
    print((args.out / "quality.md").read_text())


if __name__ == "__main__":
    main()
