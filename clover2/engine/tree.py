"""Token trees for speculative decoding: static trees (EAGLE-1, Clover-2, Medusa) and EAGLE-2's dynamic tree.

Node 0 is the root: the token the target emitted last step, not yet in the KV cache. Every other node
is a drafted token. Nodes are numbered breadth-first (all of depth d before depth d+1), so a parent
always has a smaller index than its child, the nodes of one depth are a contiguous range, and
siblings are stored in rank order (METHODS.md §4-§5).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from clover2.errors import Clover2Error

# METHODS.md §5. EAGLE-1 / Clover-2's list: 25 nodes + root, depth 5, despite its name.
_EAGLE_MC_SIM_7B_63 = [
    [0], [1], [2], [3],
    [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [2, 1], [3, 0],
    [0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 2, 0], [0, 2, 1], [1, 0, 0],
    [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2],
    [0, 0, 0, 0, 0], [0, 0, 0, 0, 1],
]

# Medusa's `mc_sim_7b_63` (FasterDecoding/Medusa, medusa/model/medusa_choices.py): 63 nodes, depth 4,
# kept in Medusa's order; from_paths sorts it breadth-first.
_MEDUSA_MC_SIM_7B_63 = [
    [0], [0, 0], [1], [0, 1], [2], [0, 0, 0], [1, 0], [0, 2], [3], [0, 3], [4], [0, 4], [2, 0],
    [0, 5], [0, 0, 1], [5], [0, 6], [6], [0, 7], [0, 1, 0], [1, 1], [7], [0, 8], [0, 0, 2], [3, 0],
    [0, 9], [8], [9], [1, 0, 0], [0, 2, 0], [1, 2], [0, 0, 3], [4, 0], [2, 1], [0, 0, 4], [0, 0, 5],
    [0, 0, 0, 0], [0, 1, 1], [0, 0, 6], [0, 3, 0], [5, 0], [1, 3], [0, 0, 7], [0, 0, 8], [0, 0, 9],
    [6, 0], [0, 4, 0], [1, 4], [7, 0], [0, 1, 2], [2, 0, 0], [3, 1], [2, 2], [8, 0], [0, 5, 0],
    [1, 5], [1, 0, 1], [0, 2, 1], [9, 0], [0, 6, 0], [0, 0, 0, 1], [1, 6], [0, 7, 0],
]

# Small trees for targets whose verification cost grows with every node verified (a CPU; on a GPU a
# forward over a few dozen tokens costs about what one over a single token does).
# Chains: the drafter's top-1 at every depth.
_CHAINS = {f"chain_{length}": [[0] * depth for depth in range(1, length + 1)] for length in (3, 4, 5, 6)}
# The n most probable paths of `_EAGLE_MC_SIM_7B_63`, under a model where every level and every step
# down the drafter's ranking halves a path's probability (rank r is accepted with probability
# 2^-(r+1) at any depth): sorted by (depth + Σ ranks, depth, path), ties to the shallower path (one
# draft forward fewer), then breadth-first. A path is never more probable than its parent, so the
# first n are a tree, and of the 25-node tree's n-node subtrees one with the most expected accepted
# tokens under that model (Σ of path probabilities); it comes out wide near the root, where
# acceptance is highest.
_EAGLE_TOP = {
    "eagle_top_6": [[0], [1], [2], [0, 0], [0, 1], [1, 0]],
    "eagle_top_8": [[0], [1], [2], [3], [0, 0], [0, 1], [1, 0], [0, 0, 0]],
    "eagle_top_12": [[0], [1], [2], [3], [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [0, 0, 0], [0, 0, 1]],
}

# Names are file-path components too (a tree-size sweep writes one file per tree).
STATIC_TREES: dict[str, list[list[int]]] = {
    "eagle_mc_sim_7b_63": _EAGLE_MC_SIM_7B_63,
    "medusa_mc_sim_7b_63": _MEDUSA_MC_SIM_7B_63,
    **_CHAINS,
    **_EAGLE_TOP,
}


# eq=False: dataclass equality would compare tensors with `==` and fail on their truth value.
@dataclass(frozen=True, eq=False)
class TreeShape:
    """Topology only (no tokens). Tensors on CPU; the engine moves them."""

    parents: torch.Tensor  # long [N]; parents[0] == -1
    ranks: torch.Tensor  # long [N]; rank among the parent's children as the drafter ranked them (0 = top-1); root 0
    depths: torch.Tensor  # long [N]; root 0
    mask: torch.Tensor  # bool [N, N]; mask[i, j] iff j == i or j is an ancestor of i
    retrieve: torch.Tensor  # long [L, max_depth + 1]; per leaf (in index order): root..leaf, padded with -1

    @property
    def size(self) -> int:
        return self.parents.numel()

    @property
    def max_depth(self) -> int:
        return int(self.depths[-1])  # breadth-first: the last node is among the deepest

    def nodes_at(self, depth: int) -> torch.Tensor:
        """Indices of the nodes at `depth`: a contiguous range, because nodes are breadth-first."""
        start, stop = torch.searchsorted(self.depths, torch.tensor([depth, depth + 1])).tolist()
        return torch.arange(start, stop)

    def children(self, node: int) -> torch.Tensor:
        """Children of `node`, best rank first (siblings are stored in rank order)."""
        return torch.nonzero(self.parents == node).flatten()

    @classmethod
    def from_paths(cls, paths: Sequence[Sequence[int]], top_k: int = 10) -> TreeShape:
        """A static tree from rank paths: each path lists child ranks from the root, e.g. [0, 2]."""
        keys = [tuple(int(rank) for rank in path) for path in paths]
        _check_paths(keys, top_k)
        # Sorting by (length, path) makes the order breadth-first with siblings in rank order.
        keys.sort(key=lambda key: (len(key), key))
        index = {(): 0} | {key: i + 1 for i, key in enumerate(keys)}
        parents = [-1] + [index[key[:-1]] for key in keys]
        ranks = [0] + [key[-1] for key in keys]
        depths = [0] + [len(key) for key in keys]
        return cls._build(parents, ranks, depths)

    @classmethod
    def chain(cls, length: int) -> TreeShape:
        """The root and `length` drafted nodes in a line (a drafter without a tree)."""
        if length < 0:
            raise Clover2Error(f"a chain needs a length >= 0, got {length}")
        return cls.from_parents([-1, *range(length)])

    @classmethod
    def from_parents(cls, parents: Sequence[int]) -> TreeShape:
        """A tree from each node's parent index (breadth-first order); ranks = order among siblings."""
        parents = [int(p) for p in parents]
        depths = _depths_of(parents)
        siblings_seen = [0] * len(parents)
        ranks = [0] * len(parents)
        for node, parent in enumerate(parents[1:], start=1):
            ranks[node] = siblings_seen[parent]
            siblings_seen[parent] += 1
        return cls._build(parents, ranks, depths)

    @classmethod
    def _build(cls, parents: list[int], ranks: list[int], depths: list[int]) -> TreeShape:
        parent_t = torch.tensor(parents, dtype=torch.long)
        depth_t = torch.tensor(depths, dtype=torch.long)
        return cls(
            parents=parent_t,
            ranks=torch.tensor(ranks, dtype=torch.long),
            depths=depth_t,
            mask=_ancestor_mask(parent_t),
            retrieve=_retrieve_paths(parent_t, depth_t),
        )


