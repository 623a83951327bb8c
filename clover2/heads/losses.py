"""Loss terms the heads combine (METHODS.md §1-§4), each averaged over the masked positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` [...] over positions where `mask` [...] is True (all when None); 0 when none are."""
    if mask is None:
        return values.mean() if values.numel() else values.sum()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def soft_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """-sum_v p(v) log softmax(logits)(v) with p = softmax(teacher_logits) (temperature 1), masked mean."""
    # A row with no finite teacher logit (a cached top-k wholly outside a draft vocabulary) is all NaN: make it 0.
    teacher = torch.softmax(teacher_logits.float(), dim=-1).nan_to_num(0.0)
    per_position = -(teacher * torch.log_softmax(logits.float(), dim=-1)).sum(dim=-1)
    return _masked_mean(per_position, mask)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy against hard labels [...], masked mean."""
    per_position = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), reduction="none")
    return _masked_mean(per_position.view(labels.shape), mask)


def smooth_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, beta: float = 1.0) -> torch.Tensor:
    """SmoothL1 averaged over the hidden dimension, then masked mean over positions."""
    per_position = F.smooth_l1_loss(prediction.float(), target.float(), reduction="none", beta=beta).mean(dim=-1)
    return _masked_mean(per_position, mask)


def topk_hits(
    logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None, ids: torch.Tensor | None = None
) -> tuple[int, int, int]:
    """(top-1 hits, top-5 hits, positions): does the head's top-1 / top-5 contain the teacher's top-1?

    `ids` maps the head's logit columns to token ids when it projects onto a draft vocabulary
    (the teacher's logits span the full one).
    """
    with torch.no_grad():
        mask = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device) if mask is None else mask
        wanted = teacher_logits.argmax(dim=-1, keepdim=True)
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        top5 = top5 if ids is None else ids[top5]
        hit5 = (top5 == wanted).any(dim=-1) & mask
        hit1 = (top5[..., :1] == wanted).squeeze(-1) & mask
        return int(hit1.sum()), int(hit5.sum()), int(mask.sum())
