"""The paged KV cache's block tables (awqd.engine.kv_cache.BlockTables) and swap space (SwapSpace): properties under
random sequences of joins, growth, leaves, preemptions, swap-outs and swap-ins, as the scheduler drives them. The
scheduler's own use of them (preemption on the real model) is in test_engine.py."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from awqd.engine.kv_cache import (
    BLOCK_TOKENS,
    PADDING_BLOCK,
    BlockTables,
    KvCache,
    KvCachePlan,
    SwapSpace,
    allocate,
    blocks_for,
    plan_kv_cache,
    plan_swap_blocks,
    prefix_keys,
)

OWNERS = 6
operations = st.lists(
    st.tuples(
        st.sampled_from(["join", "grow", "leave", "preempt", "swap_out", "swap_in"]),
        st.integers(0, OWNERS - 1),
        st.integers(1, 6 * BLOCK_TOKENS),
    ),
    max_size=80,
)


def small_cache(blocks: int) -> KvCache:
    plan = KvCachePlan(blocks, blocks * BLOCK_TOKENS, 0, "a test")
    return allocate(plan, num_layers=2, num_kv_heads=1, head_dim=2, dtype=torch.float32, device=torch.device("cpu"))


def stamp(cache: KvCache, tables: BlockTables, owner: int) -> None:
    """Writes into each of the owner's blocks, in every layer, k and v values that say whose block it is and where."""
    for index, block in enumerate(tables.table(owner)):
        for layer in range(len(cache.k)):
            cache.k[layer][block] = owner * 1000 + index * 10 + layer
            cache.v[layer][block] = -(owner * 1000 + index * 10 + layer)


def assert_stamped(cache: KvCache, tables: BlockTables, owner: int) -> None:
    for index, block in enumerate(tables.table(owner)):
        for layer in range(len(cache.k)):
            assert torch.all(cache.k[layer][block] == owner * 1000 + index * 10 + layer), "k came back changed"
            assert torch.all(cache.v[layer][block] == -(owner * 1000 + index * 10 + layer)), "v came back changed"


def assert_consistent(tables: BlockTables, lengths: dict[int, int]) -> None:
    """Every owner holds exactly the blocks its tokens need, no block is owned twice or is the padding block, and
    the free count is what is left."""
    owned = [block for owner in range(OWNERS) for block in tables.table(owner)]
    assert len(owned) == len(set(owned)), "a block is owned twice"
    assert all(1 <= block <= tables.blocks for block in owned) and PADDING_BLOCK not in owned
    for owner in range(OWNERS):
        assert len(tables.table(owner)) == (blocks_for(lengths[owner]) if owner in lengths else 0)
    assert tables.used_blocks == len(owned) and tables.free_blocks == tables.blocks - len(owned)


def assert_swap_consistent(swap: SwapSpace, tables: BlockTables, lengths: dict[int, int], swapped: dict[int, int]):
    """A swapped-out owner holds the host blocks its written tokens need and no device block; a running one holds no
    host block; no host block is held twice."""
    held = [block for owner in range(OWNERS) for block in swap.tables.table(owner)]
    assert len(held) == len(set(held)), "a host block is held twice"
    assert all(1 <= block <= swap.tables.blocks for block in held)
    for owner in range(OWNERS):
        assert len(swap.tables.table(owner)) == (blocks_for(swapped[owner]) if owner in swapped else 0)
        assert not (owner in swapped and tables.table(owner)), "a swapped-out owner holds device blocks"
    assert swap.tables.used_blocks == len(held)


