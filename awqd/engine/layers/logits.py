"""lm_head: the final hidden states [rows, hidden] times the dense embedding-sized weight [vocab, hidden].

cuBLAS picks its algorithm by the row count, so a row's logits can differ in the last bit between a step of one
row and a step of eight. With batch_invariant the product runs on a Triton kernel with one fixed tile
(awqd.engine.layers.triton_logits), whose per-row arithmetic does not depend on the other rows.
"""

import torch
import torch.nn.functional as F

from awqd.engine.layers.dispatch import use_triton


def logits(hidden: torch.Tensor, weight: torch.Tensor, batch_invariant: bool) -> torch.Tensor:
    if batch_invariant and use_triton(hidden):
        from awqd.engine.layers.triton_logits import logits_rows

        return logits_rows(hidden, weight)
    return F.linear(hidden, weight)