def _check_paths(keys: list[tuple[int, ...]], top_k: int) -> None:
    """Reject a path list that is not a tree, naming the first offending path."""
    present = set()
    for key in keys:
        where = f"tree path {list(key)}"
        if not key:
            raise Clover2Error(f"{where}: empty path (the root is implicit; list only drafted nodes)")
        if min(key) < 0:
            raise Clover2Error(f"{where}: negative rank {min(key)}")
        if max(key) >= top_k:
            raise Clover2Error(f"{where}: rank {max(key)} >= top_k={top_k}")
        if key in present:
            raise Clover2Error(f"{where}: duplicate path")
        present.add(key)
    for key in keys:
        if len(key) > 1 and key[:-1] not in present:
            raise Clover2Error(f"tree path {list(key)}: its parent path {list(key[:-1])} is missing")


def _depths_of(parents: list[int]) -> list[int]:
    """Depth per node, checking that `parents` describes a breadth-first tree rooted at node 0."""
    if not parents or parents[0] != -1:
        raise Clover2Error(f"tree parents must start with the root's -1, got {parents[:1]}")
    depths = [0] * len(parents)
    for node, parent in enumerate(parents[1:], start=1):
        if not 0 <= parent < node:
            raise Clover2Error(f"tree node {node}: parent {parent} is not an earlier node (need 0 <= parent < {node})")
        depths[node] = depths[parent] + 1
        if depths[node] < depths[node - 1]:
            raise Clover2Error(
                f"tree node {node}: depth {depths[node]} comes after depth {depths[node - 1]}, not breadth-first"
            )
    return depths


