"""Every metric formula on hand-made records, including the pitfalls METHODS.md §8 lists."""

import json
import math
import random

import numpy as np
import pytest

from clover2.errors import Clover2Error
from clover2.options import method_option
from clover2.records import BenchRow, RunSettings, Step
from clover2.reporting.metrics import (
    bootstrap_ci,
    depth_acceptance,
    read_bench,
    speedup_ratio_of_means,
    summary,
    tree_size_curve,
    verify_cost,
)


def _turn(tokens: int, seconds: float, lengths: list[int] | None = None, failed: list | None = None, text: str = "") -> dict:
    lengths = lengths or [1] * tokens
    assert sum(lengths) == tokens
    phases = {"prefill": seconds / 4, "draft": seconds / 4, "verify": seconds / 4, "bookkeeping": seconds / 4}
    return {"new_tokens": tokens, "steps": len(lengths), "accept_lengths": lengths, "wall_seconds": seconds,
            "failed_depths": failed if failed is not None else [None] * (len(lengths) - 1), "seconds": phases, "text": text}


def _row(
    method: str, question: str, turns: list[dict], task: str = "mt_bench", temperature: float = 0, repeat: int = 0, drafting=None
) -> dict:
    config = {"temperature": temperature, "repeat": repeat, "draft_option": drafting, "dtype": "float32"}
    return {"task": task, "question_id": question, "category": "writing", "method": method, "turns": turns, "provenance": {"config": config}}


