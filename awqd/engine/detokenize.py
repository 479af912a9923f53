"""Incremental detokenization and stop-sequence handling for streamed text."""

from dataclasses import dataclass, field


@dataclass
class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas without splitting multi-byte characters.

    It re-decodes only a short window: byte-level tokenizers can need a few tokens to finish one character.
    """

    tokenizer: object
    ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0
    read_offset: int = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        text = self.tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""


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
