"""The tree optimiser: exact against brute force over every small tree, no drafting where nothing pays,
and the cost model's fit and file."""

import itertools
import json
import math
import random

import pytest

from clover2.engine.tree import TreeShape
from clover2.errors import Clover2Error
from clover2.heads.acceptance import DynamicAcceptance
from clover2.planning.costs import CostModel, DraftCost, _fit
from clover2.planning.optimiser import choose, choose_dynamic_tree, choose_tree, most_probable_paths, needed_acceptance, predicted_tau

RANKS, DEPTH = 3, 6


def _cost(draft: list[float], bookkeeping: float = 0.0) -> DraftCost:
    return DraftCost({"draft": [*draft, 0.0][:4], "bookkeeping": [bookkeeping, 0.0, 0.0, 0.0]})


def _every_tree(max_nodes: int) -> set[frozenset]:
    """Every set of ≤ max_nodes rank paths (ranks < RANKS) that is a tree."""
    trees, layer = {frozenset()}, {frozenset()}
    for _ in range(max_nodes):
        grown = set()
        for tree in layer:
            for parent in [(), *tree]:
                for rank in range(RANKS):
                    child = (*parent, rank)
                    if len(child) <= DEPTH and child not in tree:
                        grown.add(tree | {child})
        trees |= grown
        layer = grown
    return trees


def _random_case(seed: int) -> tuple[list[list[float]], CostModel]:
    rng = random.Random(seed)
    p = []
    for _ in range(DEPTH):
        mass = rng.uniform(0.2, 0.95)
        shares = sorted((rng.random() for _ in range(RANKS)), reverse=True)
        p.append([mass * s / sum(shares) for s in shares])
    verify = {n: 20.0 + rng.uniform(0.3, 3.0) * n + rng.uniform(-1.0, 1.0) for n in range(1, 8)}
    draft = _cost([rng.uniform(0, 5), rng.uniform(0, 8), rng.uniform(0, 2), rng.uniform(0, 0.1)], rng.uniform(0, 2))
    return p, CostModel(verify, plain_ms=verify[1] + rng.uniform(0, 2), heads={"head": draft})


def _tokens_per_second(p, costs: CostModel, tree: frozenset) -> float:
    if not tree:
        return 1000 / costs.plain_ms
    depth = max(map(len, tree))
    return 1000 * predicted_tau(p, [list(q) for q in tree]) / costs.step_ms("head", depth, len(tree))


def test_the_optimiser_matches_brute_force_over_every_tree_of_up_to_six_nodes():
    trees = _every_tree(6)
    assert len(trees) == 1 + 3 + 12 + 55 + 273 + 1428 + 7752  # ternary trees of m = 1 ... 7 nodes with the root: C(3m, m) / (2m + 1)
    gaps = []
    for seed in range(12):
        p, costs = _random_case(seed)
        best = max(_tokens_per_second(p, costs, tree) for tree in trees)
        choice = choose_tree(p, costs, "head", max_nodes=6)
        assert choice.tokens_per_second == pytest.approx(_tokens_per_second(p, costs, frozenset(map(tuple, choice.paths))))
        gaps.append(best - choice.tokens_per_second)
    assert max(gaps) == pytest.approx(0.0, abs=1e-9)


def test_the_most_probable_paths_form_a_tree_best_first():
    p, _ = _random_case(3)
    paths = most_probable_paths(p, 20, depth=4)
    TreeShape.from_paths(paths, top_k=RANKS)  # raises if a parent is missing
    probabilities = [math.prod(p[d][r] for d, r in enumerate(path)) for path in paths]
    assert probabilities == sorted(probabilities, reverse=True) and max(map(len, paths)) <= 4


