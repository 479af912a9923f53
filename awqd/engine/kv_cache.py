"""The static KV cache: allocated once per model at load, sized from free device memory (or a CPU token budget).

Per layer, k and v are [slots, kv_heads, max_seq_len, head_dim]. A slot holds one sequence; the decode batch's
row i is slot i (awqd.engine.model), so a slot's length mask, not a gather, selects what a row attends to.
Capacity in tokens is slots x max_seq_len, and Describe reports it.
"""

from dataclasses import dataclass

import torch

from awqd.errors import ResourceExhausted


@dataclass(frozen=True)
class KvCachePlan:
    slots: int  # sequences that can run at once
    max_seq_len: int  # prompt plus generated tokens one sequence may reach
    bytes: int
    source: str  # how the budget was reached, in words

    @property
    def capacity_tokens(self) -> int:
        return self.slots * self.max_seq_len


@dataclass
class KvCache:
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    plan: KvCachePlan


def plan_kv_cache(
    bytes_per_token: int,
    context_length: int,
    device: torch.device,
    fraction: float,
    cpu_tokens: int,
    max_batch_size: int,
) -> KvCachePlan:
    """As many full-context slots as the budget holds, up to max_batch_size; a budget below one context gets one
    shorter slot. CUDA: `fraction` of the device's free memory now (after the weights); CPU: `cpu_tokens`."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget_tokens = int(free * fraction) // bytes_per_token
        source = f"{fraction:.0%} of {free / 2**30:.1f} GiB free on {device} (--kv-cache-fraction)"
    else:
        budget_tokens = cpu_tokens
        source = f"{cpu_tokens} tokens on the CPU (--kv-cache-tokens)"
    if budget_tokens < 1:
        raise ResourceExhausted(f"no memory is left for a KV cache: {source} is below one token")
    slots = max(1, min(max_batch_size, budget_tokens // context_length))
    max_seq_len = min(context_length, budget_tokens // slots)
    return KvCachePlan(slots, max_seq_len, slots * max_seq_len * bytes_per_token, source)


def allocate(plan: KvCachePlan, num_layers: int, num_kv_heads: int, head_dim: int, dtype, device) -> KvCache:
    shape = (plan.slots, num_kv_heads, plan.max_seq_len, head_dim)
    k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
    v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
    return KvCache(k, v, plan)
