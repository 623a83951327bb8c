"""Choosing a head's static tree for this machine: the tree that maximises predicted tokens per second.

Under the acceptance model (clover2.heads.acceptance) a node with rank path (r_1 ... r_d) is
accepted with probability Π_k p(k, r_k), and at T = 0 at most one node per depth is accepted, so

    τ(tree) = 1 + Σ_nodes Π_k p(k, r_k)            (the bonus token included)
    tokens/s(tree) = τ(tree) / step_ms(depth, nodes) · 1000

where step_ms is the cost model's draft + verify + bookkeeping (clover2.planning.costs), which
depends on the tree only through its depth and node count and never falls as either grows.

The search is exact, not greedy. For a fixed node count N and depth bound D, the N most probable
paths of depth ≤ D have the largest possible Σ of path probabilities of any N nodes, and they form
a tree (a child is never more probable than its parent; ties go to the shallower path); their own
depth is ≤ D, so they cost at most what any other tree of N nodes and depth ≤ D costs. Every tree
is therefore matched or beaten by one of these top-N sets, and evaluating the exact objective on
each (N, D) in range finds the optimum over all trees within the ranks, depth and size measured.
"No drafting" (plain decoding, the cost model's plain step) is a candidate as well.

A dynamic tree (EAGLE-2's) has two settings, its depth bound D and its kept nodes N, and a measured
τ(D, N) (clover2.heads.acceptance.DynamicAcceptance): every (D, N) is evaluated, which is exact by
enumeration.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass

from clover2.errors import Clover2Error
from clover2.heads.acceptance import AcceptanceProfile, DynamicAcceptance
from clover2.planning.costs import CostModel

Path = tuple[int, ...]


@dataclass(frozen=True)
class Choice:
    """A chosen tree and what the models predict for it."""

    nodes: int  # drafted nodes verified per step; 0 = no drafting
    depth: int
    tau: float
    step_ms: float
    plain_ms: float
    paths: list[list[int]] | None = None  # a static tree's rank paths, as TreeShape.from_paths takes them

    @classmethod
    def static(cls, paths: list[list[int]], tau: float, step_ms: float, plain_ms: float) -> Choice:
        return cls(len(paths), max((len(p) for p in paths), default=0), tau, step_ms, plain_ms, paths)

    @property
    def drafting(self) -> dict[str, int]:
        """A dynamic tree's settings (its head's planned options) for this choice; no drafting is 0 nodes
        at depth 1, so that a sweep that sets total_tokens alone still gets a depth it can draft."""
        return {"depth": max(self.depth, 1), "total_tokens": self.nodes}

    @property
    def tokens_per_second(self) -> float:
        return 1000 * self.tau / self.step_ms

    @property
    def speedup(self) -> float:
        return self.tau * self.plain_ms / self.step_ms

    def to_json(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "paths"},
                "tokens_per_second": self.tokens_per_second, "speedup": self.speedup}


def path_probability(p: list[list[float]], path: Path) -> float:
    return math.prod(p[depth][rank] for depth, rank in enumerate(path))


def predicted_tau(p: list[list[float]], paths: list[list[int]]) -> float:
    """1 + the expected accepted drafted tokens of a tree under the profile `p`."""
    return 1.0 + sum(path_probability(p, tuple(path)) for path in paths)


def most_probable_paths(p: list[list[float]], count: int, depth: int) -> list[Path]:
    """The `count` most probable rank paths of depth ≤ `depth`, most probable first (ties: shallower,
    then smaller ranks); ancestor-closed, so a tree."""
    ranks = len(p[0]) if p else 0
    heap: list[tuple[float, int, Path]] = [(-p[0][r], 1, (r,)) for r in range(ranks)] if depth >= 1 else []
    heapq.heapify(heap)
    chosen: list[Path] = []
    while heap and len(chosen) < count:
        negative, length, path = heapq.heappop(heap)
        if -negative <= 0.0:
            break  # nothing left that is ever accepted
        chosen.append(path)
        if length < min(depth, len(p)):
            for r in range(ranks):
                heapq.heappush(heap, (negative * p[length][r], length + 1, (*path, r)))
    return chosen


def choose_tree(p: list[list[float]], costs: CostModel, head: str, max_nodes: int | None = None,
                max_depth: int | None = None) -> Choice:
    """The tree of at most `max_nodes` drafted nodes and `max_depth` levels (default: what the models
    cover) with the most predicted tokens per second, or no drafting if nothing beats plain decoding."""
    _check_measured(costs, head)
    max_nodes = min(max_nodes or max(costs.verify_ms) - 1, max(costs.verify_ms) - 1)
    max_depth = min(max_depth or len(p), len(p))
    best = Choice.static([], 1.0, costs.plain_ms, costs.plain_ms)
    for depth in range(1, max_depth + 1):
        ordered = most_probable_paths(p, max_nodes, depth)
        tau = 1.0
        for count, path in enumerate(ordered, start=1):
            tau += path_probability(p, path)
            chosen = ordered[:count]
            candidate = Choice.static([list(q) for q in chosen], tau, costs.step_ms(head, max(map(len, chosen)), count),
                                      costs.plain_ms)
            if candidate.tokens_per_second > best.tokens_per_second:
                best = candidate
    return best


def choose_dynamic_tree(table: DynamicAcceptance, costs: CostModel, head: str, max_nodes: int | None = None,
                        max_depth: int | None = None) -> Choice:
    """The dynamic tree size (depth bound D, kept nodes N) with the most predicted tokens per second, or no
    drafting: every (D, N) the table and the cost model cover is evaluated on the exact objective, with
    τ(D, N) measured for the tree the head's drafter keeps at that size (no rank-path model to search)."""
    _check_measured(costs, head)
    max_nodes = min(max_nodes or table.nodes, table.nodes, max(costs.verify_ms) - 1)
    max_depth = min(max_depth or table.depth, table.depth)
    best = Choice(0, 0, 1.0, costs.plain_ms, costs.plain_ms)
    for depth in range(1, max_depth + 1):
        for nodes in range(1, max_nodes + 1):
            candidate = Choice(nodes, depth, table.tau(depth, nodes), costs.step_ms(head, depth, nodes), costs.plain_ms)
            if candidate.tokens_per_second > best.tokens_per_second:
                best = candidate
    return best


