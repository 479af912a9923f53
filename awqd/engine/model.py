"""A plain-torch Llama-family decoder (Llama, Mistral, Qwen2) over a loaded model's weights.

It runs on the weights the fused loader installed (awqd.models.loader with fuse=True): per decoder layer four
quantized linears (qkv, o, gate_up, down) that all route through the model's shared KernelRouter, with the
embedding, the RMS norms and lm_head dense. Two entry points share one layer body:

- prefill: several prompts, each into its own KV-cache slot, in one pass over their concatenated tokens (so
  each linear runs once on all of them), with causal attention within each prompt;
- decode: one token for each of B rows, where row i is KV-cache slot i, attending over its slot's first
  `span` positions with a length mask. decode only reads and writes static tensors, so it can be captured as
  a CUDA graph (awqd.engine.step).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig

from awqd.engine.kv_cache import KvCache
from awqd.errors import CheckpointError
from awqd.models.loader import LoadedModel

STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # rope types whose frequencies do not change per step


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    sliding_window: int | None  # attend to at most this many positions back; None: the whole context

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> "ModelShape":
        if getattr(config, "hidden_act", "silu") != "silu":
            raise CheckpointError(f"config.json: hidden_act {config.hidden_act!r}: awqd's engine runs silu MLPs")
        window = getattr(config, "sliding_window", None)
        if not getattr(config, "use_sliding_window", True):  # Qwen2 carries a window it does not use
            window = None
        return cls(
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            vocab_size=config.vocab_size,
            rms_norm_eps=config.rms_norm_eps,
            sliding_window=window,
        )

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * dtype.itemsize


class DecoderModel:
    def __init__(self, loaded: LoadedModel):
        if not loaded.fused:
            raise ValueError("the engine runs on a model loaded with fuse=True")
        hf = loaded.model
        self.shape = ModelShape.from_config(loaded.config)
        self.device = loaded.device
        self.embed = hf.model.embed_tokens.weight
        self.final_norm = hf.model.norm.weight
        self.lm_head = hf.lm_head.weight
        self.dtype = self.embed.dtype
        self.layers = [
            (
                layer.input_layernorm.weight,
                layer.self_attn.qkv_proj,
                layer.self_attn.o_proj,
                layer.post_attention_layernorm.weight,
                layer.mlp.gate_up_proj,
                layer.mlp.down_proj,
            )
            for layer in hf.model.layers
        ]
        self.cos, self.sin = rotary_tables(hf.model.rotary_emb, loaded.context_length, self.device, self.dtype)

    def prefill(self, prompts: list[torch.Tensor], slots: list[int], cache: KvCache) -> torch.Tensor:
        """prompts[i] [T_i] at positions 0..T_i-1 into slots[i]; returns each prompt's last-position logits [N, vocab].

        The prompts run as one sequence of sum(T_i) rows: every linear runs once on all of them, so the kernel
        router picks by that total. Only attention looks at where one prompt ends and the next begins.
        """
        lengths = [prompt.shape[0] for prompt in prompts]
        # Each row's slot and its position within its own prompt, built on the host and copied once.
        rows = torch.tensor(
            [(slot, position) for slot, length in zip(slots, lengths, strict=True) for position in range(length)]
        ).to(self.device, non_blocking=True)
        row_slots, positions = rows[:, 0], rows[:, 1]

        def attention(layer: int, q, k, v) -> torch.Tensor:
            return self._prefill_attention(layer, q, k, v, cache, row_slots, positions, lengths)

        hidden = self._forward(torch.cat(prompts), positions, attention)
        last_rows = torch.tensor(lengths, device=self.device).cumsum(0) - 1
        return self._logits(hidden[last_rows])

    def decode(self, token_ids: torch.Tensor, positions: torch.Tensor, cache: KvCache, span: int) -> torch.Tensor:
        """Row i of token_ids [B] and positions [B] is slot i; returns logits [B, vocab].

        Attention reads each slot's first `span` positions (span > every row's position), masked to the row's own
        length, so one captured graph serves every batch whose positions stay below its span.
        """
        mask = self._decode_mask(positions, span)
        slots = torch.arange(token_ids.shape[0], device=self.device)

        def attention(layer: int, q, k, v) -> torch.Tensor:
            return self._decode_attention(layer, q, k, v, slots, positions, mask, cache, span)

        hidden = self._forward(token_ids, positions, attention)
        return self._logits(hidden)

    def _forward(self, token_ids: torch.Tensor, positions: torch.Tensor, attention) -> torch.Tensor:
        shape = self.shape
        heads, kv_heads, head_dim = shape.num_heads, shape.num_kv_heads, shape.head_dim
        x = F.embedding(token_ids, self.embed)
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)  # [N, 1, head_dim]
        for index, (input_norm, qkv_proj, o_proj, post_norm, gate_up_proj, down_proj) in enumerate(self.layers):
            qkv = qkv_proj(rms_norm(x, input_norm, shape.rms_norm_eps))
            q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
            q = apply_rotary(q.view(-1, heads, head_dim), cos, sin)
            k = apply_rotary(k.view(-1, kv_heads, head_dim), cos, sin)
            x = x + o_proj(attention(index, q, k, v.view(-1, kv_heads, head_dim)))
            gate, up = gate_up_proj(rms_norm(x, post_norm, shape.rms_norm_eps)).chunk(2, dim=-1)
            x = x + down_proj(F.silu(gate) * up)
        return x

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(rms_norm(hidden, self.final_norm, self.shape.rms_norm_eps), self.lm_head)

    def _prefill_attention(self, layer: int, q, k, v, cache: KvCache, row_slots, positions, lengths) -> torch.Tensor:
        """q, k, v: the concatenated prompts' rows. Row r's k/v go to slot row_slots[r] at positions[r], all rows in
        one write; attention then runs prompt by prompt, as each attends only to itself."""
        cache.k[layer][row_slots, :, positions] = k
        cache.v[layer][row_slots, :, positions] = v
        segments = zip(q.split(lengths), k.split(lengths), v.split(lengths), strict=True)
        return torch.cat([self._causal_attention(*segment) for segment in segments])

    def _causal_attention(self, q, k, v) -> torch.Tensor:
        """One prompt's rows attending over the prompt itself (within the sliding window, if any)."""
        length = q.shape[0]
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, heads, T, head_dim]
        window = self.shape.sliding_window
        if window is not None and length > window:
            rows = torch.arange(length, device=self.device)
            mask = (rows[None, :] <= rows[:, None]) & (rows[None, :] > rows[:, None] - window)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return out[0].transpose(0, 1).reshape(length, -1)

    def _decode_mask(self, positions: torch.Tensor, span: int) -> torch.Tensor:
        """[B, 1, 1, span]: True where a row may attend."""
        keys = torch.arange(span, device=self.device)
        mask = keys[None, :] <= positions[:, None]
        if self.shape.sliding_window is not None:
            mask &= keys[None, :] > positions[:, None] - self.shape.sliding_window
        return mask[:, None, None, :]

    def _decode_attention(self, layer: int, q, k, v, slots, positions, mask, cache: KvCache, span: int):
        rows = q.shape[0]
        kv_heads, head_dim = self.shape.num_kv_heads, self.shape.head_dim
        cache.k[layer][slots, :, positions] = k
        cache.v[layer][slots, :, positions] = v
        keys = cache.k[layer][:rows, :, :span]  # views of the cache: [B, kv_heads, span, head_dim], no copy
        values = cache.v[layer][:rows, :, :span]
        # Grouped-query attention without repeating k/v: each kv head's query group is one batched matmul.
        q = q.view(rows, kv_heads, -1, head_dim) * head_dim**-0.5  # [B, kv_heads, group, head_dim]; scaled
        scores = torch.matmul(q, keys.transpose(-1, -2)).float()  # before the matmul, so fp16 cannot overflow
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).to(values.dtype)
        return torch.matmul(weights, values).reshape(rows, -1)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As transformers' LlamaRMSNorm: normalize in float32, scale in the model's dtype."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rotary_tables(rotary_emb, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """cos and sin [length, head_dim] from the checkpoint's own rotary module (rope_theta and scaling included)."""
    rope_type = getattr(rotary_emb, "rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        raise CheckpointError(f"config.json: rope_scaling type {rope_type!r} is not supported by awqd's engine")
    positions = torch.arange(length, device=device, dtype=torch.float32)
    freqs = torch.outer(positions, rotary_emb.inv_freq.to(device=device, dtype=torch.float32))
    angles = torch.cat((freqs, freqs), dim=-1)
    scaling = rotary_emb.attention_scaling
    return (angles.cos() * scaling).to(dtype), (angles.sin() * scaling).to(dtype)
