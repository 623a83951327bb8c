"""A head's acceptance profile: how often the target's greedy token is the head's rank-r candidate at
depth d, given that the path above it was accepted (METHODS.md §5's static trees, at T = 0).

Measured on held-out conversations of the teacher cache by running the head's own drafter along
them, as decoding would (teacher forcing along the conversation's tokens): at every assistant
position t the drafter drafts a probe tree rooted at token t, whose spine is the top-1 chain and
which hangs `ranks` candidates under every spine node. The target's greedy token at depth d is
known from the cache wherever the conversation itself follows the target's greedy choices up to
that depth (its token t + k is the target's argmax after t + k - 1, for k < d); a depth counts as
reached when the spine above it matched those tokens. Then

    p(d, r) = hits[d][r] / reached[d]

is the chance that a node of rank r at depth d is accepted once its parent is, and a static tree's
expected accepted tokens are Σ over its nodes of Π p(d, r) along the node's rank path (the tree
optimiser's model; the ranks above a node are assumed not to change its chances).

A head that drafts a dynamic tree (EAGLE-2's: which nodes it keeps depends on the drafter's own
scores at each position) has no rank-path model; its table is measured directly instead: per depth
bound D and kept-node count N, the same reached/hits counts per depth for the tree it would draft
(DynamicAcceptance), so τ(D, N) = 1 + Σ_d Π_{j ≤ d} hits_j / reached_j.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from clover2.atomic import atomic_write_text
from clover2.engine.drafter import Drafter, TargetStates
from clover2.engine.tree import DraftTree, TreeShape, keep_order
from clover2.errors import Clover2Error
from clover2.heads.protocol import DraftHead, TrainBatch

ACCEPTANCE = "acceptance.json"  # in the head directory: the profile of the trained head
PROBE_DEPTH, PROBE_RANKS = 5, 4  # as deep as the paper's trees and Clover-2's 5 heads
EVERY_NODE = 1 << 30  # a dynamic tree's total_tokens that keeps every node it drafts


@dataclass
class AcceptanceProfile:
    """Counts per depth (index 0 is depth 1) and rank; `positions` drafted from."""

    reached: list[int]
    hits: list[list[int]]
    positions: int = 0

    @property
    def depth(self) -> int:
        return len(self.reached)

    def probabilities(self) -> list[list[float]]:
        """p(d, r) per depth and rank; 0 where a depth was never reached (nothing is known to pay there)."""
        return [[hit / reached if reached else 0.0 for hit in row] for reached, row in zip(self.reached, self.hits)]

    def to_json(self) -> dict:
        return {**asdict(self), "p": self.probabilities()}

    @classmethod
    def from_json(cls, data: dict, source: str = "acceptance profile") -> AcceptanceProfile:
        try:
            profile = cls(reached=[int(n) for n in data["reached"]], hits=[[int(n) for n in row] for row in data["hits"]],
                          positions=int(data.get("positions", 0)))
        except (KeyError, TypeError, ValueError) as error:
            raise Clover2Error(f"{source}: not an acceptance profile ({type(error).__name__}: {error})") from None
        if len(profile.hits) != len(profile.reached):
            raise Clover2Error(f"{source}: field 'hits' has {len(profile.hits)} depths, 'reached' {len(profile.reached)}")
        return profile


def probe_tree(depth: int = PROBE_DEPTH, ranks: int = PROBE_RANKS) -> TreeShape:
    """The top-1 chain `depth` deep with `ranks` candidates under each of its nodes."""
    return TreeShape.from_paths([[0] * level + [rank] for level in range(depth) for rank in range(ranks)])


def probe_depth(head: DraftHead, depth: int = PROBE_DEPTH) -> int:
    """`depth`, or less for a head that cannot draft that deep."""
    deepest = head.deepest_tree()
    return depth if deepest is None else min(depth, deepest)


@dataclass(frozen=True)
class Drafted:
    """A tree drafted at an assistant position, and the target's greedy tokens below its root, as far as known."""

    tree: DraftTree
    labels: list[int]  # labels[d - 1]: the target's token at depth d