def choose(acceptance: AcceptanceProfile | DynamicAcceptance, costs: CostModel, head: str,
           max_nodes: int | None = None, max_depth: int | None = None) -> tuple[Choice, float]:
    """The choice for a head's static profile or dynamic table, and by what factor its acceptance would
    have to grow for a tree to pay (needed_acceptance; 1.0 when one does)."""
    if isinstance(acceptance, DynamicAcceptance):
        choice = choose_dynamic_tree(acceptance, costs, head, max_nodes, max_depth)
        return choice, _needed_dynamic(acceptance, costs, head, max_nodes, max_depth) if not choice.nodes else 1.0
    p = acceptance.probabilities()
    return choose_tree(p, costs, head, max_nodes, max_depth), needed_acceptance(p, costs, head)


def _needed_dynamic(table: DynamicAcceptance, costs: CostModel, head: str, max_nodes: int | None,
                    max_depth: int | None) -> float:
    """For a dynamic tree: the least factor by which some size's expected accepted tokens (τ - 1) would
    have to grow to beat plain decoding; inf if no size accepts anything."""
    factors = [(costs.step_ms(head, d, n) / costs.plain_ms - 1) / (table.tau(d, n) - 1)
               for d in range(1, min(max_depth or table.depth, table.depth) + 1)
               for n in range(1, min(max_nodes or table.nodes, table.nodes, max(costs.verify_ms) - 1) + 1)
               if table.tau(d, n) > 1]
    return min(factors, default=math.inf)


def _check_measured(costs: CostModel, head: str) -> None:
    if head not in costs.heads:
        raise Clover2Error(f"cost model: no draft cost measured for head {head!r} (measured: {', '.join(costs.heads) or 'none'})")


def needed_acceptance(p: list[list[float]], costs: CostModel, head: str) -> float:
    """How much better than measured every p(d, r) would have to be (a common factor, capped at 1 per
    probability) for a tree to pay on this machine: 1.0 if one already does; inf if none ever would."""
    if choose_tree(p, costs, head).nodes:
        return 1.0
    low, high = 1.0, 64.0
    scaled = lambda factor: [[min(1.0, q * factor) for q in row] for row in p]  # noqa: E731
    if not choose_tree(scaled(high), costs, head).nodes:
        return math.inf
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (low, middle) if choose_tree(scaled(middle), costs, head).nodes else (middle, high)
    return high
