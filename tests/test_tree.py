"""Tree buffers (static trees, chains, parent lists) and EAGLE-2's dynamic tree."""

import itertools
import json
import random
import re

import pytest
import torch

from clover2.engine.tree import (
    STATIC_TREES,
    DraftTree,
    TreeShape,
    grow_dynamic_tree,
    official_eagle2_settings,
    static_tree,
    tree_paths,
)
from clover2.errors import Clover2Error


def ancestors_or_self(parents: list[int], node: int) -> list[int]:
    """Root..node, walking parent links in plain Python (the reference for mask and retrieve)."""
    path = [node]
    while parents[path[-1]] != -1:
        path.append(parents[path[-1]])
    return path[::-1]


def assert_consistent(shape: TreeShape) -> None:
    """Every buffer agrees with `parents`, and the numbering is breadth-first with siblings in rank order."""
    parents = shape.parents.tolist()
    n = shape.size
    assert parents[0] == -1 and all(0 <= parents[i] < i for i in range(1, n))
    depths = [len(ancestors_or_self(parents, i)) - 1 for i in range(n)]
    assert shape.depths.tolist() == depths == sorted(depths)
    assert shape.max_depth == max(depths)
    for i in range(n):
        expected_row = torch.zeros(n, dtype=torch.bool)
        expected_row[ancestors_or_self(parents, i)] = True
        assert torch.equal(shape.mask[i], expected_row), f"mask row {i}"
    leaves = [i for i in range(n) if i not in parents]
    assert shape.retrieve.shape == (len(leaves), shape.max_depth + 1)
    for row, leaf in zip(shape.retrieve.tolist(), leaves):
        path = ancestors_or_self(parents, leaf)
        assert row == path + [-1] * (shape.max_depth + 1 - len(path))
    for node in range(n):
        kids = shape.children(node).tolist()
        assert kids == [i for i in range(n) if parents[i] == node]
        assert shape.ranks[kids].tolist() == sorted(shape.ranks[kids].tolist())
    for depth in range(shape.max_depth + 2):
        assert shape.nodes_at(depth).tolist() == [i for i in range(n) if depths[i] == depth]


