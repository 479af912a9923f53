"""The paged KV cache's block tables (awqd.engine.kv_cache.BlockTables): properties under random sequences of joins,
growth, leaves and preemptions, as the scheduler drives them. The scheduler's own use of them (preemption on the
real model) is in test_engine.py."""

from hypothesis import given, settings
from hypothesis import strategies as st

from awqd.engine.kv_cache import BLOCK_TOKENS, PADDING_BLOCK, BlockTables, blocks_for, plan_kv_cache

OWNERS = 6
operations = st.lists(
    st.tuples(
        st.sampled_from(["join", "grow", "leave", "preempt"]),
        st.integers(0, OWNERS - 1),
        st.integers(1, 6 * BLOCK_TOKENS),
    ),
    max_size=80,
)


def assert_consistent(tables: BlockTables, lengths: dict[int, int]) -> None:
    """Every owner holds exactly the blocks its tokens need, no block is owned twice or is the padding block, and
    the free count is what is left."""
    owned = [block for owner in range(OWNERS) for block in tables.table(owner)]
    assert len(owned) == len(set(owned)), "a block is owned twice"
    assert all(1 <= block <= tables.blocks for block in owned) and PADDING_BLOCK not in owned
    for owner in range(OWNERS):
        assert len(tables.table(owner)) == (blocks_for(lengths[owner]) if owner in lengths else 0)
    assert tables.used_blocks == len(owned) and tables.free_blocks == tables.blocks - len(owned)


@settings(max_examples=300, deadline=None)
@given(blocks=st.integers(1, 24), ops=operations)
def test_no_block_is_leaked_or_double_owned(blocks, ops):
    tables = BlockTables(blocks)
    lengths: dict[int, int] = {}  # tokens each running owner's table covers
    for op, owner, tokens in ops:
        if op == "join" and owner not in lengths:
            fits = blocks_for(tokens) <= tables.free_blocks
            assert tables.grow(owner, tokens) == fits
            if fits:
                lengths[owner] = tokens
        elif op == "grow" and owner in lengths:
            target = lengths[owner] + tokens
            fits = blocks_for(target) - blocks_for(lengths[owner]) <= tables.free_blocks
            before = list(tables.table(owner))
            assert tables.grow(owner, target) == fits
            if fits:
                lengths[owner] = target
                assert tables.table(owner)[: len(before)] == before, "growing never moves a position's block"
            else:
                assert tables.table(owner) == before, "a failed grow takes nothing"
        elif op in ("leave", "preempt"):
            assert tables.release(owner) == (blocks_for(lengths.pop(owner)) if owner in lengths else 0)
        assert_consistent(tables, lengths)
    # What is free is really free: one new owner can take all of it, and then every block is owned exactly once.
    assert tables.grow("last", tables.free_blocks * BLOCK_TOKENS)
    every = [block for owner in [*range(OWNERS), "last"] for block in tables.table(owner)]
    assert sorted(every) == list(range(1, blocks + 1))
    assert not tables.grow("one more", 1)


def test_capacity_is_the_budget_in_whole_blocks():
    import torch

    plan = plan_kv_cache(bytes_per_token=100, context_length=512, device=torch.device("cpu"), fraction=0.9,
                         cpu_tokens=16384)  # fmt: skip
    assert plan.blocks == 16384 // BLOCK_TOKENS and plan.capacity_tokens == 16384
    assert plan.bytes == (plan.blocks + 1) * BLOCK_TOKENS * 100  # and the padding block
    assert plan.max_seq_len == 512 and plan.max_blocks_per_seq == 512 // BLOCK_TOKENS
    small = plan_kv_cache(100, 512, torch.device("cpu"), 0.9, 4 * BLOCK_TOKENS + 5)
    assert small.blocks == 4 and small.max_seq_len == 4 * BLOCK_TOKENS  # the cache, not the context, bounds it