@torch.inference_mode()
def drafted_positions(make_drafter: Callable[[], Drafter], batches: Iterable[TrainBatch], limit: int | None = None) -> Iterator[Drafted]:
    """Run a fresh drafter along each conversation of `batches` as decoding would feed it (teacher forcing
    along its tokens) and draft from every assistant position, at most `limit` in all."""
    drafted = 0
    for batch in batches:
        for row in range(batch.input_ids.shape[0]):
            length = int(batch.attention_mask[row].sum())
            ids = batch.input_ids[row, :length].cpu()
            scored = batch.loss_mask[row, :length].cpu()
            greedy = batch.teacher_logits[row, :length].argmax(dim=-1).cpu()  # greedy[t]: the target's token t + 1
            u, h = batch.u[row, :length], batch.h[row, :length]
            positions = [t for t in range(1, length - 1) if scored[t + 1]]
            if not positions:
                continue
            drafter, start = make_drafter(), positions[0]
            drafter.prefill(ids[:start].to(u.device), TargetStates(u[:start], h[:start]))
            for t in range(start, length - 1):
                if scored[t + 1]:
                    if limit is not None and drafted >= limit:
                        return
                    drafted += 1
                    yield Drafted(drafter.draft(int(ids[t]), 0.0, None), _labels(ids, greedy, scored, t))
                drafter.accept(ids[t : t + 1].to(u.device), TargetStates(u[t : t + 1], h[t : t + 1]))


def _labels(ids: torch.Tensor, greedy: torch.Tensor, scored: torch.Tensor, t: int) -> list[int]:
    """The target's greedy tokens at depths 1, 2, ... below position t: greedy[t + d - 1] is known where
    it is an assistant token and the conversation followed the target's greedy path up to it."""
    labels = []
    for level in range(len(ids)):
        label_at = t + level
        if label_at + 1 >= len(ids) or not scored[label_at + 1]:
            break
        if level and ids[label_at] != greedy[label_at - 1]:
            break  # the conversation leaves the target's greedy path: deeper labels are unknown
        labels.append(int(greedy[label_at]))
    return labels


def measure_acceptance(
    drafter_for: Callable[[TreeShape], Drafter], batches: Iterable[TrainBatch], depth: int, ranks: int, limit: int | None = None
) -> AcceptanceProfile:
    """The profile of the drafters `drafter_for(probe_tree(depth, ranks))` gives, one per conversation,
    over the rows of `batches`; at most `limit` positions drafted from."""
    profile = AcceptanceProfile(reached=[0] * depth, hits=[[0] * ranks for _ in range(depth)])
    shape = probe_tree(depth, ranks)
    for drafted in drafted_positions(lambda: drafter_for(shape), batches, limit):
        _count(drafted, shape, profile)
    return profile


def _count(drafted: Drafted, shape: TreeShape, profile: AcceptanceProfile) -> None:
    """Add one drafted probe tree: per depth, was it reached, and at which rank did the target's token sit."""
    profile.positions += 1
    spine = 0  # the spine node at the current depth - 1 (the root first)
    for level, label in enumerate(drafted.labels[: profile.depth]):
        children = shape.children(spine)
        profile.reached[level] += 1
        matched = (drafted.tree.tokens[children] == label).nonzero().flatten().tolist()
        if not matched:
            return
        profile.hits[level][matched[0]] += 1
        if matched[0] != 0:
            return  # the spine continues under the top-1 candidate only
        spine = int(children[0])


@dataclass
class DynamicAcceptance:
    """What a head's dynamic tree of depth bound D and N kept nodes accepts, for every D <= `depth` and
    N <= `nodes`: reached[D - 1][N - 1][d - 1] and hits[...][d - 1] count, as AcceptanceProfile's do,
    the positions that reached depth d and those whose target token at depth d was in the tree."""

    reached: list[list[list[int]]]
    hits: list[list[list[int]]]
    positions: int = 0

    @property
    def depth(self) -> int:
        return len(self.reached)

    @property
    def nodes(self) -> int:
        return len(self.reached[0]) if self.reached else 0

    def tau(self, depth: int, nodes: int) -> float:
        """1 + the expected accepted drafted tokens: Σ over depths of the chance of accepting that deep."""
        tau, chance = 1.0, 1.0
        for reached, hits in zip(self.reached[depth - 1][nodes - 1], self.hits[depth - 1][nodes - 1]):
            chance *= hits / reached if reached else 0.0
            tau += chance
        return tau

    def to_json(self) -> dict:
        return {"kind": "dynamic", **asdict(self),
                "tau": [[self.tau(d, n) for n in range(1, self.nodes + 1)] for d in range(1, self.depth + 1)]}

    @classmethod
    def from_json(cls, data: dict, source: str = "acceptance profile") -> DynamicAcceptance:
        try:
            table = cls(reached=_counts(data["reached"]), hits=_counts(data["hits"]), positions=int(data.get("positions", 0)))
        except (KeyError, TypeError, ValueError) as error:
            raise Clover2Error(f"{source}: not a dynamic-tree acceptance table ({type(error).__name__}: {error})") from None
        if np.shape(table.reached) != np.shape(table.hits) or np.ndim(table.reached) != 3:
            raise Clover2Error(f"{source}: fields 'reached' and 'hits' must be [depth][nodes][depth] counts of one shape")
        return table


