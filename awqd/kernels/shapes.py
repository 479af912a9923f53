"""The (out_features, in_features) of one decoder layer's linear layers: the seven of the checkpoint, and the four
the decode engine runs (q/k/v and gate/up fused), which boot-time kernel selection times."""

from collections.abc import Mapping
from typing import Any

from awqd.errors import InvalidArgument

LAYER_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def decoder_layer_shapes(
    hidden_size: int,
    intermediate_size: int,
    num_attention_heads: int,
    num_key_value_heads: int | None = None,
    head_dim: int | None = None,
) -> dict[str, tuple[int, int]]:
    """Layer name -> (out, in). k and v are sized by the key/value heads, so GQA models get narrow k/v."""
    if min(hidden_size, intermediate_size, num_attention_heads) <= 0:
        raise InvalidArgument("config", "hidden_size, intermediate_size and num_attention_heads must be positive")
    kv_heads = num_key_value_heads or num_attention_heads
    head_dim = head_dim or hidden_size // num_attention_heads
    q_out, kv_out = num_attention_heads * head_dim, kv_heads * head_dim
    return {
        "q_proj": (q_out, hidden_size),
        "k_proj": (kv_out, hidden_size),
        "v_proj": (kv_out, hidden_size),
        "o_proj": (hidden_size, q_out),
        "gate_proj": (intermediate_size, hidden_size),
        "up_proj": (intermediate_size, hidden_size),
        "down_proj": (hidden_size, intermediate_size),
    }


def shapes_from_config(config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """From a Llama-style config.json (Llama, Mistral, Qwen2, ...)."""
    try:
        return decoder_layer_shapes(
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_attention_heads=int(config["num_attention_heads"]),
            num_key_value_heads=config.get("num_key_value_heads"),
            head_dim=config.get("head_dim"),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidArgument("config", f"cannot derive decoder layer shapes: {error!r}") from error


def engine_layer_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """The four linears of a decoder layer as awqd.engine runs them: qkv_proj, o_proj, gate_up_proj, down_proj."""
    layers = shapes_from_config(config)
    hidden = layers["q_proj"][1]
    return {
        "qkv_proj": (layers["q_proj"][0] + layers["k_proj"][0] + layers["v_proj"][0], hidden),
        "o_proj": layers["o_proj"],
        "gate_up_proj": (layers["gate_proj"][0] + layers["up_proj"][0], hidden),
        "down_proj": layers["down_proj"],
    }


# Llama-2-7B: what the H200 baseline in FACTS.md measured, and the default when no model is hosted.
LLAMA_2_7B = decoder_layer_shapes(hidden_size=4096, intermediate_size=11008, num_attention_heads=32)


def default_shapes() -> list[tuple[int, int]]:
    return list(LLAMA_2_7B.values())
