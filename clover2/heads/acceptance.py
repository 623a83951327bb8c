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
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from clover2.atomic import atomic_write_text
from clover2.engine.drafter import Drafter, TargetStates
from clover2.engine.tree import TreeShape
from clover2.errors import Clover2Error
from clover2.heads.protocol import DraftHead, TrainBatch

ACCEPTANCE = "acceptance.json"  # in the head directory: the profile of the trained head
PROBE_DEPTH, PROBE_RANKS = 5, 4  # as deep as the paper's trees and Clover-2's 5 heads


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


@torch.inference_mode()
def measure_acceptance(
    drafter_for: Callable[[TreeShape], Drafter], batches: Iterable[TrainBatch], depth: int, ranks: int, limit: int | None = None
) -> AcceptanceProfile:
    """The profile of the drafters `drafter_for(probe_tree(depth, ranks))` gives, one per conversation,
    over the rows of `batches`; at most `limit` positions drafted from."""
    profile = AcceptanceProfile(reached=[0] * depth, hits=[[0] * ranks for _ in range(depth)])
    shape = probe_tree(depth, ranks)
    for batch in batches:
        for row in range(batch.input_ids.shape[0]):
            if limit is not None and profile.positions >= limit:
                return profile
            _profile_row(drafter_for(shape), batch, row, shape, profile, limit)
    return profile


def _profile_row(drafter: Drafter, batch: TrainBatch, row: int, shape: TreeShape, profile: AcceptanceProfile, limit: int | None) -> None:
    length = int(batch.attention_mask[row].sum())
    ids = batch.input_ids[row, :length].cpu()
    scored = batch.loss_mask[row, :length].cpu()
    greedy = batch.teacher_logits[row, :length].argmax(dim=-1).cpu()  # greedy[t]: the target's token t + 1
    u, h = batch.u[row, :length], batch.h[row, :length]
    positions = [t for t in range(1, length - 1) if scored[t + 1]]
    if not positions:
        return
    start = positions[0]
    drafter.prefill(ids[:start].to(u.device), TargetStates(u[:start], h[:start]))
    for t in range(start, length - 1):
        if scored[t + 1] and (limit is None or profile.positions < limit):
            _count(drafter.draft(int(ids[t]), 0.0, None).tokens, ids, greedy, scored, t, shape, profile)
        drafter.accept(ids[t : t + 1].to(u.device), TargetStates(u[t : t + 1], h[t : t + 1]))


def _count(
    tokens: torch.Tensor, ids: torch.Tensor, greedy: torch.Tensor, scored: torch.Tensor, t: int, shape: TreeShape,
    profile: AcceptanceProfile,
) -> None:
    """Add one drafted probe tree: per depth, was it reached, and at which rank did the target's token sit."""
    profile.positions += 1
    spine = 0  # the spine node at the current depth - 1 (the root first)
    for level in range(profile.depth):
        label_at = t + level  # greedy[t + level] is the target's token at depth level + 1
        if label_at + 1 >= len(ids) or not scored[label_at + 1]:
            return
        if level and ids[label_at] != greedy[label_at - 1]:
            return  # the conversation leaves the target's greedy path: deeper labels are unknown
        children = shape.children(spine)
        profile.reached[level] += 1
        matched = (tokens[children] == greedy[label_at]).nonzero().flatten().tolist()
        if not matched:
            return
        profile.hits[level][matched[0]] += 1
        if matched[0] != 0:
            return  # the spine continues under the top-1 candidate only
        spine = int(children[0])


def head_acceptance(head: DraftHead, batches: Iterable[TrainBatch], limit: int | None = None,
                    depth: int = PROBE_DEPTH, ranks: int = PROBE_RANKS) -> AcceptanceProfile:
    """`head`'s profile over `batches` (the teacher's held-out conversations)."""
    was_training = head.training
    head.eval()
    try:
        return measure_acceptance(head.drafter, batches, probe_depth(head, depth), ranks, limit)
    finally:
        head.train(was_training)


def save_acceptance(profile: AcceptanceProfile, path: Path, provenance: dict | None = None) -> Path:
    atomic_write_text(Path(path), json.dumps({**profile.to_json(), **(provenance or {})}, indent=2) + "\n")
    return Path(path)


def load_acceptance(path: Path) -> AcceptanceProfile:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise Clover2Error(f"{path}: cannot read an acceptance profile ({error})") from None
    return AcceptanceProfile.from_json(data, str(path))