def assert_same_shape(a: TreeShape, b: TreeShape) -> None:
    for name in ("parents", "ranks", "depths", "mask", "retrieve"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# ---------------------------------------------------------------- static trees


def test_eagle_tree_matches_methods() -> None:
    tree = static_tree("eagle_mc_sim_7b_63")
    assert tree.size == 26
    assert [tree.nodes_at(d).numel() for d in range(tree.max_depth + 1)] == [1, 4, 8, 8, 3, 2]
    # Written out by hand from the METHODS.md §5 list, which is already in breadth-first order.
    assert tree.parents.tolist() == [-1, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 5, 5, 5, 6, 6, 7, 7, 8, 13, 13, 13, 21, 21]
    assert tree.ranks.tolist() == [0, 0, 1, 2, 3, 0, 1, 2, 0, 1, 0, 1, 0, 0, 1, 2, 0, 1, 0, 1, 0, 0, 1, 2, 0, 1]
    assert tree.depths.tolist() == [0] + [1] * 4 + [2] * 8 + [3] * 8 + [4] * 3 + [5] * 2
    assert tree.retrieve[:, -1].tolist().count(-1) == 13  # only 2 of the 15 leaves are at depth 5
    assert sorted(tree.retrieve.max(dim=1).values.tolist()) == [9, 10, 11, 12, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 25]
    assert tree.retrieve.tolist()[-1] == [0, 1, 5, 13, 21, 25]  # ranks 0,0,0,0,1
    assert tree.children(0).tolist() == [1, 2, 3, 4]
    assert tree.children(13).tolist() == [21, 22, 23]
    assert tree.mask[25].nonzero().flatten().tolist() == [0, 1, 5, 13, 21, 25]
    assert_consistent(tree)


def test_medusa_tree() -> None:
    paths = STATIC_TREES["medusa_mc_sim_7b_63"]
    assert len(paths) == 63 and len({tuple(p) for p in paths}) == 63
    tree = static_tree("medusa_mc_sim_7b_63")
    assert tree.size == 64
    assert tree.max_depth == 4
    assert [tree.nodes_at(d).numel() for d in range(5)] == [1, 10, 28, 23, 2]
    leaves = [p for p in paths if not any(len(q) == len(p) + 1 and q[:-1] == p for q in paths)]
    assert tree.retrieve.shape == (len(leaves), 5) == (42, 5)
    assert_consistent(tree)


def test_a_tree_file_names_its_paths_and_errors_name_the_file(tmp_path) -> None:
    chosen = tmp_path / "tree.json"
    chosen.write_text(json.dumps({"paths": [[0], [1], [0, 0]], "predicted_tau": 1.7}))
    assert tree_paths(str(chosen)) == [[0], [1], [0, 0]]
    assert static_tree(str(chosen)).parents.tolist() == [-1, 0, 0, 1]
    chosen.write_text(json.dumps({"paths": [[0], [0, 0, 1]]}))
    with pytest.raises(Clover2Error, match=r"tree.json: field 'paths': tree path \[0, 0, 1\]: its parent path"):
        static_tree(str(chosen))
    chosen.write_text(json.dumps({"nodes": 3}))
    with pytest.raises(Clover2Error, match="tree.json: cannot read a tree's field 'paths'"):
        static_tree(str(chosen))
    chosen.write_text(json.dumps({"paths": [0, 1]}))
    with pytest.raises(Clover2Error, match="field 'paths' must be a list of lists of ranks"):
        static_tree(str(chosen))
    with pytest.raises(Clover2Error, match="unknown static tree 'eagle_top_9'.*or a .json file"):
        static_tree("eagle_top_9")


def test_path_order_does_not_matter_and_ranks_are_the_drafters() -> None:
    paths = STATIC_TREES["medusa_mc_sim_7b_63"]
    shuffled = paths[:]
    random.Random(0).shuffle(shuffled)
    assert_same_shape(TreeShape.from_paths(shuffled), TreeShape.from_paths(paths))
    # A gap in the ranks stays visible: node 2 is the drafter's 3rd choice, not the 2nd.
    gappy = TreeShape.from_paths([[2], [0], [0, 4]])
    assert gappy.parents.tolist() == [-1, 0, 0, 1]
    assert gappy.ranks.tolist() == [0, 0, 2, 4]
    assert_consistent(gappy)


def test_chain() -> None:
    tree = TreeShape.chain(4)
    assert torch.equal(tree.mask, torch.ones(5, 5, dtype=torch.bool).tril())
    assert tree.retrieve.tolist() == [[0, 1, 2, 3, 4]]
    assert tree.ranks.tolist() == [0] * 5
    assert tree.depths.tolist() == [0, 1, 2, 3, 4]
    assert_consistent(tree)
    root_only = TreeShape.chain(0)
    assert root_only.size == 1 and root_only.retrieve.tolist() == [[0]]


SMALL_TREES = {  # name: (drafted nodes, depth)
    "chain_3": (3, 3), "chain_4": (4, 4), "chain_5": (5, 5), "chain_6": (6, 6),
    "eagle_top_6": (6, 2), "eagle_top_8": (8, 3), "eagle_top_12": (12, 3),
}


@pytest.mark.parametrize("name", sorted(SMALL_TREES))
def test_small_trees_have_their_size_and_depth(name: str) -> None:
    tree = static_tree(name)  # from_paths rejects a path whose parent path is missing
    assert (tree.size - 1, tree.max_depth) == SMALL_TREES[name]
    assert re.fullmatch(r"[A-Za-z0-9_.]+", name)  # a sweep value: a file-path component
    assert_consistent(tree)


def test_chains_are_the_top_1_at_every_depth() -> None:
    assert_same_shape(static_tree("chain_4"), TreeShape.chain(4))


@pytest.mark.parametrize("size", [6, 8, 12])
def test_small_eagle_trees_are_the_most_probable_paths_of_the_eagle_tree(size: int) -> None:
    # The rule in tree.py's comment: each level and each rank step halves a path's probability,
    # ties to the shallower path, then breadth-first.
    eagle = STATIC_TREES["eagle_mc_sim_7b_63"]
    ranked = sorted(eagle, key=lambda path: (len(path) + sum(path), len(path), path))
    assert sorted(STATIC_TREES[f"eagle_top_{size}"]) == sorted(ranked[:size])


@pytest.mark.parametrize("name", sorted(STATIC_TREES))
def test_from_parents_round_trips_from_paths(name: str) -> None:
    tree = static_tree(name)
    assert_same_shape(TreeShape.from_parents(tree.parents.tolist()), tree)


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        ([[0], [1, 0]], r"tree path \[1, 0\]: its parent path \[1\] is missing"),
        ([[0], [0, -1]], r"tree path \[0, -1\]: negative rank -1"),
        ([[0], [10]], r"tree path \[10\]: rank 10 >= top_k=10"),
        ([[0], [1], [0]], r"tree path \[0\]: duplicate path"),
        ([[0], []], r"tree path \[\]: empty path"),
    ],
)
def test_invalid_paths_are_named(paths: list[list[int]], message: str) -> None:
    with pytest.raises(Clover2Error, match=message):
        TreeShape.from_paths(paths)


