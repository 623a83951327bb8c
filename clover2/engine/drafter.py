"""The drafter protocol: what the engine asks of every speculative method, and nothing more.

A drafter is told the prompt (prefill), proposes a tree rooted at the token the target emitted
last (draft), and is told which tokens the target kept (accept). Drafters that read the target's
hidden states say so with `needs_states`; the engine then hands them the pre-norm `u` and the
post-norm `h` of exactly the tokens it passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from clover2.engine.tree import DraftTree, TreeShape


@dataclass(frozen=True)
class TargetStates:
    """The target's last-layer states for a run of tokens: u before the final norm, h = norm_f(u)."""

    u: torch.Tensor  # [T, H]
    h: torch.Tensor  # [T, H]


class Drafter(Protocol):
    needs_states: bool

    def prefill(self, prompt: torch.Tensor, states: TargetStates | None) -> None:
        """Start a turn: the prompt ids [T] (and their states) are now in the target's cache."""

    def draft(self, root: int, temperature: float, generator: torch.Generator | None) -> DraftTree:
        """A tree rooted at `root`. At temperature > 0 the children of a node must be sampled from
        `draft_probs[node]` without replacement, or be deterministic with `draft_probs` None."""

    def accept(self, tokens: torch.Tensor, states: TargetStates | None) -> None:
        """The tokens the target kept this step, the root first (the bonus token comes as the next root)."""


_ROOT_ONLY = TreeShape.chain(0)


class NoDrafter:
    """Plain decoding: every step verifies the root alone, so the engine takes one token per forward."""

    needs_states = False

    def prefill(self, prompt: torch.Tensor, states: TargetStates | None) -> None:
        pass

    def draft(self, root: int, temperature: float, generator: torch.Generator | None) -> DraftTree:
        return DraftTree(torch.tensor([root]), _ROOT_ONLY, torch.zeros(1))

    def accept(self, tokens: torch.Tensor, states: TargetStates | None) -> None:
        pass


def grow_static_tree(
    shape: TreeShape,
    root: int,
    root_logits: torch.Tensor,
    level_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    temperature: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Fill a static tree depth by depth; returns (tokens [N], logits [N, V], draft probs or None).

    Each depth takes its tokens from the parents' logits (`choose_children`); then, unless it is the
    last, `level_logits(nodes, tokens)` gives that depth's own logits from the drafter's state.
    """
    logits = root_logits.new_zeros(shape.size, root_logits.shape[-1])
    logits[0] = root_logits
    tokens = torch.zeros(shape.size, dtype=torch.long)
    tokens[0] = root
    probs = None if temperature == 0 else torch.zeros_like(logits, dtype=torch.float32)
    for depth in range(1, shape.max_depth + 1):
        nodes = shape.nodes_at(depth)
        choose_children(shape, nodes, logits, tokens, probs, temperature, generator)
        if depth < shape.max_depth:
            logits[nodes] = level_logits(nodes, tokens)
    return tokens, logits, probs


def choose_children(
    shape: TreeShape,
    nodes: torch.Tensor,
    logits: torch.Tensor,
    tokens: torch.Tensor,
    probs: torch.Tensor | None,
    temperature: float,
    generator: torch.Generator | None,
) -> None:
    """Fill in `tokens` for `nodes` (one depth of a static tree) from their parents' draft logits.

    A node of rank r takes its parent's r-th choice: the top-k at T = 0; at T > 0 the k tokens drawn
    without replacement from q = softmax(logits / T), recorded in `probs` for lossless acceptance.
    """
    parents, ranks = shape.parents[nodes], shape.ranks[nodes]
    for parent in parents.unique().tolist():
        mine = parents == parent
        count = int(ranks[mine].max()) + 1
        if probs is None:
            candidates = logits[parent].topk(count).indices
        else:
            probs[parent] = torch.softmax(logits[parent].float() / temperature, dim=-1)
            candidates = sample_without_replacement(probs[parent], count, generator)
        tokens[nodes[mine]] = candidates[ranks[mine].to(candidates.device)].cpu()


def sample_without_replacement(probs: torch.Tensor, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """`count` distinct tokens in the order successive draws without replacement would give them (Gumbel top-k)."""
    uniform = torch.rand(probs.shape, generator=generator, device=probs.device).clamp(min=1e-20)
    return (probs.log() - (-uniform.log()).log()).topk(count).indices
