"""A plain-torch Llama-family decoder (Llama, Mistral, Qwen2) over a loaded model's weights.

It runs on the weights the fused loader installed (awqd.models.loader with fuse=True): per decoder layer four
quantized linears (qkv, o, gate_up, down) that all route through the model's shared KernelRouter, with the
embedding, the RMS norms and lm_head dense. Two entry points share one layer body:

- prefill: several prompts, each into its own sequence's blocks of the paged KV cache (awqd.engine.kv_cache), in
  one pass over their concatenated tokens (so each linear runs once on all of them), with causal attention within
  each prompt;
- score: one sequence's logits at every position, teacher-forced, without the KV cache and with each quantized
  linear run by a caller-given function instead of the shared router: a QUALITY benchmark pins a kernel this way
  while the engine keeps serving (awqd.benchmark.quality);
- decode: one token for each of B rows, row i reading and writing the blocks named in row i of the block tables,
  attending over its sequence's positions up to its own. decode only reads and writes static tensors, so it can
  be captured as a CUDA graph (awqd.engine.step).

The residual adds, norms, rotary, decode attention and gating are awqd.engine.layers: one Triton kernel each on
the GPU, torch on the CPU. Where the kernel routed for gate_up ends in the gating itself (awqd's GEMV), the gating
runs in that kernel instead (gate). Where the kernel routed for o and down also has a deferred-norm form (awqd's
GEMV), the residual add and the next norm run in that launch and the next linear's, without a norm launch
(add_norm_after).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig

from awqd.engine.kv_cache import PADDING_BLOCK, KvCache
from awqd.engine.layers.activation import silu_and_mul
from awqd.engine.layers.attention import (
    AttentionShape,
    CachedSpans,
    PaddedSpan,
    attention_after_cached,
    causal_attention,
    decode_attention,
    prompt_attention,
    ragged_rows,
    rotate_and_store,
)
from awqd.engine.layers.logits import logits
from awqd.engine.layers.norm import add_rms_norm
from awqd.engine.layers.rotary import apply_rotary, rotary_tables
from awqd.errors import CheckpointError
from awqd.kernels.base import DeferredNorm
from awqd.kernels.linear import AwqLinear
from awqd.models.loader import LoadedModel

# Runs one quantized linear on its input; the default is the layer itself, i.e. the model's router.
Project = Callable[[AwqLinear, torch.Tensor], torch.Tensor]


def through_router(linear: AwqLinear, x: torch.Tensor) -> torch.Tensor:
    return linear(x)


# A sublayer's normed input: the normed rows, or their norm deferred into the next linear's launch (add_norm_after).
Normed = torch.Tensor | DeferredNorm


def apply(linear: AwqLinear, h: Normed, project: Project) -> torch.Tensor:
    """linear on a sublayer's normed input, in whichever form it comes."""
    return linear.forward_deferred(h) if isinstance(h, DeferredNorm) else project(linear, h)


def gate(gate_up_proj: AwqLinear, h: Normed, project: Project) -> torch.Tensor:
    """silu(gate) * up of the fused gate_up projection: in the routed kernel's epilogue where it has one (a launch
    fewer per layer), else the gating kernel after the projection. A caller's own project runs as it is."""
    if isinstance(h, DeferredNorm):
        return gate_up_proj.forward_deferred(h, gated=True)
    gated = gate_up_proj.forward_gated(h) if project is through_router else None
    return gated if gated is not None else silu_and_mul(project(gate_up_proj, h))


