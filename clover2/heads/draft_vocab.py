"""A reduced draft vocabulary (FR-Spec, EAGLE-3): a head projects onto the N most frequent tokens only.

On a small target the projection onto the full vocabulary dominates both drafting (one [H, V]
matmul per tree level) and training (the softmax of every head over V). With `draft_vocab: N` a
head keeps the N tokens seen most often at the assistant positions of its training data (the stop
tokens forced in), stores their ids beside its weights, and:

- trains over the subset: the teacher's distribution is restricted to it and renormalised (a
  position whose teacher mass lies wholly outside, possible only with a cached top-k teacher,
  contributes nothing), and a hard label outside it is not scored;
- drafts over the subset, its logits spread back onto the full vocabulary with -inf elsewhere, so
  a drafted token is a real token id and q puts no mass outside the subset.

Verification never sees the subset: the target still scores every token. At T = 0 a drafted token
is kept only if it is the target's argmax, so output equals plain decoding; at T > 0 the
acceptance test min(1, p/q) and the residual max(p - q, 0) are exact for any q, including one that
is zero outside the subset (the residual then keeps all of p's mass there). The subset costs
acceptance (tokens outside it are never drafted), never correctness.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from clover2.errors import Clover2Error

IDS = "vocab.ids"  # the subset's token ids in head.safetensors


def frequent_tokens(examples: Iterable, size: int, vocab_size: int, forced: Iterable[int]) -> torch.Tensor:
    """The `size` token ids most frequent at the examples' loss-masked positions, `forced` ids included, ascending."""
    forced = sorted(set(forced))
    if not len(forced) <= size <= vocab_size:
        raise Clover2Error(f"draft_vocab: expected {len(forced)} (the stop tokens) to {vocab_size} tokens, got {size}")
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for example in examples:
        ids = torch.tensor(example.input_ids)[torch.tensor(example.loss_mask, dtype=torch.bool)]
        counts += torch.bincount(ids, minlength=vocab_size).double()
    counts[forced] = float("inf")
    # A stable order for ties (lower id first), so the subset is a pure function of the data.
    order = torch.sort(-counts, stable=True).indices
    return order[:size].sort().values


class DraftVocab(nn.Module):
    """The projection a head drafts with: onto the full vocabulary, or onto a stored subset of it."""

    def __init__(self, lm_weight: torch.Tensor, lm_bias: torch.Tensor | None, ids: torch.Tensor | None) -> None:
        super().__init__()
        self.full_size = lm_weight.shape[0]
        if ids is not None:
            ids = ids.to(device=lm_weight.device, dtype=torch.long)
            lm_weight, lm_bias = lm_weight[ids], None if lm_bias is None else lm_bias[ids]
        self.register_buffer("ids", ids)  # persistent: saved with the head's weights
        self.register_buffer("weight", lm_weight.detach(), persistent=False)
        self.register_buffer("bias", None if lm_bias is None else lm_bias.detach(), persistent=False)

    @property
    def size(self) -> int:
        return self.weight.shape[0]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [..., size] over the draft vocabulary."""
        return F.linear(x, self.weight, self.bias)

    def spread(self, logits: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits [..., size] as full-vocabulary logits [..., V], -inf outside the subset."""
        if self.ids is None:
            return logits
        full = logits.new_full((*logits.shape[:-1], self.full_size), float("-inf"))
        return full.index_copy_(-1, self.ids, logits)

    def restrict(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits [..., V] cut to the draft vocabulary [..., size] (softmax renormalises)."""
        return teacher_logits if self.ids is None else teacher_logits.index_select(-1, self.ids)

    def local(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids as indices into the draft vocabulary, and whether each is in it (0 where it is not)."""
        if self.ids is None:
            return labels, torch.ones_like(labels, dtype=torch.bool)
        position = torch.searchsorted(self.ids, labels).clamp(max=self.size - 1)
        inside = self.ids[position] == labels
        return torch.where(inside, position, 0), inside

    def token_ids(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices into the draft vocabulary as token ids."""
        return indices if self.ids is None else self.ids[indices]


def draft_vocab(target: nn.Module, size: int | None, ids: torch.Tensor | None) -> DraftVocab:
    """The head's projection for `target`: full when `size` is None, else the stored subset `ids` of that size."""
    lm_head = target.get_output_embeddings()
    if size is None:
        return DraftVocab(lm_head.weight, getattr(lm_head, "bias", None), None)
    if ids is None or ids.numel() != size:
        found = "none" if ids is None else f"{ids.numel()}"
        raise Clover2Error(f"draft_vocab {size}: the head needs its subset of {size} token ids, got {found}")
    return DraftVocab(lm_head.weight, getattr(lm_head, "bias", None), ids)
