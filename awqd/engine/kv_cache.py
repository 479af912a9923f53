"""The paged KV cache, and the one place that maps sequences to it.

Per layer, k and v are [blocks, kv_heads, BLOCK_TOKENS, head_dim], allocated once per model at load and sized from
free device memory (or a CPU token budget). A sequence owns a list of blocks, its block table: position p of the
sequence lives in block table[p // BLOCK_TOKENS] at offset p % BLOCK_TOKENS. Blocks are taken as a sequence grows
and given back at once when it ends or is preempted; BlockTables is the only code that hands them out.

Block 0 is never handed out: it is the padding block. Decode pads its batch to a bucket, and the padding rows (and
the unused tail of every row of the device-side table) point at block 0, so they write and read only there.

With prefix caching, prompts that start with the same tokens share those whole blocks (BlockTables says how).

SwapSpace is where a preempted sequence's blocks wait in host memory (preemption by swap, awqd.engine.scheduler):
its own BlockTables over a host pool, and the copies out of the device cache and back into it.
"""

import hashlib
from array import array
from collections import OrderedDict
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
    """Which blocks each sequence owns, in position order, and the free list.

    With prefix caching, a full block can be shared. Its key names its tokens and every token before them
    (prefix_keys). It is published once the prefill or decode step that wrote its last position has completed. A later
    sequence whose prompt starts with the same tokens (a system prompt, or a conversation's earlier turns with the
    answers generated then) takes the same blocks instead of new ones. A block is then held by every table that lists
    it. When the last one lets go, a published block keeps its k/v as a cached block, still found by its key, until a
    new block is needed and none is free: then the least recently released cached block is reused. Cached blocks
    count as free. Blocks are written only by a table that holds them alone, before they are published: a prefix hit
    covers whole blocks, and at least the prompt's last token is prefilled again (its logits give the next token).

    Only the scheduler thread changes it; Describe and metrics read the counts.
    """

    def __init__(self, blocks: int):
        self.blocks = blocks
        self._free = list(range(blocks, PADDING_BLOCK, -1))  # a stack: the lowest numbers go out first
        self._tables: dict[Hashable, list[int]] = {}
        self._holders: dict[int, int] = {}  # blocks in some table, and in how many
        self._cached: OrderedDict[int, None] = OrderedDict()  # published blocks no table holds, oldest release first
        self._published: dict[bytes, int] = {}  # prefix key -> block
        self._keys: dict[int, bytes] = {}  # block -> its prefix key, for published blocks

    @property
    def free_blocks(self) -> int:
        return len(self._free) + len(self._cached)

    @property
    def used_blocks(self) -> int:
        return self.blocks - self.free_blocks

    @property
    def cached_blocks(self) -> int:
        """Published blocks no sequence holds: free, but a later prompt with the same prefix can still take them."""
        return len(self._cached)

    def table(self, owner: Hashable) -> list[int]:
        return self._tables.get(owner, [])

    def grow(self, owner: Hashable, tokens: int) -> bool:
        """Makes the owner's table cover positions 0..tokens-1. False, with nothing taken, if too few are free."""
        table = self._tables.setdefault(owner, [])
        missing = blocks_for(tokens) - len(table)
        if missing > self.free_blocks:
            if not table:
                del self._tables[owner]
            return False
        for _ in range(missing):
            block = self._free.pop() if self._free else self._evict()
            self._holders[block] = 1
            table.append(block)
        return True

    def release(self, owner: Hashable) -> int:
        """Gives all the owner's blocks back; returns how many. A published block that no table holds any more is
        kept as a cached block."""
        table = self._tables.pop(owner, [])
        for block in reversed(table):
            self._holders[block] -= 1
            if self._holders[block]:
                continue
            del self._holders[block]
            if block in self._keys:
                self._cached[block] = None
            else:
                self._free.append(block)
        return len(table)

    def cached_prefix(self, keys: list[bytes]) -> list[int]:
        """The published blocks of the longest run of `keys` from the first (prefix_keys of a prompt)."""
        blocks = []
        for key in keys:
            block = self._published.get(key)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def blocks_needed(self, tokens: int, prefix: list[int]) -> int:
        """Free blocks a new table covering `tokens` positions takes when it starts with the cached `prefix`: those
        of the prefix that other tables hold are not taken from the free ones."""
        return blocks_for(tokens) - sum(block in self._holders for block in prefix)

    def share(self, owner: Hashable, prefix: list[int]) -> None:
        """Starts the owner's (empty) table with the blocks of a cached prefix (cached_prefix)."""
        assert not self.table(owner), "a prefix starts a table"
        for block in prefix:
            self._cached.pop(block, None)
            self._holders[block] = self._holders.get(block, 0) + 1
        self._tables[owner] = list(prefix)

    def publish(self, owner: Hashable, keys: list[bytes], first: int = 0) -> None:
        """Makes the owner's blocks first..len(keys)-1, now written for good, findable by their prefix keys. A key
        another block already has keeps that block."""
        for key, block in zip(keys[first:], self.table(owner)[first:], strict=False):
            if key not in self._published and block not in self._keys:
                self._published[key] = block
                self._keys[block] = key

    def _evict(self) -> int:
        block, _ = self._cached.popitem(last=False)
        del self._published[self._keys.pop(block)]
        return block


