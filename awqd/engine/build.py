"""From a fused loaded model to a serving scheduler: the decoder, its paged KV cache, the step runner."""

import structlog
import torch

from awqd.config import EngineSettings
from awqd.engine.kv_cache import SwapSpace, allocate, plan_kv_cache, plan_swap_blocks
from awqd.engine.model import DecoderModel
from awqd.engine.scheduler import AdmissionLimits, Scheduler
from awqd.engine.step import StepRunner
from awqd.kernels.linear import KernelRouter
from awqd.models.loader import LoadedModel

log = structlog.get_logger("awqd.engine")


def build_engine(name: str, loaded: LoadedModel, router: KernelRouter, settings: EngineSettings) -> Scheduler:
    if loaded.device.type == "cuda":
        # Prefill attends over each prompt at its own length. cuDNN's attention builds a plan per new length, which
        # warm-up cannot cover for every length; flash and memory-efficient attention need none. (Process-wide: torch
        # keeps the backend switches per process.)
        torch.backends.cuda.enable_cudnn_sdp(False)
    model = DecoderModel(loaded, settings.batch_invariant)
    shape = model.shape
    bytes_per_token = shape.kv_bytes_per_token(model.dtype)
    plan = plan_kv_cache(
        bytes_per_token,
        loaded.context_length,
        loaded.device,
        settings.kv_cache_fraction,
        settings.kv_cache_tokens,
    )
    cache = allocate(plan, shape.num_layers, shape.num_kv_heads, shape.head_dim, model.dtype, loaded.device)
    runner = StepRunner(model, cache, router, settings.cuda_graphs, settings.max_batch_size)
    prefix_caching = settings.prefix_caching and not settings.batch_invariant
    swap_gib = settings.swap_space_gib if settings.preemption == "swap" else 0.0
    swap = SwapSpace(cache, plan_swap_blocks(plan, bytes_per_token, swap_gib))
    log.info(
        "kv_cache_allocated",
        model=name,
        blocks=plan.blocks,
        block_tokens=plan.block_tokens,
        max_sequence_tokens=plan.max_seq_len,
        capacity_tokens=plan.capacity_tokens,
        bytes=plan.bytes,
        budget=plan.source,
        preemption=settings.preemption,
        swap_blocks=swap.tables.blocks,
        swap_bytes=swap.bytes,
        cuda_graphs=runner.cuda_graphs,
        overlap_decode=settings.overlap_decode,
        batch_buckets=list(runner.batch_buckets),
        prefix_caching=prefix_caching,
    )
    limits = AdmissionLimits(
        settings.max_queued_requests,
        settings.queue_timeout_s,
        settings.prefill_tokens_per_step,
        settings.max_decode_stall_ms / 1000,
    )
    return Scheduler(
        name, runner, swap, loaded.tokenizer, eos_ids(loaded), limits, settings.overlap_decode, prefix_caching
    )


def eos_ids(loaded: LoadedModel) -> frozenset[int]:
    generation = loaded.model.generation_config
    configured = generation.eos_token_id if generation else None
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(loaded.tokenizer.eos_token_id)
    return frozenset(ids)
