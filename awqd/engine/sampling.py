"""Next-token choice for a whole batch on the device: greedy at temperature 0, otherwise temperature, top-k and
top-p sampling, each row with its own settings and seed.

Sampling uses the exponential race (argmax of p / E with E ~ Exp(1)), which draws exactly from p. The noise is
counter-based: a hash of (row seed, row step, token id), so a seeded request gives the same tokens whatever
else shares its batch, and no generator state lives on the host. The caller copies the chosen ids to the host
once per step; nothing here synchronizes.
"""

from dataclasses import dataclass

import torch

MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class RowSampling:
    temperature: float  # 0: greedy
    top_k: int  # 0: no limit
    top_p: float  # 1: no limit
    seed: int  # 64-bit


@dataclass
class SamplingBatch:
    """Per-row settings as device tensors, for rows 0..B-1."""

    temperature: torch.Tensor  # float32 [B]
    top_k: torch.Tensor  # int64 [B], 0 means the whole vocabulary
    top_p: torch.Tensor  # float32 [B]
    seed: torch.Tensor  # int64 [B], 32-bit values
    step: torch.Tensor  # int64 [B], 32-bit values: the row's count of sampled tokens so far
    greedy: bool  # every row is greedy: argmax only

    @classmethod
    def build(cls, rows: list[RowSampling], steps: list[int], device: torch.device) -> "SamplingBatch":
        greedy = all(row.temperature == 0.0 for row in rows)
        if greedy:
            empty = torch.empty(0, device=device)
            return cls(empty, empty, empty, empty, empty, True)
        host = torch.tensor(
            [[row.top_k, fold32(row.seed), step & MASK32] for row, step in zip(rows, steps, strict=True)],
            dtype=torch.int64,
        )
        floats = torch.tensor([[row.temperature, row.top_p] for row in rows], dtype=torch.float32)
        host, floats = host.to(device, non_blocking=True), floats.to(device, non_blocking=True)
        return cls(floats[:, 0], host[:, 0], floats[:, 1], host[:, 1], host[:, 2], False)


def fold32(seed: int) -> int:
    return (seed ^ (seed >> 32)) & MASK32


def choose_tokens(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """logits [B, vocab] -> token ids [B] (int64, on the device)."""
    greedy_ids = torch.argmax(logits, dim=-1)
    if batch.greedy:
        return greedy_ids
    logits = logits.float()
    is_greedy = batch.temperature == 0.0
    temperature = torch.where(is_greedy, 1.0, batch.temperature)
    # Shifting the maximum to 0 first keeps a tiny temperature from overflowing to inf (inf - inf is nan in
    # softmax): the scores then tend to 0 for the best tokens and -inf for the rest, the greedy limit.
    scores = (logits - logits.max(dim=-1, keepdim=True).values) / temperature[:, None]
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
    vocab = scores.shape[-1]
    ranks = torch.arange(vocab, device=logits.device)
    top_k = torch.where(batch.top_k > 0, batch.top_k.clamp(max=vocab), vocab)
    kth_score = sorted_scores.gather(1, (top_k - 1)[:, None])
    sorted_scores = sorted_scores.masked_fill(sorted_scores < kth_score, float("-inf"))
    probabilities = torch.softmax(sorted_scores, dim=-1)
    # Keep the smallest prefix whose mass reaches top_p; the most likely token always survives.
    outside = torch.cumsum(probabilities, dim=-1) - probabilities >= batch.top_p[:, None]
    probabilities = probabilities.masked_fill(outside & (ranks > 0), 0.0)
    noise = exponential_noise(batch.seed, batch.step, order)
    chosen = order.gather(1, torch.argmax(probabilities / noise, dim=-1, keepdim=True))[:, 0]
    return torch.where(is_greedy, greedy_ids, chosen)


def exponential_noise(seed: torch.Tensor, step: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Exp(1) noise [B, vocab] from a hash of (seed, step, token id); float32, strictly positive."""
    x = hash32(seed[:, None] ^ hash32(mul32(step[:, None], 0x9E3779B1) ^ token_ids))
    uniform = ((x >> 8).float() + 0.5) / 2**24  # 24 bits: exact in float32, in (0, 1)
    return -torch.log(uniform)


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (lowbias32) on int64 tensors holding 32-bit values; every product stays exact."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 without int64 overflow: split the constant into 16-bit halves."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + ((x * high) & 0xFFFF) * 65536) & MASK32
