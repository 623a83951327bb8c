"""A head's acceptance profile: counted exactly for a drafter with a known profile, and measured for every real head."""

import json

import pytest
import torch

from clover2.engine.decoding import DecodeConfig, generate
from clover2.engine.drafter import NoDrafter, TargetStates
from clover2.engine.tree import DraftTree, TreeShape, grow_dynamic_tree
from clover2.errors import Clover2Error
from clover2.heads.acceptance import (
    AcceptanceProfile,
    DynamicAcceptance,
    drafted_positions,
    head_acceptance,
    load_acceptance,
    measure_acceptance,
    measure_dynamic_acceptance,
    probe_depth,
    probe_tree,
    save_acceptance,
)
from clover2.heads.protocol import TrainBatch, head_class, head_methods
from helpers import NO_STOP, continuation_batch, overfitted

LENGTH, FILLER = 24, 500


class PositionDrafter:
    """Knows only which position of the conversation it drafts from (`position`, the root's)."""

    needs_states = True
    position = 0

    def prefill(self, prompt: torch.Tensor, states: TargetStates | None) -> None:
        self.position = prompt.numel()

    def accept(self, tokens: torch.Tensor, states: TargetStates | None) -> None:
        self.position += tokens.numel()


class KnownDrafter(PositionDrafter):
    """Places the conversation's token t + d at rank `rank_at(t, d)` under the spine (None: not at all), filler elsewhere."""

    def __init__(self, shape: TreeShape, ids: torch.Tensor, rank_at) -> None:
        self.shape, self.ids, self.rank_at = shape, ids, rank_at

    def draft(self, root: int, temperature: float, generator) -> DraftTree:
        t = self.position
        tokens = torch.full((self.shape.size,), FILLER)
        tokens[0] = root
        for node in range(1, self.shape.size):
            depth, rank = int(self.shape.depths[node]), int(self.shape.ranks[node])
            if t + depth < LENGTH and self.rank_at(t, depth) == rank:
                tokens[node] = self.ids[t + depth]
        return DraftTree(tokens, self.shape, torch.zeros(self.shape.size))


def _batch(ids: torch.Tensor, greedy: torch.Tensor, scored_from: int) -> TrainBatch:
    logits = torch.full((1, LENGTH, 512), -10.0)
    logits[0, torch.arange(LENGTH), greedy] = 10.0
    mask = torch.zeros(1, LENGTH, dtype=torch.bool)
    mask[0, scored_from:] = True
    states = torch.zeros(1, LENGTH, 8)
    return TrainBatch(ids[None], mask, torch.ones(1, LENGTH, dtype=torch.bool), states, states, logits)


def _follows_greedy() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(10, 10 + LENGTH)
    return ids, torch.cat([ids[1:], torch.tensor([3])])  # greedy[t] = ids[t + 1]: the text is the target's own


def _rule(t: int, depth: int) -> int | None:
    # depth 1 always top-1; depth 2 top-1 at even t, else rank 2; depth 3 never drafted right.
    return {1: 0, 2: 0 if t % 2 == 0 else 2}.get(depth)


def test_the_profile_counts_each_depth_reached_and_the_rank_that_held_the_targets_token():
    ids, greedy = _follows_greedy()
    batch = _batch(ids, greedy, scored_from=5)  # assistant tokens from 5 on: drafting from t = 4
    profile = measure_acceptance(lambda shape: KnownDrafter(shape, ids, _rule), [batch], depth=4, ranks=3)
    roots = range(4, LENGTH - 1)
    assert profile.positions == len(roots)
    assert profile.reached[0] == len(roots) and profile.hits[0] == [len(roots), 0, 0]
    two_deep = [t for t in roots if t + 2 < LENGTH]
    evens = [t for t in two_deep if t % 2 == 0]
    assert profile.reached[1] == len(two_deep)
    assert profile.hits[1] == [len(evens), 0, len(two_deep) - len(evens)]
    assert profile.reached[2] == len([t for t in evens if t + 3 < LENGTH]) and profile.hits[2] == [0, 0, 0]
    assert profile.reached[3] == 0
    p = profile.probabilities()
    assert p[0] == [1.0, 0.0, 0.0] and p[1][0] == pytest.approx(0.5, abs=0.06) and p[3] == [0.0, 0.0, 0.0]


