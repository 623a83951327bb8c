"""The frozen target as teacher: one forward gives the states and distributions a head learns from."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from clover2.decoding import StateTap
from clover2.draft_head import TrainBatch


@torch.no_grad()
def teacher_batch(
    target: PreTrainedModel, input_ids: torch.Tensor, loss_mask: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> TrainBatch:
    """Run the target over [B, T] sequences and collect u, h and its logits at every position."""
    attention_mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    tap = StateTap(target, enabled=True, batched=True)
    try:
        logits = target(input_ids=input_ids, attention_mask=attention_mask.long(), use_cache=False).logits
        states = tap.take()
    finally:
        tap.close()
    return TrainBatch(input_ids, loss_mask.bool() & attention_mask, attention_mask, states.u, states.h, logits)
