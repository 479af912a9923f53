"""A Generate request as the engine sees it, and the checks that make it safe to run."""

import math
from dataclasses import dataclass

from awqd.errors import InvalidArgument

MAX_CACHE_SALT_BYTES = 256


@dataclass(frozen=True)
class GenerateParams:
    model: str
    prompt: str
    prompt_token_ids: tuple[int, ...]
    max_new_tokens: int
    temperature: float
    top_p: float | None
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    kernel: str
    cache_salt: str = ""  # prompts share cached blocks only with prompts of the same salt

    def validate(self, max_new_tokens_cap: int) -> None:
        """Checks that need no model; raises InvalidArgument naming the field."""
        if not self.model:
            raise InvalidArgument("model", "must name a hosted model")
        if self.prompt and self.prompt_token_ids:
            raise InvalidArgument("prompt", "set either prompt or prompt_token_ids, not both")
        if not self.prompt and not self.prompt_token_ids:
            raise InvalidArgument("prompt", "must not be empty")
        if self.max_new_tokens <= 0:
            raise InvalidArgument("max_new_tokens", "must be at least 1")
        if self.max_new_tokens > max_new_tokens_cap:
            raise InvalidArgument(
                "max_new_tokens", f"{self.max_new_tokens} exceeds this daemon's cap of {max_new_tokens_cap}"
            )
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidArgument("temperature", f"must be a finite number >= 0, got {self.temperature}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise InvalidArgument("top_p", f"must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise InvalidArgument("stop", "stop sequences must not be empty strings")
        if len(self.cache_salt.encode()) > MAX_CACHE_SALT_BYTES:
            raise InvalidArgument("cache_salt", f"must be at most {MAX_CACHE_SALT_BYTES} bytes")

    def prompt_ids(self, tokenizer, vocab_size: int, context_length: int, prompt_bytes_cap: int | None) -> list[int]:
        """Tokenizes the prompt and checks it against the model's vocabulary and context window. Text past
        prompt_bytes_cap (awqd.models.token_span), and more ids than the context holds, are refused before the work
        that grows with them."""
        field = "prompt_token_ids" if self.prompt_token_ids else "prompt"
        if self.prompt_token_ids:
            ids = list(self.prompt_token_ids)
            self._check_fits(field, len(ids), context_length)
            out_of_range = [i for i in ids if i >= vocab_size]
            if out_of_range:
                raise InvalidArgument(field, f"token id {out_of_range[0]} is outside the vocabulary of {vocab_size}")
        else:
            size = len(self.prompt.encode())
            if prompt_bytes_cap is not None and size > prompt_bytes_cap:
                raise InvalidArgument(
                    field,
                    f"{size} bytes of text cannot fit the model's context window of {context_length} tokens "
                    f"(the cap is {prompt_bytes_cap} bytes)",
                )
            ids = tokenizer(self.prompt)["input_ids"]
            if not ids:
                raise InvalidArgument(field, "tokenizes to no tokens")
            self._check_fits(field, len(ids), context_length)
        if len(ids) + self.max_new_tokens > context_length:
            raise InvalidArgument(
                "max_new_tokens",
                f"prompt ({len(ids)} tokens) plus max_new_tokens ({self.max_new_tokens}) exceeds the model's "
                f"context window of {context_length} tokens",
            )
        return ids

    @staticmethod
    def _check_fits(field: str, tokens: int, context_length: int) -> None:
        if tokens >= context_length:
            raise InvalidArgument(
                field, f"{tokens} tokens do not fit the model's context window of {context_length} tokens"
            )