def test_depths_past_where_the_text_leaves_the_targets_greedy_path_are_not_counted():
    ids, greedy = _follows_greedy()
    greedy[10] = FILLER + 1  # the target would not have written token 11: labels that need it are unknown
    targets_own = torch.cat([ids[:1], greedy[:-1]])  # a drafter that drafts the target's greedy tokens
    always = lambda t, depth: 0  # noqa: E731
    drafter_for = lambda shape: KnownDrafter(shape, targets_own, always)  # noqa: E731
    profile = measure_acceptance(drafter_for, [_batch(ids, greedy, 5)], depth=3, ranks=2)
    roots = range(4, LENGTH - 1)
    assert profile.reached[0] == len(roots) == profile.hits[0][0]
    # From root 10 depth 2 follows the target's token 11, not the text's; from root 9 so does depth 3.
    assert profile.reached[1] == len([t for t in roots if t + 2 < LENGTH]) - 1 == profile.hits[1][0]
    assert profile.reached[2] == len([t for t in roots if t + 3 < LENGTH]) - 2 == profile.hits[2][0]


def test_a_profile_round_trips_and_a_bad_file_names_itself(tmp_path):
    profile = AcceptanceProfile(reached=[10, 4], hits=[[4, 2], [1, 0]], positions=10)
    path = save_acceptance(profile, tmp_path / "acceptance.json", {"step": 50})
    assert json.loads(path.read_text())["p"] == [[0.4, 0.2], [0.25, 0.0]]
    assert load_acceptance(path) == profile
    path.write_text(json.dumps({"reached": [1, 2], "hits": [[1]]}))
    with pytest.raises(Clover2Error, match="acceptance.json: field 'hits' has 1 depths, 'reached' 2"):
        load_acceptance(path)
    path.write_text(json.dumps({"hits": [[1]]}))
    with pytest.raises(Clover2Error, match="acceptance.json: not an acceptance profile"):
        load_acceptance(path)


def test_the_probe_tree_is_a_top1_spine_with_candidates_under_each_node():
    probe = probe_tree(depth=3, ranks=2)
    assert probe.size == 7 and probe.max_depth == 3
    assert probe.parents.tolist() == [-1, 0, 0, 1, 1, 3, 3]


@pytest.mark.parametrize("method", head_methods())
def test_every_head_drafts_a_static_tree_it_is_given(tiny_llama, method):
    head = head_class(method)(tiny_llama).eval()
    chain = TreeShape.chain(min(2, head.deepest_tree() or 2))
    record = generate(tiny_llama, [5, 6, 7], DecodeConfig(max_new_tokens=6), NO_STOP, drafter=head.drafter(chain))
    assert set(record.tree_sizes) == {chain.size - 1}
    assert isinstance(head.drafter(TreeShape.chain(0)), NoDrafter)  # a tree chosen as "no drafting" costs nothing
    deepest = head.deepest_tree()
    if deepest is not None:
        with pytest.raises(Clover2Error, match=f"drafts? only {deepest} levels"):
            head.drafter(TreeShape.chain(deepest + 1))


@pytest.mark.parametrize("method", ["eagle", "clover2", "medusa"])
def test_a_head_overfitted_on_the_targets_text_accepts_its_top1_there(peaked_llama, method):
    prompt = [5, 17, 42, 9]
    head, _, _ = overfitted(head_class(method), peaked_llama, prompt)
    profile = head_acceptance(head, [continuation_batch(peaked_llama, prompt)])
    assert profile.depth == probe_depth(head)
    assert profile.positions == 40  # every continuation token is drafted once, from the token before it
    assert profile.reached[0] == 40 and profile.hits[0][0] >= 30
    assert profile.reached[1] >= profile.hits[0][0] - 1  # the text is the target's own: depth 2 is known wherever depth 1 held