def prefix_keys(token_ids: list[int], blocks: int, known: list[bytes] | None = None, salt: str = "") -> list[bytes]:
    """The keys of the first `blocks` full blocks of a sequence's tokens: block i's key digests its tokens and block
    i-1's key (the first block's, the salt's), so it names every token from the sequence's start to the block's end,
    and the salt. `known` are the keys of its first blocks, computed before: they are kept, and only the blocks after
    them are digested."""
    keys = list(known or [])
    first = hashlib.blake2b(b"cache salt " + salt.encode(), digest_size=16).digest() if salt else b""
    for index in range(len(keys), blocks):
        tokens = array("q", token_ids[index * BLOCK_TOKENS : (index + 1) * BLOCK_TOKENS]).tobytes()
        keys.append(hashlib.blake2b((keys[-1] if keys else first) + tokens, digest_size=16).digest())
    return keys


def plan_swap_blocks(plan: KvCachePlan, bytes_per_token: int, swap_space_gib: float) -> int:
    """Host blocks `swap_space_gib` holds, capped at the device cache's blocks: what is swapped out was in the device
    cache, so a larger pool would rarely fill (and, pinned, would hold host memory nothing uses)."""
    return min(int(swap_space_gib * 2**30) // (BLOCK_TOKENS * bytes_per_token), plan.blocks)


class SwapSpace:
    """Host memory for the KV blocks of sequences preempted by swap: one pool, [k/v, layer, block, kv_heads,
    BLOCK_TOKENS, head_dim], allocated with the cache and pinned when the cache is on a GPU, so both copies are
    asynchronous DMA ordered on the scheduler's stream with the steps around them.

    A pool rather than one buffer per preempted sequence: pinning host memory is slow and can stall the device, so it
    happens once, at load, and never on a preemption; and the budget is a block count, checked like the device's.
    Which host blocks a sequence holds is a BlockTables too; a sequence holds host blocks only while it is swapped
    out, and device blocks only while it is not.
    """

    def __init__(self, cache: KvCache, blocks: int):
        self.cache = cache
        self.tables = BlockTables(blocks)
        first = cache.k[0]
        self.device = first.device
        shape = (2, len(cache.k), blocks, *first.shape[1:])
        self.host = torch.empty(shape, dtype=first.dtype, pin_memory=self.device.type == "cuda" and blocks > 0)

    @property
    def bytes(self) -> int:
        return self.host.numel() * self.host.element_size()

    def holds(self, owner: Hashable) -> bool:
        return bool(self.tables.table(owner))

    def swap_out(self, owner: Hashable, device_blocks: list[int]) -> bool:
        """Copies every layer's k and v of `device_blocks` into host blocks the owner now holds. False, with nothing
        taken or copied, if too few host blocks are free. The device blocks may be handed out again at once: the
        copy is ordered before anything later on the stream writes them."""
        if not device_blocks or not self.tables.grow(owner, len(device_blocks) * BLOCK_TOKENS):
            return False
        index = torch.tensor(device_blocks, dtype=torch.int64).to(self.device, non_blocking=True)
        runs = self._host_runs(owner)
        for side, layers in enumerate((self.cache.k, self.cache.v)):
            for layer, blocks in enumerate(layers):
                gathered, host = blocks.index_select(0, index), self.host[side, layer]
                for start, row, length in runs:
                    host[row : row + length].copy_(gathered[start : start + length], non_blocking=True)
        return True

    def swap_in(self, owner: Hashable, device_blocks: list[int]) -> None:
        """Copies the owner's host blocks back into the first of `device_blocks`, bit for bit, and frees them."""
        held = len(self.tables.table(owner))
        index = torch.tensor(device_blocks[:held], dtype=torch.int64).to(self.device, non_blocking=True)
        runs = self._host_runs(owner)
        for side, layers in enumerate((self.cache.k, self.cache.v)):
            for layer, blocks in enumerate(layers):
                staged, host = torch.empty_like(blocks[:held]), self.host[side, layer]
                for start, row, length in runs:
                    staged[start : start + length].copy_(host[row : row + length], non_blocking=True)
                blocks.index_copy_(0, index, staged)
        self.tables.release(owner)

    def release(self, owner: Hashable) -> int:
        """Frees the owner's host blocks without copying them back (a swapped-out sequence that ends)."""
        return self.tables.release(owner)

    def _host_runs(self, owner: Hashable) -> list[tuple[int, int, int]]:
        """The owner's host blocks as runs of consecutive pool rows: (index in its table, first row, length), so a
        layer's copy is one transfer per run rather than one per block."""
        runs: list[list[int]] = []
        for index, block in enumerate(self.tables.table(owner)):
            row = block - 1  # BlockTables numbers blocks from 1 (0 is the device's padding block)
            if runs and runs[-1][1] + runs[-1][2] == row:
                runs[-1][2] += 1
            else:
                runs.append([index, row, 1])
        return [(index, row, length) for index, row, length in runs]