def test_no_drafting_is_chosen_where_no_tree_pays_and_the_needed_acceptance_says_how_far_off():
    p = [[0.05, 0.02, 0.01]] * 3
    costs = CostModel({n: 20.0 + 4 * n for n in range(1, 10)}, plain_ms=24.0,
                      heads={"head": _cost([2.0, 3.0, 0.5], 1.0)})
    choice = choose_tree(p, costs, "head")
    assert choice.paths == [] and choice.nodes == 0 and choice.speedup == 1.0
    factor = needed_acceptance(p, costs, "head")
    assert 1.0 < factor < math.inf
    scaled = [[min(1.0, q * factor * 1.01) for q in row] for row in p]
    assert choose_tree(scaled, costs, "head").nodes > 0
    cheap = CostModel(costs.verify_ms, 24.0, {"head": _cost([0.0, 0.0, 0.0])})
    assert needed_acceptance([[0.9, 0.05, 0.01]] * 3, cheap, "head") == 1.0


def test_a_cheap_draft_and_a_flat_verify_cost_choose_a_big_tree_and_a_costly_one_a_small_one():
    p = [[0.6, 0.15, 0.05, 0.03]] * 6
    flat = CostModel({n: 20.0 + 0.05 * n for n in range(1, 65)}, 20.0, {"head": _cost([0.5, 0.5, 0.01], 0.5)})
    steep = CostModel({n: 20.0 + 2.0 * n for n in range(1, 65)}, 20.0, {"head": _cost([1.0, 4.0, 0.5], 0.5)})
    big, small = choose_tree(p, flat, "head"), choose_tree(p, steep, "head")
    assert big.nodes > 3 * small.nodes > 0
    assert big.speedup > small.speedup > 1.0


def test_the_draft_cost_fit_is_non_negative_and_reports_its_error():
    measured = [{"depth": d, "width": w, "nodes": d * w, "draft_ms": 2.0 + 3.0 * d + 0.25 * d * w + 0.01 * (d * w) ** 2,
                 "bookkeeping_ms": 0.5 + 0.1 * d * w} for d, w in itertools.product((1, 3, 6), (1, 3, 6))]
    cost = _fit(measured)
    assert cost.coefficients["draft"] == pytest.approx([2.0, 3.0, 0.25, 0.01])
    assert cost.coefficients["bookkeeping"] == pytest.approx([0.5, 0.0, 0.1, 0.0], abs=1e-9)
    assert max(cost.max_relative_error.values()) == pytest.approx(0.0, abs=1e-9)
    falling = [{**m, "draft_ms": 10.0 - 0.1 * m["nodes"]} for m in measured]
    assert min(_fit(falling).coefficients["draft"]) >= 0.0  # costs never fall as a tree grows: the optimiser relies on it


def test_a_cost_model_round_trips_and_names_what_it_lacks():
    costs = CostModel({1: 20.0, 2: 21.0}, 20.5, {"eagle": _cost([1.0, 2.0, 0.1], 0.4)}, prompt_tokens=300)
    again = CostModel.from_json(json.loads(json.dumps(costs.to_json())))
    assert again == costs and again.step_ms("eagle", 1, 1) == pytest.approx(1.0 + 2.0 + 0.1 + 21.0 + 0.4)
    with pytest.raises(Clover2Error, match="no verification cost measured for 3 tokens"):
        costs.step_ms("eagle", 1, 2)
    with pytest.raises(Clover2Error, match="no draft cost measured for head 'medusa'"):
        choose_tree([[0.5]], costs, "medusa")
    with pytest.raises(Clover2Error, match="costs.json: not a cost model"):
        CostModel.from_json({"verify_ms": {}}, "costs.json")


