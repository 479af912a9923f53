"""The embedded demo model that `awqd serve` hosts when no --model is given.

A tiny random-weight Llama with the local tokenizer, quantized by real AutoAWQ (GEMM packing) on the
shipped prose. It is built once into the cache directory and reused; a marker file, written last,
records which recipe built it, so a half-written or outdated directory is never served.
"""

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from awqd.models.tokenizer import shipped_texts, train_tokenizer

DEMO_NAME = "awqd-demo"
MARKER_FILE = "awqd_demo_complete.json"
# Bump "recipe" whenever anything below changes, so existing caches rebuild.
RECIPE = {
    "recipe": 1,
    "seed": 0,
    "vocab_size": 2048,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention, as in Llama-3 and Mistral
    "max_position_embeddings": 512,
    "version": "GEMM",
    "group_size": 128,
    "calib_seq_len": 64,
    "calib_blocks": 32,  # 2048 tokens: AWQ statistics that take ~10 s on two CPU cores
}
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

log = structlog.get_logger()


def demo_model_path(cache_dir: Path) -> Path:
    return Path(cache_dir) / "models" / DEMO_NAME


def ensure_demo_model(cache_dir: Path) -> Path:
    """`demo_model_path(cache_dir)`, built on first use. Concurrent callers wait on a lock and share one build."""
    target = demo_model_path(cache_dir)
    if is_complete(target):
        log.info("demo_model.reuse", path=str(target))
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f"{DEMO_NAME}.lock"):
        if is_complete(target):  # another process finished it while this one waited
            log.info("demo_model.reuse", path=str(target))
            return target
        if target.exists():
            log.warning("demo_model.discard_incomplete", path=str(target))
            shutil.rmtree(target)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{DEMO_NAME}-build-") as work:
            built = _build(Path(work))
            os.rename(built, target)  # atomic within one filesystem: readers see all of it or none
    return target


def is_complete(model_dir: Path) -> bool:
    marker = model_dir / MARKER_FILE
    if not marker.is_file() or not all((model_dir / name).is_file() for name in REQUIRED_FILES):
        return False
    try:
        return json.loads(marker.read_text()) == RECIPE
    except json.JSONDecodeError:
        return False


def _build(work: Path) -> Path:
    from awqd.quantize.autoawq import quantize  # imported here: pulls in AutoAWQ, needed only for a build

    started = time.perf_counter()
    log.info("demo_model.build", work_dir=str(work), **RECIPE)
    fp16_dir, awq_dir = work / "fp16", work / "awq"
    tokenizer = train_tokenizer(fp16_dir, RECIPE["vocab_size"], extra_tokens_to=RECIPE["vocab_size"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=RECIPE["hidden_size"],
        intermediate_size=RECIPE["intermediate_size"],
        num_hidden_layers=RECIPE["num_hidden_layers"],
        num_attention_heads=RECIPE["num_attention_heads"],
        num_key_value_heads=RECIPE["num_key_value_heads"],
        max_position_embeddings=RECIPE["max_position_embeddings"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float16",
    )
    torch.manual_seed(RECIPE["seed"])
    LlamaForCausalLM(config).half().save_pretrained(fp16_dir)
    quantize(
        fp16_dir,
        shipped_texts(),
        awq_dir,
        group_size=RECIPE["group_size"],
        version=RECIPE["version"],
        max_calib_seq_len=RECIPE["calib_seq_len"],
        max_calib_blocks=RECIPE["calib_blocks"],
        seed=RECIPE["seed"],
        progress=False,
    )
    (awq_dir / MARKER_FILE).write_text(json.dumps(RECIPE))
    log.info("demo_model.built", seconds=round(time.perf_counter() - started, 1))
    return awq_dir


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
