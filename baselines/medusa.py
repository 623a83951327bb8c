"""Medusa-1 (METHODS.md §1): K independent heads on the target's last post-norm state h_t.

Head k (k = 1..K) is a zero-initialised ResBlock and its own copy of the LM head; it reads only h_t and
predicts x_{t+k+1}, the token k places after the target's own next token. Because no head sees the
tokens drafted before it, every node at depth d of the tree takes head d's candidates by rank,
whatever its parent is.

Training: sum over heads of λ_k · CE(head k at t, x_{t+k+1}) with λ_k = decay^k, on the true data
tokens, scored where x_{t+k+1} is an assistant token. decay = 1.0 is Medusa's legacy unweighted
trainer (the default); decay = 0.8 is the weighting the Medusa paper describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel

from clover2.engine.drafter import TargetStates, grow_static_tree
from clover2.engine.tree import DraftTree, TreeShape, static_tree, tree_paths
from clover2.errors import Clover2Error
from clover2.heads.blocks import ResBlock, check_heads
from clover2.heads.draft_vocab import DraftVocab
from clover2.heads.losses import cross_entropy, topk_hits
from clover2.heads.protocol import DraftHead, HeadLoss, TrainBatch, register, static_drafter


def tree_for_heads(name: str, heads: int) -> TreeShape:
    """The static tree `name`, cut to `heads` levels: a head set cannot draft deeper than it has heads."""
    shape = static_tree(name)
    if shape.max_depth <= heads:
        return shape
    return TreeShape.from_paths([path for path in tree_paths(name) if len(path) <= heads])


def fits_heads(head: DraftHead, shape: TreeShape) -> TreeShape:
    """`shape`, checked against the levels `head` can draft."""
    if shape.max_depth > head.deepest_tree():
        raise Clover2Error(f"{head.method}: a tree {shape.max_depth} deep, but the head drafts only "
                           f"{head.deepest_tree()} levels (option heads)")
    return shape


@dataclass(frozen=True)
class Scored:
    """The positions t where a head predicting x_{t+k+1} is scored, with its label and the teacher's logits."""

    rows: torch.Tensor  # long [N]: batch index
    cols: torch.Tensor  # long [N]: position t
    labels: torch.Tensor  # long [N]: the data token x_{t+k+1}
    teacher: torch.Tensor  # [N, V]: the target's logits for x_{t+k+1}, i.e. teacher_logits[:, t + k]


def scored_positions(batch: TrainBatch, k: int) -> Scored:
    """Positions t inside the sequence whose token x_{t+k+1} is an assistant token."""
    length = batch.input_ids.shape[1]
    span = max(length - k - 1, 0)
    scored = torch.zeros_like(batch.loss_mask)
    scored[:, :span] = batch.loss_mask[:, k + 1 : k + 1 + span] & batch.attention_mask[:, :span]
    rows, cols = scored.nonzero(as_tuple=True)
    return Scored(rows, cols, batch.input_ids[rows, cols + k + 1], batch.teacher_logits[rows, cols + k])


def hard_label_loss(logits: list[torch.Tensor], scored: list[Scored], weights: list[float], vocab: DraftVocab) -> HeadLoss:
    """Σ_k weight_k · CE(logits_k, data token), with per-head top-1/top-5 agreement with the teacher's top-1.

    Logits come only for the scored rows (the projection to V is the memory hog) and span the draft
    vocabulary; a data token outside it cannot be drafted, so it is not scored in the loss.
    """
    total = torch.zeros((), device=logits[0].device)
    top1, top5, counted = [], [], []
    for head_logits, where, weight in zip(logits, scored, weights):
        labels, inside = vocab.local(where.labels)
        total = total + weight * cross_entropy(head_logits, labels, inside)
        hits = topk_hits(head_logits, where.teacher, torch.ones_like(inside), vocab.ids)
        top1.append(hits[0])
        top5.append(hits[1])
        counted.append(hits[2])
    return HeadLoss(total, {"ce": float(total.detach())}, top1, top5, counted)


