"""One generation, step by step: prefill the prompt, then decode a token at a time on a KV cache.

Each forward step's kernel comes from the model's KernelRouter by the number of tokens in the step,
so a long prefill and a one-token decode can run different kernels.
"""

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from awqd.engine.detokenize import IncrementalDecoder, StopMatcher
from awqd.engine.request import GenerateParams
from awqd.engine.sampling import choose_token
from awqd.quant.linear import KernelRouter


@dataclass(frozen=True)
class TokenDelta:
    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class KernelUse:
    phase: str
    batch_tokens: int
    kernel: str
    steps: int


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "length" | "stop" | "eos" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: float
    ms_per_output_token: float
    total_ms: float
    queue_ms: float
    kernels: tuple[KernelUse, ...]
    token_times_ms: tuple[float, ...] = ()  # each sampled token's time after the request arrived, eos included


def generate(
    model,
    tokenizer,
    router: KernelRouter,
    params: GenerateParams,
    prompt_ids: list[int],
    cancelled: threading.Event,
    received_at: float,
) -> Iterator[TokenDelta | Finished]:
    """received_at is a time.perf_counter() reading taken when the request arrived."""
    started_at = time.perf_counter()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    eos_ids = _eos_ids(model, tokenizer)
    decoder = IncrementalDecoder(tokenizer)
    stops = StopMatcher(params.stop)
    cache = DynamicCache()
    step_kernels: Counter[tuple[str, int, str]] = Counter()
    token_times: list[float] = []
    input_ids = torch.tensor([prompt_ids], device=device)
    finish_reason = "length"

    with torch.inference_mode():
        for step in range(params.max_new_tokens):
            if cancelled.is_set():
                finish_reason = "cancelled"
                break
            step_tokens = input_ids.shape[1]
            phase = "prefill" if step == 0 else "decode"
            step_kernels[phase, router.bucket_for(step_tokens), router.candidate_for(step_tokens).name] += 1
            logits = model(input_ids=input_ids, past_key_values=cache, use_cache=True).logits[0, -1]
            token = choose_token(logits, params.temperature, params.top_k, params.top_p or 1.0, generator)
            token_times.append(time.perf_counter())
            if token in eos_ids:
                finish_reason = "eos"
                break
            text, stopped = stops.feed(decoder.push(token))
            yield TokenDelta(text=text, token_ids=(token,))
            if stopped:
                finish_reason = "stop"
                break
            input_ids = torch.tensor([[token]], device=device)

    if finish_reason in ("length", "eos") and (tail := stops.flush()):
        yield TokenDelta(text=tail, token_ids=())
    del cache
    finished_at = time.perf_counter()
    completion_tokens = len(token_times) - (finish_reason == "eos")
    yield Finished(
        finish_reason=finish_reason,
        prompt_tokens=len(prompt_ids),
        completion_tokens=completion_tokens,
        time_to_first_token_ms=(token_times[0] - received_at) * 1000 if token_times else 0.0,
        ms_per_output_token=(token_times[-1] - token_times[0]) * 1000 / (len(token_times) - 1)
        if len(token_times) > 1
        else 0.0,
        total_ms=(finished_at - received_at) * 1000,
        queue_ms=(started_at - received_at) * 1000,
        kernels=tuple(
            KernelUse(phase=phase, batch_tokens=bucket, kernel=kernel, steps=steps)
            for (phase, bucket, kernel), steps in step_kernels.items()
        ),
        token_times_ms=tuple((t - received_at) * 1000 for t in token_times),
    )


def _eos_ids(model, tokenizer) -> set[int]:
    configured = model.generation_config.eos_token_id if model.generation_config else None
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
