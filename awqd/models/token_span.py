"""How many bytes of prompt text one token can stand for, where a tokenizer bounds it, so that text too long for the
context is refused before it is tokenized (about a second per megabyte).

The bound holds for a BPE tokenizer that spells every byte (byte-level, or byte fallback), whose normalizer and
pre-tokenizer keep the text: then every byte of the text is in some token, and no token stands for more bytes than
its spelling has (byte-level and SentencePiece spellings are longer than the bytes they stand for). Unicode
normalization may shrink text (NFC composes up to three code points into one), which SHRINK_MARGIN covers. A
tokenizer with an unknown token that swallows a word, an added token that absorbs the whitespace beside it
(lstrip, rstrip), or a step that drops text (whitespace splitting), has no bound: its prompts are always tokenized.
"""

import json

from tokenizers import pre_tokenizers
from transformers import PreTrainedTokenizerBase

SHRINK_MARGIN = 4
GROWING_NORMALIZERS = frozenset({"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Prepend"})  # shrink at most 3:1
TEXT_KEEPING_PRE_TOKENIZERS = frozenset({"ByteLevel", "Metaspace", "Split", "Digits", "Punctuation", "UnicodeScripts"})


def prompt_bytes_cap(tokenizer: PreTrainedTokenizerBase, context_length: int) -> int | None:
    """The most UTF-8 bytes of prompt text that might tokenize to fewer tokens than the context holds, or None
    where the tokenizer bounds no token's bytes."""
    longest = longest_token_bytes(tokenizer)
    return None if longest is None else SHRINK_MARGIN * longest * context_length


def longest_token_bytes(tokenizer: PreTrainedTokenizerBase) -> int | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a slow (Python) tokenizer has none
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    vocab = tokenizer.get_vocab()
    if not (
        spec["model"]["type"] == "BPE"
        and not any(added["lstrip"] or added["rstrip"] for added in spec["added_tokens"])  # they absorb spaces
        and _spells_every_byte(spec, vocab)
        and _keeps_text(spec.get("normalizer"), "normalizers")
        and _keeps_text(spec.get("pre_tokenizer"), "pretokenizers")
    ):
        return None
    return max(len(token.encode()) for token in vocab)


def _spells_every_byte(spec: dict, vocab: dict[str, int]) -> bool:
    if spec["model"].get("byte_fallback"):
        return all(f"<0x{byte:02X}>" in vocab for byte in range(256))
    return _has_step(spec.get("pre_tokenizer"), "ByteLevel") and all(
        symbol in vocab for symbol in pre_tokenizers.ByteLevel.alphabet()
    )


def _keeps_text(step: dict | None, members: str) -> bool:
    """Whether a normalizer or pre-tokenizer (members names a Sequence's list) keeps every byte, give or take
    SHRINK_MARGIN."""
    if step is None:
        return True
    kind = step["type"]
    if kind == "Sequence":
        return all(_keeps_text(member, members) for member in step[members])
    if kind == "Replace":  # Llama-2's " " -> "▁"; a regex, or a shorter replacement, could drop text
        pattern = step["pattern"].get("String")
        return pattern is not None and len(step["content"].encode()) >= len(pattern.encode())
    if step.get("behavior") == "Removed":  # Split's and Punctuation's option to drop what they split on
        return False
    return kind in GROWING_NORMALIZERS or kind in TEXT_KEEPING_PRE_TOKENIZERS


def _has_step(step: dict | None, kind: str) -> bool:
    if step is None:
        return False
    if step["type"] == "Sequence":
        return any(_has_step(member, kind) for member in step["pretokenizers"])
    return step["type"] == kind
