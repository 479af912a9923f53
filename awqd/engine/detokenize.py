"""Incremental detokenization and stop-sequence handling for streamed text."""

from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast


def text_decoder(tokenizer) -> Callable[[list[int]], str]:
    """tokenizer.decode(ids, skip_special_tokens=True) as a function of ids. For a fast tokenizer that keeps
    transformers' own decode, that is its Rust backend's decode plus the optional space clean-up: the same text
    without transformers' per-call overhead (about 3/4 of a short decode's time), which the engine pays twice per
    streamed token."""
    kind = type(tokenizer)
    if (
        isinstance(tokenizer, PreTrainedTokenizerFast)
        and kind.decode is PreTrainedTokenizerBase.decode
        and kind._decode is PreTrainedTokenizerFast._decode
    ):
        backend = tokenizer._tokenizer
        if tokenizer.clean_up_tokenization_spaces:
            return lambda ids: tokenizer.clean_up_tokenization(backend.decode(ids, skip_special_tokens=True))
        return lambda ids: backend.decode(ids, skip_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


@dataclass
class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas without splitting multi-byte characters.

    It re-decodes only a short window: byte-level tokenizers can need a few tokens to finish one character. The
    window's settled part (prefix) is decoded once per window, not once per token.
    """

    tokenizer: object
    ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0
    read_offset: int = 0
    prefix: str | None = None  # the text of ids[prefix_offset:read_offset], once decoded

    def __post_init__(self) -> None:
        self.decode = text_decoder(self.tokenizer)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        if self.prefix is None:
            self.prefix = self.decode(self.ids[self.prefix_offset : self.read_offset])
        text = self.decode(self.ids[self.prefix_offset :])
        if len(text) > len(self.prefix) and not text.endswith("\ufffd"):
            delta = text[len(self.prefix) :]
            self.prefix_offset, self.read_offset, self.prefix = self.read_offset, len(self.ids), None
            return delta
        return ""

    def flush(self) -> str:
        """The text held back at the end, when no token will come to finish a character: as the tokenizer decodes
        it (an incomplete character as U+FFFD), so that the deltas add up to the decode of every id."""
        if self.read_offset == len(self.ids):
            return ""
        text = self.decode(self.ids[self.prefix_offset :])
        held = text[len(self.prefix) :]  # push decoded the prefix when it took the ids held since
        self.prefix_offset, self.read_offset, self.prefix = len(self.ids), len(self.ids), None
        return held


@dataclass
class StopMatcher:
    """Holds back text that could still become a stop sequence, and cuts the text at the first stop."""

    stops: tuple[str, ...]
    pending: str = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop sequence was found)."""
        self.pending += text
        hits = [(self.pending.find(s), s) for s in self.stops if s in self.pending]
        if hits:
            cut = min(position for position, _ in hits)
            emitted, self.pending = self.pending[:cut], ""
            return emitted, True
        keep = max((_overlap(self.pending, s) for s in self.stops), default=0)
        emitted = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(emitted) :]
        return emitted, False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for length in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-length:]):
            return length
    return 0