def test_calibration_times_every_probe_tree_a_head_can_draft_and_fits_each_phase(tiny_llama, one_thread):
    from clover2.heads.protocol import head_class
    from clover2.planning.costs import Probes, draft_cost, plain_step_ms, verify_curve

    curve = verify_curve(tiny_llama, prefix=16, sizes=range(1, 5), repeats=2)
    assert sorted(curve) == [1, 2, 3, 4] and all(ms > 0 for ms in curve.values())
    assert plain_step_ms(tiny_llama, 16, 4, repeats=1) > 0
    probes = Probes(widths=(1, 2), depths=(1, 3), new_tokens=4, repeats=1)
    medusa = draft_cost(tiny_llama, head_class("medusa")(tiny_llama, heads=2).eval(), 16, probes)
    assert [(m["depth"], m["width"]) for m in medusa.measured] == [(1, 1), (1, 2)]  # 3 levels is deeper than 2 heads
    eagle = draft_cost(tiny_llama, head_class("eagle")(tiny_llama).eval(), 16, probes)
    assert [m["nodes"] for m in eagle.measured] == [1, 2, 3, 6]
    assert set(eagle.coefficients) == {"draft", "bookkeeping"} and min(eagle.coefficients["draft"]) >= 0
    costs = CostModel(curve, 1.0, {"eagle": eagle})
    assert costs.step_ms("eagle", 1, 2) == pytest.approx(eagle.phase_ms("draft", 1, 2) + eagle.phase_ms("bookkeeping", 1, 2) + curve[3])


def _table(tau: dict[tuple[int, int], float], depth: int, nodes: int) -> DynamicAcceptance:
    """A table whose τ(D, N) is `tau` (1 + the chance of accepting one token, as depth 1 alone)."""
    reached = [[[100] + [0] * (depth - 1) for _ in range(nodes)] for _ in range(depth)]
    hits = [[[round(100 * (tau.get((d, n), 1.0) - 1))] + [0] * (depth - 1) for n in range(1, nodes + 1)]
            for d in range(1, depth + 1)]
    return DynamicAcceptance(reached, hits, positions=100)


def test_a_dynamic_tree_gets_the_size_with_the_most_predicted_tokens_per_second():
    costs = CostModel({n: 20.0 + 2.0 * n for n in range(1, 9)}, 20.0, {"eagle2": _cost([1.0, 3.0, 0.0], 0.0)})
    tau = {(d, n): 1 + min(0.95, 0.3 * d + 0.1 * n) for d in range(1, 4) for n in range(1, 8)}
    choice, needed = choose(_table(tau, 3, 7), costs, "eagle2")
    best = max(tau, key=lambda dn: tau[dn] / costs.step_ms("eagle2", *dn))
    assert (choice.depth, choice.nodes) == best and choice.paths is None and needed == 1.0
    assert choice.drafting == {"depth": best[0], "total_tokens": best[1]}
    assert choice.tau == pytest.approx(tau[best]) and choice.speedup == pytest.approx(tau[best] * 20.0 / costs.step_ms("eagle2", *best))
    assert choose_dynamic_tree(_table(tau, 3, 7), costs, "eagle2", max_nodes=2, max_depth=1).nodes <= 2


def test_a_dynamic_tree_that_never_pays_is_no_drafting_with_the_factor_it_lacks():
    costs = CostModel({n: 20.0 + 4.0 * n for n in range(1, 9)}, 20.0, {"eagle2": _cost([5.0, 5.0, 0.0], 0.0)})
    table = _table({(d, n): 1.1 for d in range(1, 3) for n in range(1, 5)}, 2, 4)
    choice, needed = choose(table, costs, "eagle2")
    assert choice.nodes == 0 and choice.speedup == 1.0
    cheapest = costs.step_ms("eagle2", 1, 1)
    assert needed == pytest.approx((cheapest / 20.0 - 1) / 0.1)
    assert choose(_table({}, 2, 4), costs, "eagle2")[1] == math.inf


def test_calibration_times_a_dynamic_tree_at_the_sizes_it_can_be_chosen_among(tiny_llama, one_thread):
    from clover2.heads.protocol import head_class
    from clover2.planning.costs import Probes, draft_cost

    eagle2 = draft_cost(tiny_llama, head_class("eagle2")(tiny_llama, top_k=2).eval(), 16,
                        Probes(widths=(1, 3), depths=(1, 2), new_tokens=4, repeats=1))
    # depth 1 keeps at most top_k = 2 nodes; depth 2 drafts 2 + 4
    assert [(m["depth"], m["nodes"]) for m in eagle2.measured] == [(1, 1), (1, 2), (2, 2), (2, 6)]