class KnownDynamicDrafter(PositionDrafter):
    """A dynamic tree (grow_dynamic_tree) whose expansion places the conversation's next token under a node
    on the conversation's path at rank `rank_at(t, depth)` (None: not at all), filler tokens elsewhere, with
    log-probabilities drawn per (position, node) so that which nodes a size keeps varies."""

    def __init__(self, ids: torch.Tensor, rank_at, depth: int, total_tokens: int, top_k: int = 3, sure: bool = False) -> None:
        self.ids, self.rank_at, self.depth, self.total, self.top_k = ids, rank_at, depth, total_tokens, top_k
        self.sure = sure  # the conversation's tokens get log-probability -0.01, filler -5 and below

    def draft(self, root: int, temperature: float, generator) -> DraftTree:
        t = self.position

        def expand(tokens, parents, frontier):
            children, scores = [], []
            for node in frontier.tolist():
                path, at = [], node
                while at > 0:
                    path.append(int(tokens[at]))
                    at = int(parents[at])
                depth = len(path) + 1
                on_text = path[::-1] == self.ids[t + 1 : t + depth].tolist() and t + depth < LENGTH
                row = [FILLER + 10 * node + k for k in range(self.top_k)]
                rank = self.rank_at(t, depth) if on_text else None
                if rank is not None:
                    row[rank] = int(self.ids[t + depth])
                children.append(row)
                seeded = torch.Generator().manual_seed(1000 * t + node)
                drawn = torch.rand(self.top_k, generator=seeded).sort(descending=True).values.log()
                sure = torch.tensor([-0.01 if token < FILLER else -5.0 - k for k, token in enumerate(row)])
                scores.append(sure if self.sure else drawn)
            return torch.tensor(children), torch.stack(scores)

        return grow_dynamic_tree(root, expand, self.depth, self.top_k, self.total)


def _accepted_depth(tree: DraftTree, labels: list[int]) -> int:
    node, accepted = 0, 0
    for label in labels:
        children = tree.shape.children(node)
        matched = children[tree.tokens[children] == label]
        if not matched.numel():
            break
        node, accepted = int(matched[0]), accepted + 1
    return accepted


def test_the_dynamic_table_counts_what_the_tree_of_each_size_would_have_accepted():
    ids, greedy = _follows_greedy()
    batch = _batch(ids, greedy, scored_from=5)
    rank_at = lambda t, depth: (t + depth) % 4 if (t + depth) % 4 < 3 else None  # noqa: E731
    depth, nodes = 3, 12
    table = measure_dynamic_acceptance(lambda d, n: KnownDynamicDrafter(ids, rank_at, d, n), [batch], depth, nodes)
    assert table.positions == len(range(4, LENGTH - 1))
    # Brute force: each size drafted by the drafter itself, its accepted depth walked along the labels.
    for bound in range(1, depth + 1):
        for size in range(1, nodes + 1):
            reached, hits = [0] * depth, [0] * depth
            for drafted in drafted_positions(lambda b=bound, s=size: KnownDynamicDrafter(ids, rank_at, b, s), [batch]):
                accepted = _accepted_depth(drafted.tree, drafted.labels)
                for level in range(1, min(len(drafted.labels), bound) + 1):
                    reached[level - 1] += accepted >= level - 1
                    hits[level - 1] += accepted >= level
            assert table.reached[bound - 1][size - 1] == reached and table.hits[bound - 1][size - 1] == hits, (bound, size)
    assert table.tau(3, 12) > table.tau(1, 1) > 1.0


def test_a_dynamic_tree_that_always_holds_the_targets_tokens_first_accepts_as_deep_as_its_size():
    ids, greedy = _follows_greedy()
    top1 = lambda t, depth: 0  # noqa: E731
    drafter_for = lambda d, n: KnownDynamicDrafter(ids, top1, d, n, sure=True)  # noqa: E731
    table = measure_dynamic_acceptance(drafter_for, [_batch(ids, greedy, 5)], 4, 6)
    for bound in range(1, 5):
        for size in range(1, 7):
            assert table.tau(bound, size) == pytest.approx(1 + min(bound, size)), (bound, size)


def test_a_dynamic_table_round_trips_and_loads_as_its_kind(tmp_path):
    table = DynamicAcceptance(reached=[[[4], [4]]], hits=[[[1], [3]]], positions=4)
    path = save_acceptance(table, tmp_path / "acceptance.json")
    assert json.loads(path.read_text())["tau"] == [[1.25, 1.75]]
    assert load_acceptance(path) == table
    path.write_text(json.dumps({"kind": "dynamic", "reached": [[[1]]], "hits": [[[1], [2]]]}))
    with pytest.raises(Clover2Error, match="acceptance.json: fields 'reached' and 'hits' must be"):
        load_acceptance(path)
    path.write_text(json.dumps({"kind": "dynamic", "reached": [[[1]]], "hits": [[1]]}))
    with pytest.raises(Clover2Error, match="acceptance.json: not a dynamic-tree acceptance table"):
        load_acceptance(path)