def _file(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _stats(tmp_path, *files):
    return summary(read_bench([_file(tmp_path / f"f{i}.jsonl", rows) for i, rows in enumerate(files)]))


def test_tau_counts_steps_from_one_with_the_prefill(tmp_path):
    rows = [_row("vanilla", "1", [_turn(10, 1.0)]), _row("m", "1", [_turn(10, 1.0, [1, 3, 2, 4])])]
    stats = _stats(tmp_path, rows).set_index("method")
    assert stats.loc["vanilla", "tau"] == 1.0  # a 0-based count would give 10 / 9
    assert stats.loc["m", "tau"] == 2.5 and stats.loc["m", "extra_tokens_per_step"] == 1.5


def test_tau_pools_tokens_and_steps_over_questions_and_turns(tmp_path):
    rows = [_row("vanilla", q, [_turn(4, 1.0)]) for q in "12"]
    rows += [_row("m", "1", [_turn(4, 1.0, [1, 3]), _turn(4, 1.0, [4])]), _row("m", "2", [_turn(4, 1.0, [1, 1, 1, 1])])]
    stats = _stats(tmp_path, rows).set_index("method")
    assert stats.loc["m", "tau"] == 12 / 7  # not the mean of per-turn taus (2, 4, 1)


def test_throughput_of_a_question_is_its_tokens_over_its_time(tmp_path):
    rows = [_row("vanilla", "1", [_turn(10, 1.0), _turn(10, 4.0)]), _row("m", "1", [_turn(20, 1.0)])]
    stats = _stats(tmp_path, rows).set_index("method")
    assert stats.loc["vanilla", "tokens_per_s"] == 4.0  # 20 tokens / 5 s, not the mean of 10 and 2.5 tok/s


def test_speedup_is_the_ratio_of_mean_throughputs_and_also_total_over_total(tmp_path):
    rows = [_row("vanilla", "1", [_turn(10, 1.0)]), _row("m", "1", [_turn(30, 1.0)]),
            _row("vanilla", "2", [_turn(20, 1.0)]), _row("m", "2", [_turn(10, 1.0)])]
    stats = _stats(tmp_path, rows).set_index("method")
    assert stats.loc["m", "speedup"] == pytest.approx(20 / 15)  # the mean of per-question ratios would be 1.75
    assert stats.loc["m", "speedup_total"] == pytest.approx((40 / 2) / (30 / 2))
    assert math.isnan(stats.loc["vanilla", "speedup"])


def test_speedups_pair_each_method_with_the_baseline_of_its_own_file(tmp_path):
    fast_machine = [_row("vanilla", "1", [_turn(10, 0.5)]), _row("a", "1", [_turn(10, 0.25)])]
    slow_machine = [_row("vanilla", "1", [_turn(10, 2.0)]), _row("b", "1", [_turn(10, 1.0)])]
    stats = _stats(tmp_path, fast_machine, slow_machine).set_index("method")
    assert stats.loc["a", "speedup"] == pytest.approx(2.0) and stats.loc["b", "speedup"] == pytest.approx(2.0)


def test_a_method_without_its_baseline_run_is_an_error(tmp_path):
    with pytest.raises(Clover2Error, match="no vanilla run"):
        _stats(tmp_path, [_row("m", "1", [_turn(10, 1.0)]), _row("vanilla", "2", [_turn(10, 1.0)])])


def test_tasks_come_from_each_record_not_from_line_positions(tmp_path):
    rows = [_row(method, str(q), [_turn(q + 2, 1.0)], task=task)
            for q, task in enumerate(["qa", "rag", "qa", "rag"]) for method in ("vanilla", "m")]
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    ordered, mixed = _stats(tmp_path, rows), _stats(tmp_path, shuffled)
    assert ordered.set_index(["method", "task"])["tokens_per_s"].equals(mixed.set_index(["method", "task"])["tokens_per_s"])
    assert ordered.set_index(["method", "task"]).loc[("m", "qa"), "tokens_per_s"] == (2 + 4) / 2


def test_token_counts_come_from_the_records_not_from_re_tokenised_text(tmp_path):
    rows = [_row("vanilla", "1", [_turn(6, 1.0, text="a b c")]), _row("m", "1", [_turn(6, 1.0, [3, 3], text="a b c d e f g h")])]
    assert _stats(tmp_path, rows).set_index("method").loc["m", "tau"] == 3.0


def test_spread_over_repeats_is_the_sd_of_per_repeat_speedups(tmp_path):
    rows = [_row("vanilla", "1", [_turn(10, 1.0)], repeat=r) for r in (0, 1)]
    rows += [_row("m", "1", [_turn(20, 1.0)], repeat=0), _row("m", "1", [_turn(30, 1.0)], repeat=1)]
    stats = _stats(tmp_path, rows).set_index("method")
    assert stats.loc["m", "repeats"] == 2
    assert stats.loc["m", "speedup_repeat_sd"] == pytest.approx(np.std([2.0, 3.0], ddof=1))


def test_depth_acceptance_counts_steps_that_reached_each_depth():
    # Steps: rejected at depth 1; accepted 1 then rejected at 2; accepted 2 and ran out; accepted 3 then rejected at 4.
    failed, kept = [1, 2, None, 4], [1, 2, 3, 4]
    assert depth_acceptance(failed, kept) == [3 / 4, 2 / 3, 1 / 1, 0 / 1]
    assert depth_acceptance([None, None], [1, 1]) == []  # plain decoding drafts nothing


def test_time_shares_split_the_wall_time(tmp_path):
    rows = [_row("vanilla", "1", [_turn(10, 2.0)])]
    stats = _stats(tmp_path, rows)
    assert stats.loc[0, ["prefill_share", "draft_share", "verify_share", "bookkeeping_share"]].tolist() == [0.25] * 4


def test_bootstrap_interval_brackets_the_estimate_and_needs_two_questions():
    rng = np.random.default_rng(1)
    base = rng.uniform(10, 20, 40)
    method = base * rng.uniform(1.5, 2.5, 40)
    low, high = bootstrap_ci(method, base)
    assert low < speedup_ratio_of_means(method, base) < high and high - low < 0.5
    assert all(math.isnan(v) for v in bootstrap_ci(method[:1], base[:1]))


def test_a_malformed_record_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_row("vanilla", "1", [_turn(2, 1.0)])) + "\n{\"task\": 1}\n")
    with pytest.raises(Clover2Error, match=r"bad.jsonl:2: not a bench record"):
        read_bench([path])


