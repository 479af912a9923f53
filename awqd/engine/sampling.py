"""Next-token choice: greedy at temperature 0, otherwise temperature, top-k and top-p sampling."""

import torch


def choose_token(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator) -> int:
    """logits: [vocab] for the last position."""
    if temperature == 0.0:
        return int(torch.argmax(logits))
    # Shifting the maximum to 0 first keeps a tiny temperature from overflowing to inf (inf - inf is nan in softmax):
    # the scores then tend to 0 for the best tokens and -inf for the rest, the greedy limit.
    logits = logits.float()
    scores = (logits - logits.max()) / temperature
    if 0 < top_k < scores.numel():
        kth_largest = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth_largest, float("-inf"))
    probabilities = torch.softmax(scores, dim=-1)
    if top_p < 1.0:
        sorted_probabilities, order = torch.sort(probabilities, descending=True)
        # Keep the smallest prefix whose mass reaches top_p; the most likely token always survives.
        outside = torch.cumsum(sorted_probabilities, dim=-1) - sorted_probabilities >= top_p
        sorted_probabilities = sorted_probabilities.masked_fill(outside, 0.0)
        probabilities = torch.zeros_like(probabilities).scatter(0, order, sorted_probabilities)
    return int(torch.multinomial(probabilities, 1, generator=generator))