@register
class MedusaHead(DraftHead):
    method = "medusa"
    optimiser: ClassVar[dict] = {"lr": 1e-3, "betas": (0.9, 0.999), "warmup_steps": 0, "schedule": "cosine"}

    def __init__(
        self,
        target: PreTrainedModel,
        *,
        heads: int = 5,
        decay: float = 1.0,
        tree: str = "medusa_mc_sim_7b_63",
        draft_vocab: int | None = None,
        vocab_ids: torch.Tensor | None = None,
    ) -> None:
        super().__init__(target, vocab_ids, heads=heads, decay=decay, tree=tree, draft_vocab=draft_vocab)
        check_heads(self.method, heads)
        if not decay > 0:
            raise Clover2Error(f"medusa option decay: expected a number > 0, got {decay!r}")
        self.shape = tree_for_heads(tree, heads)
        lm_weight = target.get_output_embeddings().weight
        # Each head's own LM head starts as the target's rows of the draft vocabulary.
        self.blocks = nn.ModuleList(ResBlock(self.hidden_size) for _ in range(heads))
        self.lm_heads = nn.ModuleList(nn.Linear(self.hidden_size, self.vocab.size, bias=False) for _ in range(heads))
        with torch.no_grad():
            for lm_head in self.lm_heads:
                lm_head.weight.copy_(self.vocab.weight)
        self.to(device=lm_weight.device, dtype=lm_weight.dtype)

    def head_logits(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Head k's (1-based) logits over the draft vocabulary [..., size] for x_{t+k+1} from h_t [..., H]."""
        return self.lm_heads[k - 1](self.blocks[k - 1](h))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Every head's logits over the draft vocabulary [..., K, size] from h [..., H]."""
        return torch.stack([self.head_logits(k, h) for k in range(1, len(self.blocks) + 1)], dim=-2)

    def loss(self, batch: TrainBatch) -> HeadLoss:
        heads = range(1, len(self.blocks) + 1)
        scored = [scored_positions(batch, k) for k in heads]
        logits = [self.head_logits(k, batch.h[where.rows, where.cols]) for k, where in zip(heads, scored)]
        return hard_label_loss(logits, scored, [self.options["decay"] ** k for k in heads], self.vocab)

    def drafter(self, tree: TreeShape | None = None) -> MedusaDrafter:
        return static_drafter(MedusaDrafter, self, fits_heads(self, tree or self.shape))

    def deepest_tree(self) -> int:
        return self.options["heads"]


class MedusaDrafter:
    """Drafts the static tree from the heads' logits at the last kept token's h."""

    needs_states = True

    def __init__(self, head: MedusaHead, shape: TreeShape) -> None:
        self.head, self.shape = head, shape
        self.h: torch.Tensor | None = None

    def prefill(self, prompt: torch.Tensor, states: TargetStates | None) -> None:
        self.h = states.h[-1]

    def accept(self, tokens: torch.Tensor, states: TargetStates | None) -> None:
        self.h = states.h[-1]

    @torch.inference_mode()
    def draft(self, root: int, temperature: float, generator: torch.Generator | None) -> DraftTree:
        shape = self.shape
        per_head = self.head.vocab.spread(self.head.logits(self.h))  # [K, V]
        # A node at depth d takes its children from head d + 1, whatever its token: the heads see only h.
        # Nodes at depth K have no children; the clamp only keeps their (unused) row in range.
        node_logits = per_head[shape.depths.clamp(max=per_head.shape[0] - 1).to(per_head.device)]
        # At T > 0 each parent draws its own sample from its head's q: lossless per node, as the engine needs.
        level = lambda nodes, tokens: node_logits[nodes]  # noqa: E731
        tokens, _, probs = grow_static_tree(shape, root, node_logits[0], level, temperature, generator)
        return DraftTree(tokens, shape, torch.zeros(shape.size), probs)
