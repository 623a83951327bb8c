"""The drafter protocol: what the engine asks of every speculative method, and nothing more.

A drafter is told the prompt (prefill), proposes a tree rooted at the token the target emitted
last (draft), and is told which tokens the target kept (accept). Drafters that read the target's
hidden states say so with `needs_states`; the engine then hands them the pre-norm `u` and the
post-norm `h` of exactly the tokens it passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from clover2.tree import DraftTree, TreeShape


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
