"""Attention, both halves of a step.

Decode attention: one new token per row, rotary applied, its k and v written to the row's sequence in the paged
KV cache (awqd.engine.kv_cache) through its block table, attending over the sequence's positions 0..position (or
the sliding window). On the GPU it is one Triton kernel per step and layer (awqd.engine.layers.triton_attention).
It walks each row's own positions in fixed steps, so a row's result depends neither on the other rows of the batch
nor on how long they are; no attention span is part of a captured graph. Given split counters, a batch of a few rows
splits each row's positions over several programs per head, as many as the batch's size leaves room for; then a
row's result depends on the batch's size (not on its other rows). The torch version below is the CPU path
and the reference the kernel is tested against.

Prefill attention: rotate_and_store writes the prompts' k and v to the cache; then each prompt's rows attend
causally over that prompt alone, or, after a prefix-cache hit, over its sequence in the cache from position 0.
Several prompts on a GPU go to one variable-length flash-attention call per layer: one SDPA call per prompt cost 64 x
32 launches and about 20 ms of GPU time for a 64-prompt step on an H200, with more on the host
(bench/results/h200-2026-12-02-prefill). A prompt alone after a hit runs in fixed shapes instead, so that its pass
can be a CUDA graph (PaddedSpan).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from awqd.engine.layers.dispatch import use_triton
from awqd.engine.layers.rotary import apply_rotary


@dataclass(frozen=True)
class AttentionShape:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sliding_window: int | None  # attend to at most this many positions back; None: the whole context

    def split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [N, heads, head_dim], k and v [N, kv_heads, head_dim] from the fused projection's output."""
        heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
        return q.view(-1, heads, head_dim), k.view(-1, kv_heads, head_dim), v.view(-1, kv_heads, head_dim)


def decode_attention(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    tables: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    shape: AttentionShape,
    split_counters: torch.Tensor | None,
) -> torch.Tensor:
    """qkv [B, (heads + 2 kv_heads) * head_dim] of B rows at `positions` [B], row i's blocks in tables[i] (int32
    [>= B, blocks per sequence]); cos/sin [context, head_dim] tables; cache_k/v [blocks, kv_heads, block_tokens,
    head_dim]; split_counters int32 [>= B * kv_heads] of zeros, or None for a result independent of B. Returns [B,
    heads * head_dim]."""
    if use_triton(qkv):
        from awqd.engine.layers.triton_attention import decode_attention_rows

        return decode_attention_rows(qkv, positions, tables, cos, sin, cache_k, cache_v, shape, split_counters)
    return decode_attention_torch(qkv, positions, tables, cos, sin, cache_k, cache_v, shape)


def decode_attention_torch(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    tables: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    shape: AttentionShape,
) -> torch.Tensor:
    rows = qkv.shape[0]
    q, k, v = shape.split(qkv)
    q = apply_rotary(q, cos[positions].unsqueeze(1), sin[positions].unsqueeze(1))
    k = apply_rotary(k, cos[positions].unsqueeze(1), sin[positions].unsqueeze(1))
    tables = tables[:rows].long()
    store(cache_k, cache_v, tables, torch.arange(rows, device=qkv.device), positions, k, v)
    span = int(positions.max()) + 1  # eager only (the CPU path is never captured), so a host read is fine
    keys, values = (gather(cache, tables, span) for cache in (cache_k, cache_v))  # [B, kv_heads, span, head_dim]
    attend = torch.arange(span, device=qkv.device)[None, :] <= positions[:, None]
    if shape.sliding_window is not None:
        attend &= torch.arange(span, device=qkv.device)[None, :] > positions[:, None] - shape.sliding_window
    # Grouped-query attention without repeating k/v: each kv head's query group is one batched matmul.
    q = q.view(rows, shape.num_kv_heads, -1, shape.head_dim) * shape.head_dim**-0.5
    scores = torch.matmul(q, keys.transpose(-1, -2)).float()  # scaled before the matmul, so fp16 cannot overflow
    weights = torch.softmax(scores.masked_fill(~attend[:, None, None, :], float("-inf")), dim=-1)
    return torch.matmul(weights.to(values.dtype), values).reshape(rows, -1)