def test_top_k_bounds_ranks() -> None:
    assert TreeShape.from_paths([[0], [1], [2]], top_k=3).size == 4
    with pytest.raises(Clover2Error, match=r"rank 3 >= top_k=3"):
        TreeShape.from_paths([[0], [3]], top_k=3)


@pytest.mark.parametrize(
    ("parents", "message"),
    [
        ([], r"start with the root's -1"),
        ([0, 0], r"start with the root's -1"),
        ([-1, 0, 3, 1], r"tree node 2: parent 3 is not an earlier node"),
        ([-1, 0, 1, 0], r"tree node 3: depth 1 comes after depth 2, not breadth-first"),
    ],
)
def test_invalid_parents_are_named(parents: list[int], message: str) -> None:
    with pytest.raises(Clover2Error, match=message):
        TreeShape.from_parents(parents)


def test_chain_rejects_negative_length() -> None:
    with pytest.raises(Clover2Error, match="length >= 0"):
        TreeShape.chain(-1)


def test_unknown_static_tree_lists_known_names() -> None:
    with pytest.raises(Clover2Error, match="'nope'.*chain_3, .*eagle_mc_sim_7b_63, .*medusa_mc_sim_7b_63"):
        static_tree("nope")


# ---------------------------------------------------------------- dynamic tree (EAGLE-2)


def table_expand(table: dict[int, list[tuple[int, float]]]):
    """A drafter whose children depend only on the parent's token: table[token] = [(child, prob), ...]."""

    def expand(tokens: torch.Tensor, parents: torch.Tensor, frontier: torch.Tensor):
        assert tokens.shape == parents.shape
        rows = [table[int(tokens[f])] for f in frontier]
        child_tokens = torch.tensor([[tok for tok, _ in row] for row in rows])
        child_logprobs = torch.tensor([[prob for _, prob in row] for row in rows]).log()
        return child_tokens, child_logprobs

    return expand


HAND_TABLE = {
    100: [(1, 0.6), (2, 0.3)],
    1: [(11, 0.45), (12, 0.4)],  # joint 0.27, 0.24
    2: [(21, 0.95), (22, 0.05)],  # joint 0.285, 0.015
}


def test_dynamic_tree_by_hand() -> None:
    # Ranking by joint: 1 (.6), 2 (.3), 21 (.285), 11 (.27), 12 (.24), 22 (.015).
    tree = grow_dynamic_tree(100, table_expand(HAND_TABLE), depth=2, top_k=2, total_tokens=3)
    assert tree.tokens.tolist() == [100, 1, 2, 21]
    assert tree.shape.parents.tolist() == [-1, 0, 0, 2]
    assert torch.allclose(tree.scores, torch.tensor([1, 0.6, 0.3, 0.285]).log())
    # One more node: 11 hangs under node 1, so breadth-first it comes before 21.
    tree = grow_dynamic_tree(100, table_expand(HAND_TABLE), depth=2, top_k=2, total_tokens=4)
    assert tree.tokens.tolist() == [100, 1, 2, 11, 21]
    assert tree.shape.parents.tolist() == [-1, 0, 0, 1, 2]
    assert_consistent(tree.shape)