def add_norm_after(
    linear: AwqLinear, h: torch.Tensor, x: torch.Tensor, norm: torch.Tensor, eps: float, project: Project, defer: bool
) -> tuple[torch.Tensor, Normed]:
    """The residual stream x plus linear(h), and its RMS norm. Where the routed kernel has the form and the next
    linear may take it (defer), the norm is split between this launch and the next linear's (awqd's GEMV: a launch
    fewer); else the norm kernel runs after the projection. A caller's own project runs as it is."""
    if defer and project is through_router and (added := linear.forward_add_norm(h, x, norm, eps)) is not None:
        return added
    return add_rms_norm(x, project(linear, h), norm, eps)


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
    def __init__(self, loaded: LoadedModel, batch_invariant: bool = False):
        if not loaded.fused:
            raise ValueError("the engine runs on a model loaded with fuse=True")
        hf = loaded.model
        self.shape = ModelShape.from_config(loaded.config)
        self.attention_shape = AttentionShape(
            self.shape.num_heads, self.shape.num_kv_heads, self.shape.head_dim, self.shape.sliding_window
        )
        self.device = loaded.device
        self.embed = hf.model.embed_tokens.weight
        self.final_norm = hf.model.norm.weight
        self.lm_head = hf.lm_head.weight
        self.batch_invariant = batch_invariant
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

    def prefill(
        self, prompts: list[torch.Tensor], tables: torch.Tensor, cache: KvCache, cached: list[int] | None = None
    ) -> torch.Tensor:
        """prompts[i] [T_i] at positions cached[i]..cached[i]+T_i-1 (cached[i] defaults to 0) into the blocks of
        tables[i] (int32 [N, >= blocks of its positions], on the device), whose positions before cached[i] hold
        k/v already (a prefix-cache hit); returns each prompt's last-position logits [N, vocab].

        The prompts run as one sequence of sum(T_i) rows: every linear runs once on all of them, so the kernel
        router picks by that total. Only attention looks at where one prompt ends and the next begins.
        """
        cached = cached or [0] * len(prompts)
        lengths = [prompt.shape[0] for prompt in prompts]
        # Each row's prompt and its position, the prompts' offsets, and each prompt's last row: built on the host and
        # copied once.
        sequences, within, offsets = ragged_rows(lengths)
        positions = within + torch.tensor(cached)[sequences]
        host = torch.cat([sequences, positions, offsets, offsets[1:] - 1]).to(self.device, non_blocking=True)
        rows, count = len(sequences), len(prompts)
        sequences, positions, offsets, last_rows = host.split([rows, rows, count + 1, count])
        return self.prefill_rows(
            torch.cat(prompts), sequences, positions, lengths, offsets.int(), last_rows, tables, cache, cached
        )

    def prefill_rows(
        self,
        token_ids: torch.Tensor,
        sequences: torch.Tensor,
        positions: torch.Tensor,
        lengths: list[int],
        offsets: torch.Tensor | None,
        last_rows: torch.Tensor,
        tables: torch.Tensor,
        cache: KvCache,
        cached: list[int] | None = None,
    ) -> torch.Tensor:
        """prefill() on rows laid out by the caller: row r is token_ids[r] at positions[r] of prompt sequences[r]
        (whose blocks are tables[sequences[r]]); lengths are the prompts' row counts in order, offsets (int32 [N + 1],
        on the device; None for one prompt) their first rows and the total; cached (None: all 0) how many positions
        of each prompt's sequence precede its rows in the cache; returns the logits of rows last_rows. Without
        cached positions, only device tensors are read, so a step of one (padded) prompt can be captured as a
        graph."""
        block_tokens = cache.k[0].shape[2]
        spans = CachedSpans.build(tables, lengths, cached, block_tokens) if cached is not None and any(cached) else None

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if spans is not None:
                k_cache, v_cache = cache.k[layer], cache.v[layer]
                return attention_after_cached(q, lengths, offsets, spans, k_cache, v_cache, self.attention_shape)
            return prompt_attention(q, k, v, lengths, offsets, self.attention_shape)

        return self._prefill_pass(token_ids, sequences, positions, last_rows, tables, cache, attend)

    def prefill_after_hit(
        self,
        token_ids: torch.Tensor,
        sequences: torch.Tensor,
        positions: torch.Tensor,
        offsets: torch.Tensor,
        last_rows: torch.Tensor,
        tables: torch.Tensor,
        cache: KvCache,
        keys: int,
    ) -> torch.Tensor:
        """One prompt's rows after a prefix-cache hit, padded, laid out as for prefill_rows (the prompt's sequence
        is tables[0]): offsets (int64 [6], on the device) are the rows' 0, the prompt's rows and all rows, then the
        keys' 0, its span and its span plus the padding rows; its sequence is gathered into `keys` slots (PaddedSpan).
        Only device tensors are read, so the pass can be captured as a graph per (rows, keys)."""
        span = PaddedSpan.build(tables[0], offsets, keys, cache.k[0].shape[2], PADDING_BLOCK)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return span.attend(q, cache.k[layer], cache.v[layer], self.attention_shape)

        return self._prefill_pass(token_ids, sequences, positions, last_rows, tables, cache, attend)

    def _prefill_pass(
        self,
        token_ids: torch.Tensor,
        sequences: torch.Tensor,
        positions: torch.Tensor,
        last_rows: torch.Tensor,
        tables: torch.Tensor,
        cache: KvCache,
        attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """The layers over prefill rows: each layer stores its rows' rotated k/v, then attend(layer, q, k, v)."""

        def attention(layer: int, qkv: torch.Tensor) -> torch.Tensor:
            k_cache, v_cache = cache.k[layer], cache.v[layer]
            q, k, v = rotate_and_store(
                qkv, sequences, positions, tables, self.cos, self.sin, k_cache, v_cache, self.attention_shape
            )
            return attend(layer, q, k, v)

        return self._logits(self._forward(token_ids, attention)[last_rows])

    def decode(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        tables: torch.Tensor,
        cache: KvCache,
        split_counters: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Row i of token_ids [B] and positions [B] belongs to the sequence whose blocks are tables[i] (int32 [B,
        blocks per sequence]); returns logits [B, vocab]. split_counters (int32 [>= B * kv_heads], zero) lets decode
        attention split a small batch's rows over several programs, unless the model is batch-invariant. Only static
        tensors are read and written, so a step can be captured as a CUDA graph and replayed at any positions and
        block tables."""
        counters = None if self.batch_invariant else split_counters

        def attention(layer: int, qkv: torch.Tensor) -> torch.Tensor:
            k, v = cache.k[layer], cache.v[layer]
            return decode_attention(qkv, positions, tables, self.cos, self.sin, k, v, self.attention_shape, counters)

        return self._logits(self._forward(token_ids, attention))

    def score(self, token_ids: torch.Tensor, project: Project) -> torch.Tensor:
        """Logits [T, vocab] at every position of one sequence token_ids [T] (T <= the context) at positions
        0..T-1. Reads only the weights: no KV cache, no router, so it may run beside the serving engine."""
        positions = torch.arange(token_ids.shape[0], device=self.device)
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)

        def attention(layer: int, qkv: torch.Tensor) -> torch.Tensor:
            q, k, v = self.attention_shape.split(qkv)
            window = self.shape.sliding_window
            return causal_attention(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v, window)

        return self._logits(self._forward(token_ids, attention, project))

    def _forward(self, token_ids: torch.Tensor, attention, project: Project = through_router) -> torch.Tensor:
        """The decoder layers; returns the final-normed hidden states. Each sublayer's output is added to the
        residual stream where the next norm runs (add_norm_after)."""
        eps = self.shape.rms_norm_eps
        last = len(self.layers) - 1
        next_norms = [layer[0] for layer in self.layers[1:]] + [self.final_norm]
        x, h = add_rms_norm(F.embedding(token_ids, self.embed), None, self.layers[0][0], eps)
        for index, (_, qkv_proj, o_proj, post_norm, gate_up_proj, down_proj) in enumerate(self.layers):
            qkv = apply(qkv_proj, h, project)
            x, h = add_norm_after(o_proj, attention(index, qkv), x, post_norm, eps, project, defer=True)
            mlp = gate(gate_up_proj, h, project)
            # lm_head takes the final norm whole
            x, h = add_norm_after(down_proj, mlp, x, next_norms[index], eps, project, defer=index < last)
        return h

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return logits(hidden, self.lm_head, self.batch_invariant)