def store(cache_k, cache_v, tables, sequences, positions, k, v) -> None:
    """Row r's k and v [N, kv_heads, head_dim] at position positions[r] of the sequence in tables[sequences[r]]."""
    block_tokens = cache_k.shape[2]
    blocks = tables[sequences, positions // block_tokens].long()
    cache_k[blocks, :, positions % block_tokens] = k
    cache_v[blocks, :, positions % block_tokens] = v


def gather(cache: torch.Tensor, tables: torch.Tensor, span: int) -> torch.Tensor:
    """Positions 0..span-1 of each table's sequence: [rows, kv_heads, span, head_dim]."""
    block_tokens = cache.shape[2]
    blocks = cache[tables[:, : -(-span // block_tokens)]]  # [rows, blocks, kv_heads, block_tokens, head_dim]
    return blocks.transpose(1, 2).flatten(2, 3)[:, :, :span]


def prompt_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: list[int],
    offsets: torch.Tensor | None,
    shape: AttentionShape,
) -> torch.Tensor:
    """Causal attention of each prompt's rows over that prompt (within the sliding window, if any). q [T, heads,
    head_dim], k and v [T, kv_heads, head_dim] hold the prompts' rows one prompt after another, lengths[i] rows
    each; offsets is int32 [N + 1] on q's device, the prompts' first rows and T (needed for several prompts on a
    GPU). Returns [T, heads * head_dim]."""
    if len(lengths) > 1 and offsets is not None and _varlen_flash_serves(q, lengths, shape):
        longest = max(lengths)
        out = torch.ops.aten._flash_attention_forward(q, k, v, offsets, offsets, longest, longest, 0.0, True, False)[0]
        return out.reshape(q.shape[0], -1)
    outputs = [
        causal_attention(*segment, shape.sliding_window)
        for segment in zip(q.split(lengths), k.split(lengths), v.split(lengths), strict=True)
    ]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def ragged_rows(counts: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequences of counts[i] rows laid one after another, on the host: each row's sequence, its index within that
    sequence, and the sequences' first rows and the total (int64 [N + 1])."""
    sizes = torch.tensor(counts)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
    sequences = torch.repeat_interleave(torch.arange(len(counts)), sizes)
    return sequences, torch.arange(int(offsets[-1])) - offsets[:-1][sequences], offsets


@dataclass(frozen=True)
class CachedSpans:
    """Where each prompt's whole sequence lies in the paged cache, for one prefill pass after prefix-cache hits: its
    cached start and its own rows (which rotate_and_store writes there first), as (block, offset) slots, prompt after
    prompt. Built once per pass; every layer gathers its keys and values through it."""

    cached: list[int]  # each prompt's positions before its rows
    spans: list[int]  # each prompt's positions in all: the cached ones and its rows
    blocks: torch.Tensor  # [sum(spans)] each position's block, on the device
    slots: torch.Tensor  # [sum(spans)] its offset in the block
    offsets: torch.Tensor  # int32 [N + 1] the prompts' first positions in the gathered keys, and the total

    @classmethod
    def build(cls, tables: torch.Tensor, lengths: list[int], cached: list[int], block_tokens: int) -> "CachedSpans":
        spans = [start + rows for start, rows in zip(cached, lengths, strict=True)]
        sequences, positions, starts = ragged_rows(spans)
        host = torch.cat([sequences, positions, starts]).to(tables.device, non_blocking=True)
        sequences, positions, starts = host.split([len(positions), len(positions), len(starts)])
        blocks = tables[sequences, positions // block_tokens].long()
        return cls(cached, spans, blocks, positions % block_tokens, starts.int())

    def gather(self, cache: torch.Tensor) -> torch.Tensor:
        """[sum(spans), kv_heads, head_dim] from cache [blocks, kv_heads, block_tokens, head_dim]."""
        return cache[self.blocks, :, self.slots]


def attention_after_cached(
    q: torch.Tensor,
    lengths: list[int],
    offsets: torch.Tensor | None,
    spans: CachedSpans,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    shape: AttentionShape,
) -> torch.Tensor:
    """prompt_attention for prompts whose sequences start with positions already in the cache (a prefix-cache hit):
    prompt i's rows, at positions cached[i]..cached[i]+lengths[i]-1, attend causally over their sequence from
    position 0. q [T, heads, head_dim] as in prompt_attention. Returns [T, heads * head_dim].

    On a GPU it is one variable-length flash-attention call, as for prompts without a hit: given more keys than
    queries, flash aligns the causal mask to the lower right, so a prompt's row r sees its keys 0..cached[i]+r. The
    CPU, and a sequence longer than the sliding window, take one masked SDPA call per prompt."""
    keys, values = spans.gather(cache_k), spans.gather(cache_v)
    if offsets is not None and _varlen_flash_serves(q, spans.spans, shape):
        out = torch.ops.aten._flash_attention_forward(
            q, keys, values, offsets, spans.offsets, max(lengths), max(spans.spans), 0.0, True, False
        )[0]
        return out.reshape(q.shape[0], -1)
    outputs = [
        causal_attention(q_i, k_i, v_i, shape.sliding_window, start)
        for q_i, k_i, v_i, start in zip(
            q.split(lengths), keys.split(spans.spans), values.split(spans.spans), spans.cached, strict=True
        )
    ]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


@dataclass(frozen=True)
class PaddedSpan:
    """One prompt's pass after a prefix-cache hit in shapes fixed by buckets, so that it can be captured as a CUDA
    graph and replayed at any cached start: its rows padded to a row bucket, its sequence gathered into a fixed
    number of key slots. Its sizes live on the device only. The rows and the slots form two variable-length
    sequences: the prompt's rows over its span (cached positions, then its rows), and the padding rows over as
    many slots past the span, read from the padding block, so that every row sees a key and no padding row sees
    the prompt's."""

    blocks: torch.Tensor  # [keys] each slot's block: the span's through the table, the padding block past it
    slots: torch.Tensor  # [keys] its offset in the block
    q_offsets: torch.Tensor  # int32 [3]: 0, the prompt's rows, all rows
    k_offsets: torch.Tensor  # int32 [3]: 0, the span, the span and one slot per padding row

    @classmethod
    def build(
        cls, table: torch.Tensor, offsets: torch.Tensor, keys: int, block_tokens: int, padding_block: int
    ) -> "PaddedSpan":
        """table [blocks per sequence] the prompt's blocks; offsets [6] on the device: q_offsets, then k_offsets."""
        offsets = offsets.int()
        q_offsets, k_offsets = offsets[:3], offsets[3:]
        positions = torch.arange(keys, device=table.device)
        columns = (positions // block_tokens).clamp(max=table.shape[0] - 1)
        blocks = torch.where(positions < k_offsets[1], table[columns].long(), padding_block)
        return cls(blocks, positions % block_tokens, q_offsets, k_offsets)

    def attend(
        self, q: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, shape: AttentionShape
    ) -> torch.Tensor:
        """q [rows, heads, head_dim] over the gathered slots, each row causally over its sequence's keys aligned to
        their end (flash's variable-length convention). Returns [rows, heads * head_dim]."""
        keys, values = cache_k[self.blocks, :, self.slots], cache_v[self.blocks, :, self.slots]
        rows, slots = q.shape[0], keys.shape[0]
        if _varlen_flash_serves(q, [slots], shape):
            flash = torch.ops.aten._flash_attention_forward
            out = flash(q, keys, values, self.q_offsets, self.k_offsets, rows, slots, 0.0, True, False)[0]
            return out.reshape(rows, -1)
        row = torch.arange(rows, device=q.device)
        sequence = (row >= self.q_offsets[1]).long()
        last = self.k_offsets[sequence + 1] - self.q_offsets[sequence + 1] + row  # each row's last key
        column = torch.arange(slots, device=q.device)[None, :]
        mask = (column >= self.k_offsets[sequence][:, None]) & (column <= last[:, None])
        if shape.sliding_window is not None:
            mask &= column > last[:, None] - shape.sliding_window
        q, keys, values = (t.transpose(0, 1).unsqueeze(0) for t in (q, keys, values))
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
        return out[0].transpose(0, 1).reshape(rows, -1)


def _varlen_flash_serves(q: torch.Tensor, lengths: list[int], shape: AttentionShape) -> bool:
    return varlen_flash_serves(q.device, q.dtype, shape, max(lengths))


def varlen_flash_serves(device: torch.device, dtype: torch.dtype, shape: AttentionShape, longest: int) -> bool:
    """Flash attention's own limits (sm80+, fp16/bf16, head_dim a multiple of 8 up to 256); a sequence of `longest`
    keys longer than the sliding window takes the SDPA path, which masks the window explicitly."""
    return (
        device.type == "cuda"
        and dtype in (torch.float16, torch.bfloat16)
        and shape.head_dim % 8 == 0
        and shape.head_dim <= 256
        and torch.cuda.get_device_capability(device) >= (8, 0)
        and (shape.sliding_window is None or longest <= shape.sliding_window)
    )


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None, start: int = 0
) -> torch.Tensor:
    """One sequence's rows q [T, heads, head_dim], at positions start..start+T-1, attending over its keys and values
    k, v [start + T, kv_heads, head_dim] causally, within the sliding window if any; returns [T, heads * head_dim].
    Rows from position 0 with no window cutting in take SDPA's own causal mask; the others an explicit one."""
    rows, span = q.shape[0], k.shape[0]
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, heads, T or span, head_dim]
    if start == 0 and (window is None or span <= window):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    else:
        positions = torch.arange(start, span, device=q.device)[:, None]
        columns = torch.arange(span, device=q.device)[None, :]
        mask = columns <= positions
        if window is not None:
            mask &= columns > positions - window
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    return out[0].transpose(0, 1).reshape(rows, -1)


def rotate_and_store(
    qkv: torch.Tensor,
    sequences: torch.Tensor,
    positions: torch.Tensor,
    tables: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    shape: AttentionShape,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prefill's half of attention before the attention itself: rotary on q and k of every row, and row r's k and
    v stored at position positions[r] of the sequence whose blocks are tables[sequences[r]]. Returns q, k [N,
    heads or kv_heads, head_dim] rotated, and v."""
    if use_triton(qkv):
        from awqd.engine.layers.triton_attention import rotate_and_store_rows

        return rotate_and_store_rows(qkv, sequences, positions, tables, cos, sin, cache_k, cache_v, shape)
    return rotate_and_store_torch(qkv, sequences, positions, tables, cos, sin, cache_k, cache_v, shape)


def rotate_and_store_torch(
    qkv: torch.Tensor,
    sequences: torch.Tensor,
    positions: torch.Tensor,
    tables: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    shape: AttentionShape,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = shape.split(qkv)
    row_cos, row_sin = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
    q, k = apply_rotary(q, row_cos, row_sin), apply_rotary(k, row_cos, row_sin)
    store(cache_k, cache_v, tables, sequences, positions, k, v)
    return q, k, v
