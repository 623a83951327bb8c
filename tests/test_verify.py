"""Acceptance rules on hand-made trees, and the distribution tests that tell a lossless rule from a broken one."""

from collections import Counter
from functools import partial

import pytest
import torch
from scipy.stats import chisquare

import clover2.engine.verify as verify
from clover2.engine.decoding import generate
from clover2.engine.self_draft import SelfDrafter
from clover2.engine.target import Target
from clover2.engine.tree import DraftTree, TreeShape
from clover2.engine.verify import accept_greedy, accept_sampling
from clover2.lossless import check_sampling

# root -> a(1), b(2); a -> c(3); c -> d(4)
SHAPE = TreeShape.from_parents([-1, 0, 0, 1, 3])
TOKENS = torch.tensor([9, 1, 2, 3, 4])


def _logits_choosing(choices: list[int], vocab: int = 10) -> torch.Tensor:
    """Logits whose argmax after node i is choices[i]."""
    logits = torch.zeros(len(choices), vocab)
    logits[torch.arange(len(choices)), torch.tensor(choices)] = 5.0
    return logits


def test_greedy_takes_the_longest_matching_path_and_the_bonus():
    tree = DraftTree(TOKENS, SHAPE, torch.zeros(5))
    # target: after root -> 1 (a), after a -> 3 (c), after c -> 7 (not d), so the path is root, a, c; bonus 7.
    result = accept_greedy(tree, _logits_choosing([1, 3, 0, 7, 0]))
    assert (result.path, result.bonus, result.failed_depth) == ([0, 1, 3], 7, 3)


def test_greedy_runs_to_a_leaf_and_prefers_the_second_branch_when_it_matches():
    tree = DraftTree(TOKENS, SHAPE, torch.zeros(5))
    assert accept_greedy(tree, _logits_choosing([1, 3, 0, 4, 8])).path == [0, 1, 3, 4]
    full = accept_greedy(tree, _logits_choosing([1, 3, 0, 4, 8]))
    assert (full.bonus, full.failed_depth) == (8, None)
    second = accept_greedy(tree, _logits_choosing([2, 0, 6, 0, 0]))
    assert (second.path, second.bonus, second.failed_depth) == ([0, 2], 6, None)


def test_greedy_rejects_at_depth_one():
    result = accept_greedy(DraftTree(TOKENS, SHAPE, torch.zeros(5)), _logits_choosing([5, 0, 0, 0, 0]))
    assert (result.path, result.bonus, result.failed_depth) == ([0], 5, 1)


P = torch.tensor([0.1, 0.4, 0.2, 0.25, 0.05])
Q = torch.tensor([0.5, 0.1, 0.3, 0.05, 0.05])


def _first_token_counts(trials: int, with_q: bool) -> Counter:
    """Draw two children from q without replacement (or fix them), verify, and count the first emitted token."""
    generator = torch.Generator().manual_seed(1)
    logits = P.log().expand(3, -1).clone()
    draft_probs = Q.expand(3, -1).clone() if with_q else None
    counts = Counter()
    for _ in range(trials):
        children = torch.multinomial(Q, 2, replacement=False, generator=generator) if with_q else torch.tensor([0, 2])
        tree = DraftTree(torch.cat([torch.tensor([4]), children]), TreeShape.from_parents([-1, 0, 0]), torch.zeros(3), draft_probs)
        result = accept_sampling(tree, logits, 1.0, generator)
        counts[int(tree.tokens[result.path[1]]) if len(result.path) > 1 else result.bonus] += 1
    return counts


def _p_value(counts: Counter, trials: int) -> float:
    return chisquare([counts[i] for i in range(5)], (P * trials).tolist()).pvalue


@pytest.mark.parametrize("with_q", [True, False], ids=["sampled-children", "deterministic-children"])
def test_rejection_sampling_emits_the_target_distribution(with_q):
    trials = 6000
    assert _p_value(_first_token_counts(trials, with_q), trials) > 0.01


@pytest.mark.parametrize("with_q", [True, False], ids=["sampled-children", "deterministic-children"])
def test_a_rule_without_the_residual_is_caught(monkeypatch, with_q):
    monkeypatch.setattr(verify, "_residual", lambda p, q, rejected: p)  # the classic bug: resample from p
    trials = 6000
    assert _p_value(_first_token_counts(trials, with_q), trials) < 1e-4


class GreedySelfProposals:
    """The target's own greedy chain, proposed deterministically at any temperature: likely drafts, not certain ones."""

    needs_states = False

    def __init__(self, model) -> None:
        self.inner = SelfDrafter(model, TreeShape.chain(2))

    def prefill(self, prompt, states) -> None:
        self.inner.prefill(prompt, states)

    def accept(self, tokens, states) -> None:
        self.inner.accept(tokens, states)

    def draft(self, root, temperature, generator) -> DraftTree:
        return self.inner.draft(root, 0.0, None)


@pytest.fixture(scope="module")
def peaked_target(peaked_llama):
    return Target(model=peaked_llama, tokenizer=None, stop_token_ids=[511], path=None, identity={})


PROMPT = [1, 5, 9, 33, 7]


def test_check_sampling_passes_the_lossless_rule(peaked_target):
    decode = partial(generate, drafter=GreedySelfProposals(peaked_target.model))
    report = check_sampling(peaked_target, [("self", decode)], PROMPT, temperature=1.0, samples=1500, tokens=3)["self"]
    assert report.outcomes > 3 and report.dof >= 2
    assert report.passed, report


def test_check_sampling_fails_a_broken_rule(peaked_target, monkeypatch):
    monkeypatch.setattr(verify, "_residual", lambda p, q, rejected: p)
    decode = partial(generate, drafter=GreedySelfProposals(peaked_target.model))
    report = check_sampling(peaked_target, [("broken", decode)], PROMPT, temperature=1.0, samples=1500, tokens=3)["broken"]
    assert not report.passed and report.p_value < 1e-4
