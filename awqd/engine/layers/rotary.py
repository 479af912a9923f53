"""Rotary position embedding: the tables from the checkpoint's own rotary module, and the torch rotation."""

import torch

from awqd.errors import CheckpointError

STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # rope types whose frequencies do not change per step


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