@settings(max_examples=300, deadline=None)
@given(blocks=st.integers(1, 24), host_blocks=st.integers(0, 24), ops=operations)
def test_no_block_is_leaked_or_double_owned(blocks, host_blocks, ops):
    tables = BlockTables(blocks)
    cache = small_cache(blocks)
    swap = SwapSpace(cache, host_blocks)
    lengths: dict[int, int] = {}  # tokens each running owner's table covers
    swapped: dict[int, int] = {}  # tokens each swapped-out owner's host blocks hold
    for op, owner, tokens in ops:
        if op == "join" and owner not in lengths and owner not in swapped:
            fits = blocks_for(tokens) <= tables.free_blocks
            assert tables.grow(owner, tokens) == fits
            if fits:
                lengths[owner] = tokens
                stamp(cache, tables, owner)
        elif op == "grow" and owner in lengths:
            target = lengths[owner] + tokens
            fits = blocks_for(target) - blocks_for(lengths[owner]) <= tables.free_blocks
            before = list(tables.table(owner))
            assert tables.grow(owner, target) == fits
            if fits:
                lengths[owner] = target
                assert tables.table(owner)[: len(before)] == before, "growing never moves a position's block"
                stamp(cache, tables, owner)
            else:
                assert tables.table(owner) == before, "a failed grow takes nothing"
        elif op == "leave":  # ends, running or swapped out (a cancelled preempted sequence)
            assert tables.release(owner) == (blocks_for(lengths.pop(owner)) if owner in lengths else 0)
            assert swap.release(owner) == (blocks_for(swapped.pop(owner)) if owner in swapped else 0)
        elif op == "preempt" and owner in lengths:  # by recompute: the device blocks go, nothing is kept
            assert tables.release(owner) == blocks_for(lengths.pop(owner))
        elif op == "swap_out" and owner in lengths:  # by swap, or by recompute where the swap space is full
            fits = len(tables.table(owner)) <= swap.tables.free_blocks
            assert swap.swap_out(owner, tables.table(owner)) == fits
            if fits:
                swapped[owner] = lengths[owner]
            else:
                assert not swap.holds(owner), "a swap-out that does not fit takes nothing"
            tables.release(owner)
            del lengths[owner]
        elif op == "swap_in" and owner in swapped:
            if tables.grow(owner, swapped[owner]):
                swap.swap_in(owner, tables.table(owner))
                lengths[owner] = swapped.pop(owner)
                assert_stamped(cache, tables, owner)  # in new device blocks, with the same bits
                # (no decode runs here, so the blocks keep what they had when stamped before the swap-out)
            else:
                assert not tables.table(owner), "a failed grow takes nothing"
        assert_consistent(tables, lengths)
        assert_swap_consistent(swap, tables, lengths, swapped)
    # What is free is really free: one new owner can take all of it, and then every block is owned exactly once.
    assert tables.grow("last", tables.free_blocks * BLOCK_TOKENS)
    every = [block for owner in [*range(OWNERS), "last"] for block in tables.table(owner)]
    assert sorted(every) == list(range(1, blocks + 1))
    assert not tables.grow("one more", 1)
    assert swap.tables.free_blocks == host_blocks - sum(blocks_for(tokens) for tokens in swapped.values())


def test_capacity_is_the_budget_in_whole_blocks():
    import torch

    plan = plan_kv_cache(bytes_per_token=100, context_length=512, device=torch.device("cpu"), fraction=0.9,
                         cpu_tokens=16384)  # fmt: skip
    assert plan.blocks == 16384 // BLOCK_TOKENS and plan.capacity_tokens == 16384
    assert plan.bytes == (plan.blocks + 1) * BLOCK_TOKENS * 100  # and the padding block
    assert plan.max_seq_len == 512 and plan.max_blocks_per_seq == 512 // BLOCK_TOKENS
    small = plan_kv_cache(100, 512, torch.device("cpu"), 0.9, 4 * BLOCK_TOKENS + 5)
    assert small.blocks == 4 and small.max_seq_len == 4 * BLOCK_TOKENS  # the cache, not the context, bounds it