def _walk_up(parents: torch.Tensor, nodes: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Climb from `nodes` to the root, one tree level per step (one small tensor op per level, not per node).

    Step s yields (positions in `nodes` that still have an ancestor s levels up, that ancestor); step 0
    is the nodes themselves.
    """
    positions = torch.arange(nodes.numel())
    current = nodes.clone()
    alive = current >= 0
    while alive.any():
        yield positions[alive], current[alive]
        current[alive] = parents[current[alive]]
        alive = current >= 0


def _ancestor_mask(parents: torch.Tensor) -> torch.Tensor:
    """mask[i, j] iff j is i or an ancestor of i."""
    n = parents.numel()
    mask = torch.zeros(n, n, dtype=torch.bool)
    for nodes, ancestors in _walk_up(parents, torch.arange(n)):
        mask[nodes, ancestors] = True
    return mask


def _retrieve_paths(parents: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """Root-to-leaf node indices, one row per leaf in index order, padded with -1."""
    # Built by climbing from the leaves rather than by gathering mask rows: a gather that large goes
    # multi-threaded in torch's CPU kernels and costs milliseconds on a busy machine.
    is_leaf = torch.ones(parents.numel(), dtype=torch.bool)
    is_leaf[parents[1:]] = False
    leaves = torch.nonzero(is_leaf).flatten()
    retrieve = torch.full((leaves.numel(), int(depths[-1]) + 1), -1, dtype=torch.long)
    for step, (rows, ancestors) in enumerate(_walk_up(parents, leaves)):
        retrieve[rows, depths[leaves[rows]] - step] = ancestors
    return retrieve


def tree_paths(tree: str) -> list[list[int]]:
    """The rank paths of a static tree: a name from METHODS.md §5, or a `.json` file whose field
    `paths` lists them (what `clover2 choose-tree` writes for a head on this machine)."""
    if tree in STATIC_TREES:
        return STATIC_TREES[tree]
    if not str(tree).endswith(".json"):
        raise Clover2Error(f"unknown static tree {tree!r}; known: {', '.join(sorted(STATIC_TREES))}, or a .json file")
    try:
        paths = json.loads(Path(tree).read_text(encoding="utf-8"))["paths"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise Clover2Error(f"{tree}: cannot read a tree's field 'paths' ({type(error).__name__}: {error})") from None
    if not isinstance(paths, list) or not all(isinstance(p, list) and all(isinstance(r, int) for r in p) for p in paths):
        raise Clover2Error(f"{tree}: field 'paths' must be a list of lists of ranks, e.g. [[0], [1], [0, 0]]")
    return paths


def static_tree(tree: str) -> TreeShape:
    """A static tree by name or file (`tree_paths`); a file's errors name the file."""
    paths = tree_paths(tree)
    try:
        return TreeShape.from_paths(paths)  # named trees are valid: only a file's paths can fail here
    except Clover2Error as error:
        raise Clover2Error(f"{tree}: field 'paths': {error}") from None


def chosen_setting(value: int | str, key: str) -> int:
    """A dynamic tree's setting (`depth`, `total_tokens`): the number itself, or a `.json` file's
    `drafting` field's value of it (what `clover2 choose-tree` writes for a head whose tree is dynamic)."""
    if not isinstance(value, str):
        return value
    if not value.endswith(".json"):
        raise Clover2Error(f"{key}: expected an integer or a chosen-tree .json file, got {value!r}")
    try:
        setting = json.loads(Path(value).read_text(encoding="utf-8"))["drafting"][key]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise Clover2Error(f"{value}: cannot read field 'drafting.{key}' ({type(error).__name__}: {error})") from None
    if not isinstance(setting, int):
        raise Clover2Error(f"{value}: field 'drafting.{key}' must be an integer, got {setting!r}")
    return setting


def random_tree(size: int, seed: int, max_width: int = 12) -> TreeShape:
    """A random breadth-first tree of `size` nodes shaped like EAGLE-2's dynamic trees (tests, benchmarks)."""
    rng = random.Random(seed)
    parents, level = [-1], range(0, 1)
    while len(parents) < size:
        width = min(rng.randint(1, max_width), size - len(parents))
        parents += sorted(rng.choice(level) for _ in range(width))
        level = range(len(parents) - width, len(parents))
    return TreeShape.from_parents(parents)


@dataclass(frozen=True, eq=False)
class DraftTree:
    """Drafted tokens on a tree."""

    tokens: torch.Tensor  # long [N]; tokens[0] is the root token
    shape: TreeShape
    scores: torch.Tensor  # float [N]; joint (path-product) log-probability under the drafter; root 0
    # [N, V]: the distribution each node's children were sampled from (without replacement, in
    # sibling order) at temperature > 0; None when the children are deterministic proposals.
    draft_probs: torch.Tensor | None = None


ExpandFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def grow_dynamic_tree(root_token: int, expand: ExpandFn, depth: int, top_k: int, total_tokens: int) -> DraftTree:
    """EAGLE-2's dynamic tree (METHODS.md §4) over a drafter callback.

    `expand(tokens, parents, frontier)` gets the tree grown so far (tokens [M], parents [M],
    breadth-first) and the frontier node indices [F], and returns the drafter's top-k children of each
    frontier node: (child_tokens [F, top_k], child_logprobs [F, top_k]).

    Expand the root, then `depth - 1` times expand the `top_k` nodes of the newest level with the best
    joint score; finally keep the `total_tokens` best drafted nodes and return them breadth-first,
    siblings best first. Ties go to the node drafted first.
    """
    if depth < 1 or top_k < 1 or total_tokens < 1:
        raise Clover2Error(f"dynamic tree needs depth, top_k, total_tokens >= 1; got {depth}, {top_k}, {total_tokens}")
    tokens = torch.tensor([root_token], dtype=torch.long)
    parents = torch.tensor([-1], dtype=torch.long)
    joint = torch.zeros(1)
    # The ranking score is the joint capped by the parent's ranking score: identical to the joint for
    # log-probs <= 0, and never larger than an ancestor's even for a callback that returns scores > 0,
    # so with ties going to the smaller index every best-n set contains its nodes' ancestors.
    rank_score = torch.zeros(1)
    frontier = torch.tensor([0])
    for level in range(depth):
        child_tokens, child_logprobs = _expand_checked(expand, tokens, parents, frontier, top_k)
        first_new = tokens.numel()
        child_joint = joint[frontier, None] + child_logprobs  # [F, top_k]
        tokens = torch.cat([tokens, child_tokens.flatten()])
        parents = torch.cat([parents, frontier.repeat_interleave(top_k)])
        joint = torch.cat([joint, child_joint.flatten()])
        rank_score = torch.cat([rank_score, torch.minimum(rank_score[frontier, None], child_joint).flatten()])
        if level < depth - 1:
            frontier = first_new + _best(rank_score[first_new:], top_k).sort().values
    kept = (_best(rank_score[1:], total_tokens) + 1).sort().values
    return _reindex_breadth_first(tokens, parents, joint, kept)


def keep_order(tree: DraftTree) -> torch.Tensor:
    """The drafted nodes of a dynamic tree in the order grow_dynamic_tree keeps them, best first.

    For a tree grown with every drafted node kept (total_tokens at least what it drafts), the tree the same
    drafter grows with `depth` D and `total_tokens` N is the root plus the first N of this order among
    the nodes of depth <= D: the levels above D are expanded alike, and the kept set is the best N by
    the same ranking score (the joint capped by the parent's). Ties go to the shallower node, then to
    the node stored first, where grow_dynamic_tree sends them to the node drafted first (the same but
    for exactly equal scores at one level, a tie a measurement may resolve either way).
    """
    parents, joint = tree.shape.parents.tolist(), tree.scores.tolist()
    score = [0.0] * len(parents)
    for node in range(1, len(parents)):  # parents come first (breadth-first)
        score[node] = min(score[parents[node]], joint[node])
    depths = tree.shape.depths.tolist()
    return torch.tensor(sorted(range(1, len(parents)), key=lambda node: (-score[node], depths[node], node)), dtype=torch.long)


def official_eagle2_settings(depth: int, top_k: int, total_token: int) -> dict[str, int]:
    """EAGLE-2's settings as its official code counts them (SafeAILab/EAGLE, `EaModel.from_pretrained`)
    in grow_dynamic_tree's terms.

    The official drafter expands the root and then `depth` more levels, so it drafts depth + 1 levels,
    and its `total_token` counts the root, so it verifies total_token - 1 drafted nodes; ours count
    drafted levels and drafted nodes. The paper's total_token 60, depth 5, top_k 10 is our depth 6,
    total_tokens 59, top_k 10.
    """
    return {"depth": depth + 1, "top_k": top_k, "total_tokens": total_token - 1}


def _expand_checked(
    expand: ExpandFn, tokens: torch.Tensor, parents: torch.Tensor, frontier: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Call the drafter and check its answer here, not deep inside the tree arithmetic."""
    child_tokens, child_logprobs = expand(tokens, parents, frontier)
    expected = (frontier.numel(), top_k)
    if tuple(child_tokens.shape) != expected or tuple(child_logprobs.shape) != expected:
        raise ValueError(
            f"expand must return tokens and log-probs of shape {list(expected)}, "
            f"got {list(child_tokens.shape)} and {list(child_logprobs.shape)}"
        )
    if torch.isnan(child_logprobs).any():
        raise ValueError("expand returned NaN log-probabilities")
    return child_tokens.to(torch.long), child_logprobs.to(torch.float32)


def _best(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the n highest scores; a stable sort sends ties to the smaller index, deterministically."""
    return torch.sort(scores, descending=True, stable=True).indices[:n]


def _reindex_breadth_first(
    tokens: torch.Tensor, parents: torch.Tensor, joint: torch.Tensor, kept: torch.Tensor
) -> DraftTree:
    """The root plus `kept` (ancestor-closed, ascending) renumbered breadth-first, siblings best joint first."""
    parent_of = parents.tolist()
    children: dict[int, list[int]] = {}
    # Visiting kept nodes from best to worst score fills each sibling list best first.
    for node in kept[_best(joint[kept], kept.numel())].tolist():
        children.setdefault(parent_of[node], []).append(node)
    order, new_parents = [0], [-1]
    for new_index, node in enumerate(order):  # `order` grows while we walk it: a breadth-first queue
        for child in children.get(node, []):
            order.append(child)
            new_parents.append(new_index)
    order_t = torch.tensor(order)
    return DraftTree(tokens=tokens[order_t], shape=TreeShape.from_parents(new_parents), scores=joint[order_t])
