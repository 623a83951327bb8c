"""Prompt-lookup decoding as a drafter: continue the context the way it continued before.

The last n tokens (n from `max_ngram` down to `min_ngram`) are looked up earlier in the context,
the most recent match first, and the tokens that followed are proposed. As a chain it proposes the
first match's continuation; as a tree the distinct continuations of up to `branches` matches,
merged into a trie. Proposals are deterministic, so at temperature > 0 each child counts as a
point mass in the lossless acceptance rule.
"""

from __future__ import annotations

import torch

from clover2.engine.drafter import TargetStates
from clover2.engine.tree import DraftTree, TreeShape


class PromptLookupDrafter:
    needs_states = False

    def __init__(self, length: int = 10, branches: int = 1, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram or length < 1 or branches < 1:
            raise ValueError("prompt lookup needs 1 <= min_ngram <= max_ngram, length >= 1, branches >= 1")
        self.length, self.branches = length, branches
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.context: list[int] = []

    def prefill(self, prompt: torch.Tensor, states: TargetStates | None) -> None:
        self.context = prompt.tolist()

    def accept(self, tokens: torch.Tensor, states: TargetStates | None) -> None:
        self.context.extend(tokens.tolist())

    def draft(self, root: int, temperature: float, generator: torch.Generator | None) -> DraftTree:
        continuations = self._continuations([*self.context, root])
        tokens, parents = _trie(root, continuations)
        return DraftTree(torch.tensor(tokens), TreeShape.from_parents(parents), torch.zeros(len(tokens)))

    def _continuations(self, context: list[int]) -> list[list[int]]:
        """What followed earlier occurrences of the context's tail: longest n-gram first, recent first."""
        found: list[list[int]] = []
        for n in range(min(self.max_ngram, len(context) - 1), self.min_ngram - 1, -1):
            tail = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):
                if context[start : start + n] != tail:
                    continue
                follow = context[start + n : start + n + self.length]
                if follow not in found:
                    found.append(follow)
                    if len(found) == self.branches:
                        return found
        return found


def _trie(root: int, sequences: list[list[int]]) -> tuple[list[int], list[int]]:
    """Merge sequences under a root into a trie: (tokens, parents), breadth-first, siblings in first-seen order."""
    tokens, children = [root], [{}]  # children[node]: token -> node
    for sequence in sequences:
        node = 0
        for token in sequence:
            if token not in children[node]:
                children[node][token] = len(tokens)
                tokens.append(token)
                children.append({})
            node = children[node][token]
    order, parents = [0], [-1]
    for position, node in enumerate(order):  # `order` grows while we walk it: a breadth-first queue
        order.extend(children[node].values())
        parents.extend([position] * len(children[node]))
    return [tokens[node] for node in order], parents
