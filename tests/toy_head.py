"""A toy draft method, as a user would add one: this file, and its registration (`@register`).

It drafts a one-level tree: the `width` most likely tokens after the target's next one, read from
the target's last state h_t by one trainable linear map (warm-started from the target's LM head).
Nothing else in the suite names it: training, decoding and the report take it from the registry.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel

from clover2.engine.drafter import TargetStates, grow_static_tree
from clover2.engine.tree import DraftTree, TreeShape
from clover2.heads.losses import cross_entropy, topk_hits
from clover2.heads.protocol import DraftHead, HeadLoss, TrainBatch, register


@register
class ToyHead(DraftHead):
    method = "toy"
    optimiser: ClassVar[dict] = {"lr": 1e-3, "betas": (0.9, 0.999), "warmup_steps": 0, "schedule": "constant"}
    drafting_options: ClassVar[frozenset[str]] = frozenset({"width"})

    def __init__(
        self, target: PreTrainedModel, *, width: int = 3, draft_vocab: int | None = None, vocab_ids: torch.Tensor | None = None
    ) -> None:
        super().__init__(target, vocab_ids, width=width, draft_vocab=draft_vocab)
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"toy option width: expected an integer >= 1, got {width!r}")
        self.shape = TreeShape.from_paths([[rank] for rank in range(width)])
        self.next_next = nn.Linear(self.hidden_size, self.vocab.size, bias=False)
        with torch.no_grad():
            self.next_next.weight.copy_(self.vocab.weight)
        self.to(self.vocab.weight.device, self.vocab.weight.dtype)

    def loss(self, batch: TrainBatch) -> HeadLoss:
        """CE of h_t's guess at token t + 2, scored where that token is an assistant token."""
        scored = batch.loss_mask[:, 2:] & batch.attention_mask[:, :-2]
        labels, inside = self.vocab.local(batch.input_ids[:, 2:])
        logits = self.next_next(batch.h[:, :-2])
        total = cross_entropy(logits, labels, scored & inside)
        top1, top5, counted = topk_hits(logits, batch.teacher_logits[:, 1:-1], scored, self.vocab.ids)
        return HeadLoss(total, {"ce": float(total.detach())}, [top1], [top5], [counted])

    def drafter(self, tree: TreeShape | None = None) -> ToyDrafter:
        return ToyDrafter(self, tree or self.shape)

    def deepest_tree(self) -> int:
        return 1


class ToyDrafter:
    needs_states = True

    def __init__(self, head: ToyHead, shape: TreeShape) -> None:
        self.head, self.shape, self.h = head, shape, None

    def prefill(self, prompt: torch.Tensor, states: TargetStates | None) -> None:
        self.h = states.h[-1]

    def accept(self, tokens: torch.Tensor, states: TargetStates | None) -> None:
        self.h = states.h[-1]

    @torch.inference_mode()
    def draft(self, root: int, temperature: float, generator: torch.Generator | None) -> DraftTree:
        logits = self.head.vocab.spread(self.head.next_next(self.h))
        tokens, _, probs = grow_static_tree(self.shape, root, logits, None, temperature, generator)
        return DraftTree(tokens, self.shape, torch.zeros(self.shape.size), probs)