def test_swap_space_is_the_budget_in_whole_blocks_capped_at_the_cache():
    plan = plan_kv_cache(bytes_per_token=1024, context_length=512, device=torch.device("cpu"), fraction=0.9,
                         cpu_tokens=64 * BLOCK_TOKENS)  # fmt: skip
    block_bytes = BLOCK_TOKENS * 1024
    assert plan_swap_blocks(plan, 1024, 10 * block_bytes / 2**30) == 10
    assert plan_swap_blocks(plan, 1024, 10.5 * block_bytes / 2**30) == 10
    assert plan_swap_blocks(plan, 1024, 4.0) == plan.blocks == 64  # no more host blocks than device blocks
    assert plan_swap_blocks(plan, 1024, 0.0) == 0
    swap = SwapSpace(small_cache(4), 3)
    assert swap.bytes == 2 * 2 * 3 * 1 * BLOCK_TOKENS * 2 * 4  # k and v, 2 layers, 3 blocks, float32
    assert not swap.swap_out("owner", [])  # nothing written: nothing to keep


def test_swapped_blocks_come_back_bit_for_bit_through_a_fragmented_swap_space():
    """Host blocks freed in the middle of the pool are handed out again, so a sequence's host blocks can be
    non-consecutive rows: each run of rows is copied to and from its own place, and no one else's is touched."""
    cache, tables = small_cache(12), BlockTables(12)
    swap = SwapSpace(cache, 8)
    for owner, tokens in enumerate([2 * BLOCK_TOKENS, BLOCK_TOKENS, 2 * BLOCK_TOKENS, 3 * BLOCK_TOKENS]):
        assert tables.grow(owner, tokens)
        stamp(cache, tables, owner)
    for owner in range(3):
        assert swap.swap_out(owner, tables.table(owner))
        tables.release(owner)
    assert tables.grow(0, 2 * BLOCK_TOKENS)
    swap.swap_in(0, tables.table(0))  # frees host rows 0 and 1, between nothing and owner 1's row 2
    assert swap.swap_out(3, tables.table(3))
    tables.release(3)
    assert [block - 1 for block in swap.tables.table(3)] == [0, 1, 5], "the test meant a fragmented swap space"
    for owner in (3, 1, 2):
        assert tables.grow(owner, len(swap.tables.table(owner)) * BLOCK_TOKENS)
        swap.swap_in(owner, tables.table(owner))
    for owner in range(4):
        assert_stamped(cache, tables, owner)
    assert swap.tables.used_blocks == 0 and swap.tables.free_blocks == 8


FAMILIES = 3  # prompts of one family start with the same tokens; of two families, they share none


def family_prompt(family: int, tokens: int) -> list[int]:
    return [family * 10_000 + position for position in range(tokens)]


def block_stamp(family: int, index: int) -> float:
    return float(family * 100 + index + 1)