def _counts(rows) -> list[list[list[int]]]:
    return [[[int(n) for n in counts] for counts in by_nodes] for by_nodes in rows]


def measure_dynamic_acceptance(
    drafter_for: Callable[[int, int], Drafter], batches: Iterable[TrainBatch], depth: int, nodes: int,
    limit: int | None = None,
) -> DynamicAcceptance:
    """The table of the dynamic trees `drafter_for(depth, total_tokens)` drafts, for every depth bound up
    to `depth` and up to `nodes` kept nodes, from one growth per position with every drafted node kept
    (tree.keep_order gives each smaller tree from it)."""
    reached = np.zeros((depth, nodes, depth), dtype=np.int64)
    hits = np.zeros_like(reached)
    sizes = np.arange(1, nodes + 1)
    positions = 0
    for drafted in drafted_positions(lambda: drafter_for(depth, EVERY_NODE), batches, limit):
        positions += 1
        path = _label_path(drafted)
        order, depths = keep_order(drafted.tree), drafted.tree.shape.depths
        for bound in range(1, depth + 1):
            within = order[depths[order] <= bound]
            place = {int(node): i for i, node in enumerate(within)}
            accepted = np.array([place[node] for node in path[:bound]])[:, None] < sizes[None, :]
            accepted_depth = accepted.sum(axis=0)  # per N: ancestors come first, so accepted nodes are a prefix
            for level in range(1, min(len(drafted.labels), bound) + 1):
                reached[bound - 1, :, level - 1] += accepted_depth >= level - 1
                hits[bound - 1, :, level - 1] += accepted_depth >= level
    return DynamicAcceptance(reached.tolist(), hits.tolist(), positions)


def _label_path(drafted: Drafted) -> list[int]:
    """The tree's nodes along the target's tokens, from depth 1 down, as far as the tree holds them."""
    path, node, shape = [], 0, drafted.tree.shape
    for label in drafted.labels:
        children = shape.children(node)
        matched = children[drafted.tree.tokens[children] == label]
        if not matched.numel():
            break
        node = int(matched[0])
        path.append(node)
    return path


def head_acceptance(head: DraftHead, batches: Iterable[TrainBatch], limit: int | None = None,
                    depth: int = PROBE_DEPTH, ranks: int = PROBE_RANKS) -> AcceptanceProfile:
    """`head`'s profile of static trees over `batches` (the teacher's held-out conversations)."""
    return _evaluating(head, lambda: measure_acceptance(head.drafter, batches, probe_depth(head, depth), ranks, limit))


def dynamic_acceptance(head: DraftHead, batches: Iterable[TrainBatch], limit: int | None = None,
                       depth: int = PROBE_DEPTH, nodes: int = 64) -> DynamicAcceptance | None:
    """The table of `head`'s dynamic tree (as its options draft it but for the size) up to `depth` levels
    and `nodes` kept nodes over `batches`; None for a head whose trees are static."""
    if not head.dynamic_trees:
        return None
    return _evaluating(head, lambda: measure_dynamic_acceptance(head.dynamic_drafter, batches, depth, nodes, limit))


def _evaluating(head: DraftHead, measure: Callable[[], AcceptanceProfile | DynamicAcceptance]):
    was_training = head.training
    head.eval()
    try:
        return measure()
    finally:
        head.train(was_training)


def save_acceptance(profile: AcceptanceProfile | DynamicAcceptance, path: Path, provenance: dict | None = None) -> Path:
    atomic_write_text(Path(path), json.dumps({**profile.to_json(), **(provenance or {})}, indent=2) + "\n")
    return Path(path)


def load_acceptance(path: Path) -> AcceptanceProfile | DynamicAcceptance:
    """A static profile, or a dynamic tree's table (field `kind`: dynamic)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise Clover2Error(f"{path}: cannot read an acceptance profile ({error})") from None
    kind = DynamicAcceptance if isinstance(data, dict) and data.get("kind") == "dynamic" else AcceptanceProfile
    return kind.from_json(data, str(path))