def test_dynamic_tree_orders_siblings_by_score() -> None:
    table = {7: [(3, 0.2), (4, 0.5), (5, 0.3)]}  # a drafter that did not sort its answer
    tree = grow_dynamic_tree(7, table_expand(table), depth=1, top_k=3, total_tokens=60)
    assert tree.tokens.tolist() == [7, 4, 5, 3]
    assert tree.shape.ranks.tolist() == [0, 0, 1, 2]
    assert tree.shape.size == 4  # fewer drafted nodes than total_tokens: keep them all


def heap_table(top_k: int, depth: int, seed: int) -> dict[int, list[tuple[int, float]]]:
    """Children of token t are t*top_k+1 .. t*top_k+top_k (unique per path); random distinct probabilities."""
    gen = torch.Generator().manual_seed(seed)
    n_internal = sum(top_k**d for d in range(depth))
    return {
        t: [(t * top_k + j + 1, p) for j, p in enumerate(torch.rand(top_k, generator=gen).tolist())]
        for t in range(n_internal)
    }


def brute_force(table: dict[int, list[tuple[int, float]]], depth: int, top_k: int, total_tokens: int):
    """The EAGLE-2 rule spelt out on token paths: a beam of top_k per level, then the best total_tokens.

    Returns the kept paths, every path's joint probability, and the beam (paths expanded) per level.
    """
    joint = {(0,): 1.0}
    beams = [[(0,)]]
    drafted: list[tuple[int, ...]] = []
    for _ in range(depth):
        added = [path + (tok,) for path in beams[-1] for tok, _ in table[path[-1]]]
        for path in added:
            joint[path] = joint[path[:-1]] * dict(table[path[-2]])[path[-1]]
        drafted += added
        beams.append(sorted(added, key=joint.get, reverse=True)[:top_k])
    kept = sorted(drafted, key=joint.get, reverse=True)[:total_tokens]
    return set(kept), joint, beams[:-1]


def token_paths(tree: DraftTree) -> list[tuple[int, ...]]:
    parents, tokens = tree.shape.parents.tolist(), tree.tokens.tolist()
    return [tuple(tokens[a] for a in ancestors_or_self(parents, i)) for i in range(tree.shape.size)]


@pytest.mark.parametrize(
    ("depth", "top_k", "total_tokens", "seed"), [(3, 2, 5, 0), (4, 3, 10, 1), (4, 3, 20, 2), (5, 4, 30, 3)]
)
def test_dynamic_tree_matches_brute_force(depth: int, top_k: int, total_tokens: int, seed: int) -> None:
    table = heap_table(top_k, depth, seed)
    tree = grow_dynamic_tree(0, table_expand(table), depth=depth, top_k=top_k, total_tokens=total_tokens)
    expected, joint, _ = brute_force(table, depth, top_k, total_tokens)
    paths = token_paths(tree)
    assert paths[0] == (0,)
    assert set(paths[1:]) == expected
    assert tree.shape.size == total_tokens + 1
    assert torch.allclose(tree.scores.exp(), torch.tensor([joint[p] for p in paths]))
    assert_consistent(tree.shape)
    for node in range(tree.shape.size):  # siblings best first
        kid_scores = tree.scores[tree.shape.children(node)].tolist()
        assert kid_scores == sorted(kid_scores, reverse=True)


def test_dynamic_tree_expands_the_best_top_k_per_level() -> None:
    top_k, depth = 3, 4
    table = heap_table(top_k, depth, seed=5)
    expand = table_expand(table)
    frontier_tokens: list[list[int]] = []

    def recording(tokens: torch.Tensor, parents: torch.Tensor, frontier: torch.Tensor):
        frontier_tokens.append(tokens[frontier].tolist())
        return expand(tokens, parents, frontier)

    grow_dynamic_tree(0, recording, depth=depth, top_k=top_k, total_tokens=60)
    _, _, beams = brute_force(table, depth, top_k, total_tokens=0)
    # Tokens identify paths (heap numbering), so the last token of each beam path names the node.
    assert [sorted(tokens) for tokens in frontier_tokens] == [sorted(p[-1] for p in beam) for beam in beams]
    assert [len(tokens) for tokens in frontier_tokens] == [1, top_k, top_k, top_k]


