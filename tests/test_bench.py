"""A bench job: every method and one plain baseline per question in one process, in rotating order,
written as it goes and resumed after an interrupt."""

import json
from functools import partial

import pytest

from baselines.prompt_lookup import PromptLookupDrafter
from clover2 import bench
from clover2.cli import main
from clover2.engine.decoding import DecodeConfig, generate
from clover2.targets import load_target
from clover2.tasks import load_questions

CONFIG = DecodeConfig(max_new_tokens=4)


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_target(smollm2_dir)


@pytest.fixture(scope="module")
def runs():
    return [("vanilla", generate), ("prompt-lookup", partial(generate, drafter=PromptLookupDrafter(length=4)))]


def _run(smollm2, runs, questions, provenance, done=(), aa=None):
    return bench.run(smollm2, runs, questions, CONFIG, provenance, warmup=0, done=done, aa=aa)


def test_each_question_is_decoded_once_per_method_in_rotating_order(smollm2, runs):
    rows = list(_run(smollm2, runs, load_questions("qa", limit=3), {"config_hash": "h"}))
    order = [(row["question_id"], row["method"]) for row in rows]
    ids = [q.question_id for q in load_questions("qa", limit=3)]
    assert order == [(ids[0], "vanilla"), (ids[0], "prompt-lookup"), (ids[1], "prompt-lookup"),
                     (ids[1], "vanilla"), (ids[2], "vanilla"), (ids[2], "prompt-lookup")]


def test_the_baseline_decodes_the_first_questions_a_second_time_in_the_rotation(smollm2, runs):
    questions = load_questions("qa", limit=3)
    rows = list(_run(smollm2, runs, questions, {"config_hash": "h"}, aa=(runs[0], 2)))
    ids = [q.question_id for q in questions]
    order = [(row["question_id"], row["method"], row.get("replicate", 0)) for row in rows]
    assert order == [(ids[0], "vanilla", 0), (ids[0], "prompt-lookup", 0), (ids[0], "vanilla", 1),
                     (ids[1], "prompt-lookup", 0), (ids[1], "vanilla", 1), (ids[1], "vanilla", 0),
                     (ids[2], "vanilla", 0), (ids[2], "prompt-lookup", 0)]
    first = {row["question_id"]: row["turns"] for row in rows if row["method"] == "vanilla" and "replicate" not in row}
    again = {row["question_id"]: row["turns"] for row in rows if row.get("replicate")}
    assert all([t["tokens"] for t in again[q]] == [t["tokens"] for t in first[q]] for q in ids[:2])  # the same decode, timed again


def test_a_resumed_job_keeps_the_aa_decodes_apart_from_the_first(smollm2, runs):
    questions = load_questions("qa", limit=1)
    done = {(questions[0].question_id, "vanilla", 0), (questions[0].question_id, "prompt-lookup", 0)}
    rows = list(_run(smollm2, runs, questions, {"config_hash": "h"}, done, aa=(runs[0], 1)))
    assert [(row["method"], row["replicate"]) for row in rows] == [("vanilla", 1)]


def test_a_method_decodes_under_the_name_given_and_the_aa_check_needs_a_baseline(smollm2_dir, tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    args = ["bench", "--target", str(smollm2_dir), "--method", "lookup4=prompt-lookup", "--task", "qa", "--limit", "2",
            "--max-new-tokens", "2", "--warmup", "0", "--threads", "1", "--out", str(out)]
    assert main([*args, "--aa-questions", "1"]) == 2
    assert "--aa-questions" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--baseline", "vanilla", "--aa-questions", "1"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((row["method"], row.get("replicate", 0)) for row in rows) == [
        ("lookup4", 0), ("lookup4", 0), ("vanilla", 0), ("vanilla", 0), ("vanilla", 1)]
    assert all(row["turns"][0]["tree_sizes"] for row in rows if row["method"] == "lookup4")  # it drafted: prompt lookup


class Interrupted(Exception):
    pass


def _interrupted_after(rows, count):
    for index, row in enumerate(rows):
        if index == count:
            raise Interrupted
        yield row


def test_an_interrupted_job_leaves_no_output_and_resumes_from_its_records(smollm2, runs, tmp_path):
    out, questions = tmp_path / "T0.jsonl", load_questions("qa", limit=3)
    with pytest.raises(Interrupted):
        bench.write_jsonl(out, _interrupted_after(_run(smollm2, runs, questions, {"config_hash": "h"}), 3))
    assert not out.exists()
    with bench.partial_path(out).open("a") as handle:
        handle.write('{"torn": ')  # a line cut off by the interrupt
    kept = bench.finished_rows(out, "h")
    assert len(kept) == 3 and bench.finished_rows(out, "other settings") == []
    done = {(row["question_id"], row["method"], 0) for row in kept}
    count = bench.write_jsonl(out, _run(smollm2, runs, questions, {"config_hash": "h"}, done), kept)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert count == len(rows) == 6 and rows[:3] == kept
    assert sorted((r["question_id"], r["method"]) for r in rows) == sorted((q.question_id, m) for q in questions for m, _ in runs)
    assert not bench.partial_path(out).exists()


def test_a_prompt_that_leaves_no_room_is_an_error_naming_the_question(smollm2):
    questions = load_questions("qa", limit=2)
    tight = DecodeConfig(max_new_tokens=4, max_length=10)
    with pytest.raises(bench.LongPrompt, match=rf"qa question {questions[0].question_id} turn 1: its prompt has \d+ tokens, "
                                               r"leaving no room for an answer under --max-length \(10\)"):
        bench.fitting(smollm2, questions, tight, None)
    skipped = []
    assert bench.fitting(smollm2, questions, tight, skipped) == [] and len(skipped) == 2


def test_a_later_turn_that_outgrows_the_length_drops_its_question_from_every_run(smollm2, runs):
    question = load_questions("mt_bench", limit=1)[0]
    first = len(bench.turn_prompt(smollm2, question, 0, [], CONFIG))
    tight = DecodeConfig(max_new_tokens=4, max_length=first + 5)  # room for the first answer, not for the second turn
    with pytest.raises(bench.LongPrompt, match=f"mt_bench question {question.question_id} turn 2"):
        list(bench.run(smollm2, runs, [question], tight, {}, warmup=0))
    skipped = []
    assert list(bench.run(smollm2, runs, [question], tight, {}, warmup=0, skipped=skipped)) == []
    assert len(skipped) == 1 and "turn 2" in skipped[0]


def test_bench_refuses_or_counts_the_questions_it_cannot_fit(smollm2_dir, tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    args = ["bench", "--target", str(smollm2_dir), "--method", "vanilla", "--task", "qa", "--limit", "2", "--max-length", "10",
            "--max-new-tokens", "2", "--warmup", "0", "--threads", "1", "--out", str(out)]
    assert main(args) == 2
    assert "its prompt has" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--skip-long-prompts"]) == 0
    assert "skipped 2 of 2 questions (--skip-long-prompts)" in capsys.readouterr().err
    assert out.read_text() == ""