@settings(max_examples=300, deadline=None)
@given(
    blocks=st.integers(1, 24),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["join", "join", "leave"]),
            st.integers(0, OWNERS - 1),
            st.integers(0, FAMILIES - 1),
            st.integers(1, 5 * BLOCK_TOKENS),
        ),
        max_size=80,
    ),
)
def test_shared_prefix_blocks_hold_their_prompts_kv_and_are_neither_leaked_nor_reused_while_held(blocks, ops):
    """Prompts join as the scheduler admits them: the cached blocks of their start are shared, the prefill writes the
    rest (stamped here with the family and block index), and its full blocks are published. Every table must then
    read its own prompt's k/v in every block, shared or not, whatever was evicted or reused; a block is held by
    exactly the tables that list it; and what is free (cached blocks included) is really free."""
    tables = BlockTables(blocks)
    cache = small_cache(blocks)
    joined: dict[int, tuple[int, int]] = {}  # owner -> (family, tokens)
    for op, owner, family, tokens in ops:
        if op == "join" and owner not in joined:
            prompt = family_prompt(family, tokens)
            keys = prefix_keys(prompt, tokens // BLOCK_TOKENS)
            prefix = tables.cached_prefix(keys[: (tokens - 1) // BLOCK_TOKENS])
            if tables.blocks_needed(tokens + 1, prefix) > tables.free_blocks:
                continue
            tables.share(owner, prefix)
            assert tables.grow(owner, tokens + 1)
            for index, block in enumerate(tables.table(owner)[len(prefix) :], start=len(prefix)):
                cache.k[0][block] = block_stamp(family, index)  # the prefill writes what the cache does not hold
            tables.publish(owner, keys)
            joined[owner] = (family, tokens)
        elif op == "leave" and owner in joined:
            assert tables.release(owner) == blocks_for(joined.pop(owner)[1] + 1)
        held = [block for owner in joined for block in tables.table(owner)]
        assert PADDING_BLOCK not in held and all(1 <= block <= blocks for block in held)
        assert tables.used_blocks == len(set(held)), "a held block is counted as free, or a free one as held"
        assert tables.free_blocks + tables.used_blocks == blocks and tables.cached_blocks <= tables.free_blocks
        for owner, (family, tokens) in joined.items():
            table = tables.table(owner)
            assert len(table) == blocks_for(tokens + 1) and len(set(table)) == len(table)
            for index, block in enumerate(table):
                assert cache.k[0][block].flatten()[0] == block_stamp(family, index), "a block lost its k/v"
    # What is free is really free: one new owner takes all of it, cached blocks included.
    assert tables.grow("last", tables.free_blocks * BLOCK_TOKENS)
    assert tables.cached_blocks == 0 and tables.free_blocks == 0
    every = {block for owner in [*joined, "last"] for block in tables.table(owner)}
    assert every == set(range(1, blocks + 1))
    # Reusing a cached block unpublished it: only blocks still held are found.
    still_held = {block for owner in joined for block in tables.table(owner)}
    for family in range(FAMILIES):
        assert set(tables.cached_prefix(prefix_keys(family_prompt(family, 5 * BLOCK_TOKENS), 5))) <= still_held


def test_a_released_prompts_blocks_stay_cached_until_a_new_block_needs_them():
    tables = BlockTables(4)
    prompt = family_prompt(1, 2 * BLOCK_TOKENS + 3)  # two full blocks and a partial one
    keys = prefix_keys(prompt, 2)
    assert tables.grow("first", len(prompt) + 1)
    tables.publish("first", keys)
    first = tables.table("first")
    assert tables.release("first") == 3
    assert (tables.cached_blocks, tables.free_blocks, tables.used_blocks) == (2, 4, 0)
    assert tables.cached_prefix(keys) == first[:2]
    assert tables.cached_prefix(prefix_keys(family_prompt(2, 2 * BLOCK_TOKENS), 2)) == []
    # A longer prompt with the same start takes the cached blocks and one more.
    longer = prefix_keys(family_prompt(1, 3 * BLOCK_TOKENS + 1), 3)
    prefix = tables.cached_prefix(longer)
    assert prefix == first[:2] and tables.blocks_needed(3 * BLOCK_TOKENS + 2, prefix) == 4
    tables.share("second", prefix)
    assert tables.grow("second", 3 * BLOCK_TOKENS + 2)
    assert tables.table("second")[:2] == first[:2] and tables.cached_blocks == 0
    # While held, a cached prefix counts once: another owner sharing it needs only its own blocks.
    assert tables.blocks_needed(2 * BLOCK_TOKENS + 1, tables.cached_prefix(keys)) == 1
    tables.release("second")
    # With nothing else free, a new block evicts the least recently released cached block, and its key is gone.
    assert tables.grow("big", 4 * BLOCK_TOKENS)
    assert tables.cached_blocks == 0 and tables.cached_prefix(keys) == []


def test_a_cache_salt_changes_every_key_and_the_same_salt_gives_the_same_keys():
    prompt = family_prompt(1, 3 * BLOCK_TOKENS)
    plain, salted, again, other = (prefix_keys(prompt, 3, salt=salt) for salt in ("", "a", "a", "b"))
    assert salted == again and len(set(plain + salted + other)) == 9
    assert prefix_keys(prompt, 3, salted[:1], salt="a") == salted  # later blocks chain on the known ones