def test_dynamic_tree_ties_are_deterministic_and_keep_ancestors() -> None:
    top_k, depth = 3, 4
    uniform = {t: [(t * top_k + j + 1, 1.0) for j in range(top_k)] for t in range(200)}  # every log-prob is 0
    first = grow_dynamic_tree(0, table_expand(uniform), depth=depth, top_k=top_k, total_tokens=7)
    again = grow_dynamic_tree(0, table_expand(uniform), depth=depth, top_k=top_k, total_tokens=7)
    assert torch.equal(first.tokens, again.tokens)
    assert_same_shape(first.shape, again.shape)
    # Ties go to the node drafted first: the 3 children of the root, then the first 4 grandchildren.
    assert first.tokens.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert first.shape.parents.tolist() == [-1, 0, 0, 0, 1, 1, 1, 2]
    assert_consistent(first.shape)


def test_dynamic_tree_keeps_ancestors_even_for_scores_above_zero() -> None:
    # A callback that returns raw scores > 0: a child can outscore its parent, but never evict it.
    table = {0: [(1, 1.0), (2, 0.5)], 1: [(3, 0.1), (4, 0.1)], 2: [(5, 50.0), (6, 40.0)]}
    tree = grow_dynamic_tree(0, table_expand(table), depth=2, top_k=2, total_tokens=2)
    assert tree.shape.size == 3
    assert_consistent(tree.shape)  # includes: every node's parent is in the tree
    assert tree.tokens.tolist() == [0, 1, 2]


def test_dynamic_tree_defaults_size() -> None:
    tree = grow_dynamic_tree(0, table_expand(heap_table(10, 5, seed=4)), depth=5, top_k=10, total_tokens=60)
    assert tree.shape.size == 61
    assert tree.shape.max_depth <= 5
    assert_consistent(tree.shape)


@pytest.mark.parametrize(
    ("official", "ours", "drafted"),
    [((5, 10, 60), {"depth": 6, "top_k": 10, "total_tokens": 59}, 59),  # the EAGLE-2 paper's
     ((5, 10, 59), {"depth": 6, "top_k": 10, "total_tokens": 58}, 58)],  # EaModel.from_pretrained's defaults
)
def test_official_eagle2_settings_draft_six_levels_and_count_the_root(official, ours, drafted) -> None:
    assert official_eagle2_settings(*official) == ours

    def expand(tokens: torch.Tensor, parents: torch.Tensor, frontier: torch.Tensor):
        # Unique tokens, random log-probabilities: a tree as deep as the settings let it grow.
        scores = torch.rand(frontier.numel(), 10, generator=torch.Generator().manual_seed(tokens.numel()))
        return torch.arange(frontier.numel() * 10).view(-1, 10) + tokens.numel(), scores.log()

    tree = grow_dynamic_tree(0, expand, **ours)
    assert tree.shape.size - 1 == drafted and tree.shape.max_depth <= 6
    assert_consistent(tree.shape)


def test_dynamic_tree_rejects_bad_callback_and_parameters() -> None:
    def wrong_shape(tokens, parents, frontier):
        return torch.zeros(frontier.numel(), 2, dtype=torch.long), torch.zeros(frontier.numel(), 2)

    with pytest.raises(ValueError, match=r"shape \[1, 3\]"):
        grow_dynamic_tree(0, wrong_shape, depth=2, top_k=3, total_tokens=5)

    def nan_scores(tokens, parents, frontier):
        return torch.zeros(frontier.numel(), 3, dtype=torch.long), torch.full((frontier.numel(), 3), float("nan"))

    with pytest.raises(ValueError, match="NaN"):
        grow_dynamic_tree(0, nan_scores, depth=2, top_k=3, total_tokens=5)
    for depth, top_k, total in itertools.product([0, 1], [0, 1], [0, 1]):
        if depth and top_k and total:
            continue
        with pytest.raises(Clover2Error, match=">= 1"):
            grow_dynamic_tree(0, wrong_shape, depth=depth, top_k=top_k, total_tokens=total)
