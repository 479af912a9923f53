"""Calibration text for AWQ: reading it from a file and cutting it into the token blocks AutoAWQ runs.

AutoAWQ (awq/utils/calib_data.py) tokenizes each sample, concatenates them and splits the result into
blocks of max_calib_seq_len tokens, dropping the remainder; with no complete block it fails deep inside
torch.cat. awqd builds the blocks itself, so that the salience statistics and AWQ's scale search see the
same tokens, and so that too little text is an InvalidArgument naming the file instead.
"""

import json
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from awqd.errors import InvalidArgument

# AWQ's scale search averages activations over the blocks; fewer than this gives statistics from a
# handful of sentences. The activation-weighted search itself needs at least one block.
MIN_BLOCKS = 4
DEFAULT_SEQ_LEN = 512  # AutoAWQ's default max_calib_seq_len
DEFAULT_MAX_BLOCKS = 128  # AutoAWQ's default max_calib_samples


def read_calibration(path: Path, *, min_tokens: int = MIN_BLOCKS * DEFAULT_SEQ_LEN) -> list[str]:
    """Samples from a text file (one per line, blank lines skipped) or JSONL (`.jsonl`, objects with "text").

    A tokenizer never makes more tokens than a text has UTF-8 bytes (plus one <s> per sample), so a file
    whose samples hold fewer bytes than `min_tokens` is rejected here, before any model is loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument("calib", f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise InvalidArgument("calib", f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    samples = _jsonl_samples(path, lines) if path.suffix == ".jsonl" else [line for line in lines if line.strip()]
    if not samples:
        raise InvalidArgument("calib", f"{path}: contains no calibration text")
    upper_bound = sum(len(sample.encode()) + 1 for sample in samples)
    if upper_bound < min_tokens:
        raise InvalidArgument(
            "calib",
            f"{path}: too small: {len(samples)} samples can give at most {upper_bound} tokens, need {min_tokens}",
        )
    return samples


def _jsonl_samples(path: Path, lines: list[str]) -> list[str]:
    samples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidArgument("calib", f"{path}:{number}: invalid JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InvalidArgument("calib", f'{path}:{number}: expected an object with a string field "text"')
        if record["text"].strip():
            samples.append(record["text"])
    return samples


def calibration_blocks(
    samples: list[str], tokenizer: PreTrainedTokenizerBase, seq_len: int, max_blocks: int, min_blocks: int = MIN_BLOCKS
) -> list[list[int]]:
    """Tokenize, concatenate and split into at most `max_blocks` blocks of exactly `seq_len` tokens."""
    needed = min_blocks * seq_len
    tokens: list[int] = []
    for sample in samples:
        tokens.extend(tokenizer.encode(sample.strip()))
        if len(tokens) >= max_blocks * seq_len:
            break
    if len(tokens) < needed:
        raise InvalidArgument(
            "calib",
            f"too small: {len(samples)} samples give {len(tokens)} tokens; AWQ needs at least {min_blocks} blocks of "
            f"max_calib_seq_len={seq_len} tokens ({needed} tokens)",
        )
    count = min(len(tokens) // seq_len, max_blocks)
    return [tokens[i * seq_len : (i + 1) * seq_len] for i in range(count)]