def test_tree_size_curve_pairs_each_drafting_setting_with_its_mean_tree_and_tau(tmp_path):
    def turn(lengths, sizes):
        return _turn(sum(lengths), 1.0, lengths) | {"tree_sizes": sizes}

    rows = [_row("eagle2", "1", [turn([1, 2, 2], [10, 10])], drafting=["total_tokens=10"]),
            _row("eagle2", "2", [turn([1, 1, 3, 1], [10, 8, 10])], drafting=["total_tokens=10"]),
            _row("eagle2", "1", [turn([1, 4], [60])], drafting=["total_tokens=60"])]
    curve = tree_size_curve(read_bench([_file(tmp_path / "s.jsonl", rows)])).set_index("drafting")
    assert curve.loc["total_tokens=10", "tree_size"] == pytest.approx(48 / 5)  # pooled over steps, not questions
    assert curve.loc["total_tokens=10", "tau"] == 11 / 7 and curve.loc["total_tokens=60", "tau"] == 2.5


def test_tree_size_curve_needs_drafted_trees(tmp_path):
    rows = [_row("vanilla", "1", [_turn(3, 1.0)])]
    with pytest.raises(Clover2Error, match="vanilla.*no tree sizes"):
        tree_size_curve(read_bench([_file(tmp_path / "v.jsonl", rows)]))


def test_verify_cost_is_verify_time_per_speculative_step_against_the_tokens_verified(tmp_path):
    def turn(sizes, seconds):  # verify takes a quarter of `seconds`; one step per tree, the prefill first
        return _turn(len(sizes) + 1, seconds) | {"tree_sizes": sizes}

    rows = [_row("vanilla", "1", [turn([0, 0, 0, 0], 0.016)]),
            _row("eagle", "1", [turn([5, 5], 0.016), turn([5, 5, 5, 5, 5, 5], 0.032)]),
            _row("hf-generate", "1", [_turn(3, 1.0)])]  # no tree sizes: left out
    cost = verify_cost(read_bench([_file(tmp_path / "b.jsonl", rows)])).set_index("method")
    assert list(cost.index) == ["vanilla", "eagle"]  # by tokens verified
    assert cost.loc["vanilla", "tokens"] == 1 and cost.loc["vanilla", "ms_per_verify"] == pytest.approx(1.0)
    assert cost.loc["eagle", "tokens"] == 6 and cost.loc["eagle", "ms_per_verify"] == pytest.approx(12 / 8)
    assert cost.loc["eagle", "vs_plain"] == pytest.approx(1.5) and cost.loc["eagle", "steps"] == 8


def test_a_records_drafting_options_are_those_of_its_own_method(tmp_path):
    options = ["eagle2:depth=6", "tree=chain_3", "eagle:tree=chain_5"]
    rows = [_row(m, "1", [_turn(2, 1.0)], drafting=options) for m in ("eagle2", "eagle")]
    frame = read_bench([_file(tmp_path / "b.jsonl", rows)]).set_index("method")
    assert frame.loc["eagle2", "drafting"] == "depth=6 tree=chain_3" and frame.loc["eagle", "drafting"] == "tree=chain_5"
    assert method_option("eagle2:total_tokens=8") == ("eagle2", "total_tokens=8") and method_option("tree=a:b") == (None, "tree=a:b")


def test_a_record_whose_step_lists_disagree_is_refused_naming_its_line(tmp_path):
    misaligned = _turn(4, 1.0, [1, 3]) | {"failed_depths": [2, None]}  # one step after the prefill, two depths
    path = _file(tmp_path / "b.jsonl", [_row("vanilla", "1", [_turn(4, 1.0)]), _row("m", "1", [misaligned])])
    with pytest.raises(Clover2Error, match=r"b.jsonl:2: not a bench record .*per-step lists disagree.*rerun the bench"):
        read_bench([path])


def test_a_rows_settings_are_fields_with_its_methods_drafting_options_parsed():
    row = BenchRow.from_json(_row("eagle2", "1", [_turn(3, 1.0, [1, 2])], temperature=1, repeat=2,
                                  drafting=["eagle2:total_tokens=8", "eagle:depth=3", "total_tokens=10"]))
    assert row.settings == RunSettings(temperature=1.0, dtype="float32", repeat=2, drafting={"total_tokens": 10})
    assert row.turns[0].drafted == [Step(kept=2, failed_depth=None, tree_size=None)]  # one step after the prefill
