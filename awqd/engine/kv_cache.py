"""The paged KV cache, and the one place that maps sequences to it.

Per layer, k and v are [blocks, kv_heads, BLOCK_TOKENS, head_dim], allocated once per model at load and sized from
free device memory (or a CPU token budget). A sequence owns a list of blocks, its block table: position p of the
sequence lives in block table[p // BLOCK_TOKENS] at offset p % BLOCK_TOKENS. Blocks are taken as a sequence grows
and given back at once when it ends or is preempted; BlockTables is the only code that hands them out.

Block 0 is never handed out: it is the padding block. Decode pads its batch to a bucket, and the padding rows (and
the unused tail of every row of the device-side table) point at block 0, so they write and read only there.
"""

from collections.abc import Hashable
from dataclasses import dataclass

import torch

from awqd.errors import ResourceExhausted

BLOCK_TOKENS = 16  # positions per block: 16 wastes at most 15 per sequence and keeps the tables short
PADDING_BLOCK = 0


def blocks_for(tokens: int) -> int:
    return -(-tokens // BLOCK_TOKENS)


@dataclass(frozen=True)
class KvCachePlan:
    blocks: int  # blocks sequences can own (the padding block comes on top)
    max_seq_len: int  # prompt plus generated tokens one sequence may reach: the context, if the cache holds it
    bytes: int
    source: str  # how the budget was reached, in words

    @property
    def block_tokens(self) -> int:
        return BLOCK_TOKENS

    @property
    def capacity_tokens(self) -> int:
        return self.blocks * BLOCK_TOKENS

    @property
    def max_blocks_per_seq(self) -> int:
        return blocks_for(self.max_seq_len)


@dataclass
class KvCache:
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    plan: KvCachePlan


def plan_kv_cache(
    bytes_per_token: int, context_length: int, device: torch.device, fraction: float, cpu_tokens: int
) -> KvCachePlan:
    """As many blocks as the budget holds. CUDA: `fraction` of the device's free memory now (after the weights);
    CPU: `cpu_tokens`."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget_tokens = int(free * fraction) // bytes_per_token
        source = f"{fraction:.0%} of {free / 2**30:.1f} GiB free on {device} (--kv-cache-fraction)"
    else:
        budget_tokens = cpu_tokens
        source = f"{cpu_tokens} tokens on the CPU (--kv-cache-tokens)"
    blocks = budget_tokens // BLOCK_TOKENS  # the padding block comes on top
    if blocks < 1:
        raise ResourceExhausted(f"no memory is left for a KV cache: {source} is below one {BLOCK_TOKENS}-token block")
    max_seq_len = min(context_length, blocks * BLOCK_TOKENS)
    return KvCachePlan(blocks, max_seq_len, (blocks + 1) * BLOCK_TOKENS * bytes_per_token, source)


def allocate(plan: KvCachePlan, num_layers: int, num_kv_heads: int, head_dim: int, dtype, device) -> KvCache:
    shape = (plan.blocks + 1, num_kv_heads, BLOCK_TOKENS, head_dim)
    k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
    v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
    return KvCache(k, v, plan)


class BlockTables:
    """Which blocks each sequence owns, in position order, and the free list. A block has one owner or is free.

    Only the scheduler thread changes it; Describe and metrics read the counts.
    """

    def __init__(self, blocks: int):
        self.blocks = blocks
        self._free = list(range(blocks, PADDING_BLOCK, -1))  # a stack: the lowest numbers go out first
        self._tables: dict[Hashable, list[int]] = {}

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def used_blocks(self) -> int:
        return self.blocks - len(self._free)

    def table(self, owner: Hashable) -> list[int]:
        return self._tables.get(owner, [])

    def grow(self, owner: Hashable, tokens: int) -> bool:
        """Makes the owner's table cover positions 0..tokens-1. False, with nothing taken, if too few are free."""
        table = self._tables.setdefault(owner, [])
        missing = blocks_for(tokens) - len(table)
        if missing > len(self._free):
            if not table:
                del self._tables[owner]
            return False
        for _ in range(missing):
            table.append(self._free.pop())
        return True

    def release(self, owner: Hashable) -> int:
        """Gives all the owner's blocks back; returns how many."""
        table = self._tables.pop(owner, [])
        self._free.extend(reversed(table))
        return len(table)
