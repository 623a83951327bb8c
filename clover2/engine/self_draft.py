"""A drafter that drafts with the target itself: a test of the speculative machinery, not a speed-up.

At temperature 0 its drafts are the target's own argmax choices, so every drafted token on the
tree's top-1 path is accepted and tau = depth + 1 exactly; anything less points at a bug in the
tree masks, positions, acceptance or cache handling. At temperature > 0 it samples each node's
children from the target's own distribution without replacement, so the first child is always
accepted.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel

from clover2.engine.drafter import TargetStates, grow_static_tree
from clover2.engine.tree import DraftTree, TreeShape


class SelfDrafter:
    needs_states = False

    def __init__(self, model: PreTrainedModel, shape: TreeShape) -> None:
        self.model, self.shape = model, shape
        self.cache = DynamicCache(config=model.config)
        self.pending = torch.empty(0, dtype=torch.long)  # kept tokens not yet in our own cache

    def prefill(self, prompt: torch.Tensor, states: TargetStates | None) -> None:
        self.cache = DynamicCache(config=self.model.config)
        self.pending = prompt.cpu()

    def accept(self, tokens: torch.Tensor, states: TargetStates | None) -> None:
        self.pending = torch.cat([self.pending, tokens.cpu()])

    @torch.inference_mode()
    def draft(self, root: int, temperature: float, generator: torch.Generator | None) -> DraftTree:
        shape, device = self.shape, self.model.device
        context = torch.cat([self.pending, torch.tensor([root])]).to(device)
        root_logits = self.model(input_ids=context.view(1, -1), cache=self.cache, use_cache=True).logits[0, -1]
        base = self.cache.get_seq_length()  # the context up to and including the root
        level = lambda nodes, tokens: self._forward_level(nodes, tokens, base)  # noqa: E731
        tokens, _, probs = grow_static_tree(shape, root, root_logits, level, temperature, generator)
        # Drop the root and the tree: the kept tokens come back through accept(), the root first.
        self.cache.crop(-(self.cache.get_seq_length() - base + 1))
        self.pending = torch.empty(0, dtype=torch.long)
        return DraftTree(tokens, shape, torch.zeros(shape.size), probs)

    def _forward_level(self, nodes: torch.Tensor, tokens: torch.Tensor, base: int) -> torch.Tensor:
        """Run one depth of the tree through the target over its own cache (earlier depths already there)."""
        last = int(nodes[-1])
        visible = torch.cat([torch.ones(nodes.numel(), base, dtype=torch.bool), self.shape.mask[nodes, 1 : last + 1]], 1)
        device = self.model.device
        output = self.model(
            input_ids=tokens[nodes].view(1, -1).to(device),
            position_ids=(base - 1 + self.shape.depths[nodes]).view(1, -1).to(device),
            attention_mask=visible.view(1, 1, nodes.numel(), -1).to(device),
            cache=self.cache,
            use_cache=True,
        )
        return output.logits[0]

