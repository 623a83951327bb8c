"""Acceptance: which drafted path the target keeps, and its bonus token (METHODS.md §6).

Both rules take the drafted tree and the target's logits at every tree node (one verification
forward) and return the kept node indices, root first, plus the token the target emits after them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from clover2.engine.kernels import greedy_accept
from clover2.engine.tree import DraftTree


@dataclass(frozen=True)
class Acceptance:
    path: list[int]  # kept tree nodes, root first
    bonus: int  # the target's own token after the last kept node
    failed_depth: int | None  # depth of the first rejected draft; None when the path ran to a leaf


AcceptRule = Callable[[DraftTree, torch.Tensor, float, torch.Generator | None], Acceptance]


def default_acceptance(
    tree: DraftTree, logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> Acceptance:
    """Greedy matching at temperature 0, lossless rejection sampling above it."""
    if temperature == 0:
        return accept_greedy(tree, logits)
    return accept_sampling(tree, logits, temperature, generator)


def accept_greedy(tree: DraftTree, logits: torch.Tensor) -> Acceptance:
    """The longest root-to-leaf path whose drafted tokens equal the target's argmax at their parents."""
    choice = logits.argmax(dim=-1)  # [N]: the target's token after each node
    paths = tree.shape.retrieve
    best, length, bonus = greedy_accept(tree.tokens.to(choice.device), choice, paths.to(choice.device))
    path = paths[best, : length + 1].tolist()
    ran_out = length + 1 == paths.shape[1] or int(paths[best, length + 1]) < 0
    return Acceptance(path, bonus, None if ran_out else length + 1)


def accept_sampling(tree: DraftTree, logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> Acceptance:
    """Multi-round rejection sampling (SpecInfer / EAGLE): the kept tokens are distributed as the target's.

    At a node, its children are tried in order. Child x is accepted with probability
    min(1, p(x) / q(x)); on rejection p <- normalise(max(p - q, 0)) and x leaves q. A drafter that
    sampled the children from q without replacement must supply q (`tree.draft_probs`); a
    deterministic drafter supplies none, and each child counts as a point mass q = 1[x].
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    tokens = tree.tokens.tolist()
    node, path = 0, [0]
    while True:
        p = probs[node]
        q = tree.draft_probs[node].float() if tree.draft_probs is not None else None
        children = tree.shape.children(node).tolist()
        for child in children:
            x = tokens[child]
            q_x = float(q[x]) if q is not None else 1.0
            if float(torch.rand((), generator=generator, device=p.device)) * q_x < float(p[x]):
                break
            p = _residual(p, q, x)
            if q is not None:
                q = q.clone()
                q[x] = 0
                q = q / q.sum() if q.sum() > 0 else q
        else:
            bonus = int(torch.multinomial(p, 1, generator=generator))
            return Acceptance(path, bonus, len(path) if children else None)
        path.append(child)
        node = child


def _residual(p: torch.Tensor, q: torch.Tensor | None, rejected: int) -> torch.Tensor:
    """normalise(max(p - q, 0)); with a point-mass q this just removes the rejected token."""
    if q is None:
        q = torch.zeros_like(p)
        q[rejected] = 1.0
    residual = (p - q).clamp(min=0)
    total = residual.sum()
    # p == q up to rounding makes the residual vanish; rejection then had probability ~0 anyway.
    return residual / total if total > 0 else p
