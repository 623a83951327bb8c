"""A bench job: every method and one plain baseline per question in one process, in rotating order,
written as it goes and resumed after an interrupt."""

import json
from functools import partial

import pytest

from baselines.prompt_lookup import PromptLookupDrafter
from clover2 import bench
from clover2.decoding import DecodeConfig, generate
from clover2.targets import load_target
from clover2.tasks import load_questions

CONFIG = DecodeConfig(max_new_tokens=4)


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_target(smollm2_dir)


@pytest.fixture(scope="module")
def runs():
    return [("vanilla", generate), ("prompt-lookup", partial(generate, drafter=PromptLookupDrafter(length=4)))]


def _run(smollm2, runs, questions, provenance, done=()):
    return bench.run(smollm2, runs, questions, CONFIG, provenance, warmup=0, done=done)


def test_each_question_is_decoded_once_per_method_in_rotating_order(smollm2, runs):
    rows = list(_run(smollm2, runs, load_questions("qa", limit=3), {"config_hash": "h"}))
    order = [(row["question_id"], row["method"]) for row in rows]
    ids = [q.question_id for q in load_questions("qa", limit=3)]
    assert order == [(ids[0], "vanilla"), (ids[0], "prompt-lookup"), (ids[1], "prompt-lookup"),
                     (ids[1], "vanilla"), (ids[2], "vanilla"), (ids[2], "prompt-lookup")]  # fmt: skip


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
    done = {(row["question_id"], row["method"]) for row in kept}
    count = bench.write_jsonl(out, _run(smollm2, runs, questions, {"config_hash": "h"}, done), kept)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert count == len(rows) == 6 and rows[:3] == kept
    assert sorted((r["question_id"], r["method"]) for r in rows) == sorted((q.question_id, m) for q in questions for m, _ in runs)
    assert not bench.partial_path(out).exists()
