"""The task registry: counts, assignment by category, selection, malformed input, and the download path."""

import gzip
import json
import os
import random
import re
import urllib.error
from dataclasses import replace
from pathlib import Path

import pytest

from clover2 import sources, tasks
from clover2.errors import Clover2Error
from clover2.sources import data_file
from clover2.tasks import (
    HUMANEVAL_PREFIX,
    Question,
    load_questions,
    read_questions,
    task_names,
    write_questions,
)

REAL_MIRROR = Path(os.environ["CLOVER2_DATA_MIRROR"])
SPEC_BENCH_SIX = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A function that writes a file of a mirror in tmp_path from lines and points CLOVER2_DATA_MIRROR there."""
    root = tmp_path / "mirror"

    def write(relative: str, lines: list[str]) -> Path:
        monkeypatch.setenv("CLOVER2_DATA_MIRROR", str(root))
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(line + "\n" for line in lines)
        if relative.endswith(".gz"):
            path.write_bytes(gzip.compress(text.encode()))
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def no_mirror(tmp_path, monkeypatch):
    """No mirror, a cache in tmp_path, and a fake downloader serving the real mirror's bytes by URL."""
    monkeypatch.delenv("CLOVER2_DATA_MIRROR")
    monkeypatch.setenv("CLOVER2_CACHE", str(tmp_path / "cache"))
    by_url = {source.url: relative for relative, source in sources.SOURCES.items() if source.url}
    requested: list[str] = []

    def fake_download(url: str) -> bytes:
        requested.append(url)
        return (REAL_MIRROR / by_url[url]).read_bytes()

    monkeypatch.setattr(sources, "_download", fake_download)
    return requested


def spec_bench_line(qid, category="qa", turns=("a question",), **extra) -> str:
    return json.dumps({"question_id": qid, "category": category, "turns": list(turns), **extra})


# --------------------------------------------------------------------------- counts and contents


def test_registry_names():
    assert task_names() == sorted(
        [*SPEC_BENCH_SIX, "spec_bench", "gsm8k", "gsm8k_full", "humaneval", "humaneval_full"]
    )


@pytest.mark.parametrize(
    ("task", "count", "turns"),
    [
        ("mt_bench", 80, 2),
        ("translation", 80, 1),
        ("summarization", 80, 1),
        ("qa", 80, 1),
        ("math_reasoning", 80, 1),
        ("rag", 80, 1),
        ("gsm8k", 80, 1),
        ("gsm8k_full", 1319, 1),
        ("humaneval", 80, 1),
        ("humaneval_full", 164, 1),
    ],
)
def test_counts_and_turns(task, count, turns):
    questions = load_questions(task)
    assert len(questions) == count
    assert all(isinstance(q, Question) and q.task == task for q in questions)
    assert all(len(q.turns) == turns and all(t.strip() for t in q.turns) for q in questions)
    assert len({q.question_id for q in questions}) == count


def test_spec_bench_is_the_six_tasks_without_overlap():
    every = load_questions("spec_bench")
    assert len(every) == 480
    parts = [{q.question_id for q in load_questions(task)} for task in SPEC_BENCH_SIX]
    assert sum(len(p) for p in parts) == 480
    assert set().union(*parts) == {q.question_id for q in every}


def test_mt_bench_is_eight_categories_of_ten_with_ids_81_to_160():
    questions = load_questions("mt_bench")
    categories = [q.category for q in questions]
    assert {c: categories.count(c) for c in set(categories)} == {c: 10 for c in tasks.MT_BENCH_CATEGORIES}
    assert [q.question_id for q in questions] == [str(i) for i in range(81, 161)]


def test_gsm8k_references_are_full_solutions():
    full = load_questions("gsm8k_full")
    assert [q.question_id for q in full[:3]] == ["0", "1", "2"]
    answer_of = {q.turns[0]: q.reference for q in full}
    eagle = load_questions("gsm8k")
    assert all(re.search(r"\n#### -?[\d,.]+$", q.reference) for q in eagle + full)
    # EAGLE's 80 are GSM8K test questions, and their references are the same solutions.
    assert all(answer_of[q.turns[0]] == q.reference for q in eagle)


def test_humaneval_references_are_humaneval_records():
    full = load_questions("humaneval_full")
    assert full[0].question_id == "HumanEval/0" and full[0].category == "code"
    for q in load_questions("humaneval") + full:
        assert set(q.reference) == set(tasks.HUMANEVAL_FIELDS)
        assert q.turns[0] == HUMANEVAL_PREFIX + q.reference["prompt"]
        assert q.reference["entry_point"] in q.reference["prompt"]


def test_humaneval_full_copies_eagles_turns_byte_for_byte():
    full = {q.question_id: q.turns for q in load_questions("humaneval_full")}
    eagle = load_questions("humaneval")
    assert all(full[q.reference["task_id"]] == q.turns for q in eagle)
    # EAGLE adds no separator: prompts that start with an import follow the period directly.
    assert full["HumanEval/0"][0].startswith(HUMANEVAL_PREFIX + "from typing import List")


# --------------------------------------------------------------------------- assignment by category


def test_tasks_follow_category_not_line_position(mirror):
    original = {task: {q.question_id for q in load_questions(task)} for task in SPEC_BENCH_SIX}
    lines = (REAL_MIRROR / sources.SPEC_BENCH_FILE).read_text(encoding="utf-8").splitlines()
    random.Random(0).shuffle(lines)
    mirror(sources.SPEC_BENCH_FILE, lines)
    file_order = [str(json.loads(line)["question_id"]) for line in lines]
    for task in SPEC_BENCH_SIX:
        shuffled = load_questions(task)
        assert {q.question_id for q in shuffled} == original[task]
        assert {q.category for q in shuffled} <= (tasks.MT_BENCH_CATEGORIES if task == "mt_bench" else {task})
        # Questions come in the order of the (shuffled) file.
        ids = [q.question_id for q in shuffled]
        assert ids == [i for i in file_order if i in original[task]]
    assert len(load_questions("spec_bench")) == 480


# --------------------------------------------------------------------------- selection


def test_ids_keep_file_order_then_limit():
    picked = load_questions("mt_bench", ids=["120", "81", "95"])
    assert [q.question_id for q in picked] == ["81", "95", "120"]
    assert [q.question_id for q in load_questions("mt_bench", ids=["120", "81", "95"], limit=2)] == ["81", "95"]
    assert [q.question_id for q in load_questions("humaneval_full", ids="HumanEval/3")] == ["HumanEval/3"]


def test_limit():
    assert [q.question_id for q in load_questions("gsm8k_full", limit=3)] == ["0", "1", "2"]
    assert load_questions("qa", limit=0) == []
    assert len(load_questions("qa", limit=1000)) == 80
    with pytest.raises(Clover2Error, match="limit must be >= 0, got -1"):
        load_questions("qa", limit=-1)


def test_unknown_ids_are_named():
    with pytest.raises(Clover2Error, match=r"'mt_bench'.*no question ids 7, 999$"):
        load_questions("mt_bench", ids=["81", "999", "7"])


def test_unknown_task_lists_the_known_ones():
    known = r"known tasks: gsm8k, gsm8k_full, humaneval, .*, spec_bench, summarization, translation$"
    with pytest.raises(Clover2Error, match=r"unknown task 'mtbench'; " + known):
        load_questions("mtbench")


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"question_id": 2, "category": "qa", "turns": ["x"]', r"not valid JSON"),
        ('["a", "list"]', r"expected a JSON object, got list"),
        ('{"question_id": 2, "category": "qa"}', r"field 'turns': expected a non-empty list of strings, got no such"),
        (spec_bench_line(2, turns=()), r"field 'turns': expected a non-empty list of strings, got \[\]"),
        ('{"question_id": 2, "category": "qa", "turns": "x"}', r"field 'turns': expected a non-empty list"),
        (spec_bench_line(2, turns=("fine", "  ")), r"field 'turns': expected a non-empty string at turns\[1\]"),
        (spec_bench_line(2, turns=(7,)), r"field 'turns': expected a non-empty string at turns\[0\]"),
        ('{"question_id": 2, "turns": ["x"]}', r"field 'category': expected a non-empty string, got no such field"),
        (spec_bench_line(2, category="poetry"), r"field 'category': expected one of coding, extraction, "),
        ('{"category": "qa", "turns": ["x"]}', r"field 'question_id': expected an integer or a non-empty string"),
        (spec_bench_line(1, category="rag"), r"field 'question_id': expected an id not already used on line 1"),
    ],
)
def test_malformed_spec_bench_line_names_file_line_and_field(mirror, bad_line, message):
    path = mirror(sources.SPEC_BENCH_FILE, [spec_bench_line(1), bad_line, spec_bench_line(3)])
    with pytest.raises(Clover2Error, match=re.escape(f"{path}:2: ") + message):
        load_questions("spec_bench")


def test_blank_lines_are_skipped_but_counted(mirror):
    path = mirror(sources.SPEC_BENCH_FILE, [spec_bench_line(1), "", "{oops"])
    with pytest.raises(Clover2Error, match=re.escape(f"{path}:3: not valid JSON")):
        load_questions("qa")


def test_a_task_with_no_questions_is_an_error(mirror):
    path = mirror(sources.SPEC_BENCH_FILE, [spec_bench_line(1, category="rag")])
    assert [q.question_id for q in load_questions("rag")] == ["1"]
    with pytest.raises(Clover2Error, match=re.escape(f"{path}: no questions for task 'qa'")):
        load_questions("qa")


def test_malformed_gsm8k_line(mirror):
    path = mirror("gsm8k/test.jsonl", ['{"question": "q", "answer": "#### 1"}', '{"question": "q2"}'])
    with pytest.raises(Clover2Error, match=re.escape(f"{path}:2: field 'answer': expected a non-empty string")):
        load_questions("gsm8k_full")


def test_malformed_humaneval_record_in_gzip(mirror):
    record = {field: "x" for field in tasks.HUMANEVAL_FIELDS}
    path = mirror(sources.HUMANEVAL_FILE, [json.dumps(record), json.dumps({**record, "entry_point": ""})])
    with pytest.raises(Clover2Error, match=re.escape(f"{path}:2: field 'entry_point': expected a non-empty")):
        load_questions("humaneval_full")


def test_eagle_humaneval_prompt_without_a_humaneval_record_is_an_error(mirror):
    real = (REAL_MIRROR / sources.HUMANEVAL_FILE).read_bytes()
    mirror(sources.HUMANEVAL_FILE, gzip.decompress(real).decode().splitlines())
    good = json.dumps({"question_id": 0, "category": "code", "turns": [HUMANEVAL_PREFIX + "\ndef nope():\n"]})
    path = mirror("eagle/humaneval/question.jsonl", [good])
    with pytest.raises(Clover2Error, match=re.escape(f"{path}: question_id 0: turn is not ")):
        load_questions("humaneval")


def test_eagle_gsm8k_reference_must_be_one_solution(mirror):
    line = json.dumps({"question_id": 0, "category": "math", "turns": ["q"], "reference": ["a", "b"]})
    path = mirror("eagle/gsm8k/question.jsonl", [line])
    with pytest.raises(Clover2Error, match=re.escape(f"{path}:1: field 'reference': expected a list holding one")):
        load_questions("gsm8k")


def test_missing_mirror_file_names_its_path(mirror, tmp_path):
    mirror("gsm8k/test.jsonl", ['{"question": "q", "answer": "#### 1"}'])
    with pytest.raises(Clover2Error, match=re.escape(str(tmp_path / "mirror" / sources.SPEC_BENCH_FILE))):
        load_questions("qa")


# --------------------------------------------------------------------------- downloading without a mirror


def test_download_fetches_the_source_url_and_writes_atomically(no_mirror, monkeypatch, tmp_path):
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def recording_replace(src, dst):
        assert Path(src).is_file() and not Path(dst).exists()
        renames.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(sources.os, "replace", recording_replace)
    assert len(load_questions("qa")) == 80
    expected = tmp_path / "cache" / "data" / sources.SPEC_BENCH_FILE
    assert no_mirror == ["https://raw.githubusercontent.com/hemingkx/Spec-Bench/main/data/spec_bench/question.jsonl"]
    assert expected.read_bytes() == (REAL_MIRROR / sources.SPEC_BENCH_FILE).read_bytes()
    [(src, dst)] = renames
    assert dst == str(expected) and Path(src).parent == expected.parent and src != dst
    assert sorted(p.name for p in expected.parent.iterdir()) == ["question.jsonl"]
    # The cached copy is used from then on.
    assert len(load_questions("rag")) == 80 and len(no_mirror) == 1


def test_download_urls_of_every_remote_source(no_mirror):
    load_questions("gsm8k")
    load_questions("gsm8k_full")
    assert no_mirror == [
        "https://raw.githubusercontent.com/SafeAILab/EAGLE/main/eagle/data/gsm8k/question.jsonl",
        "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/test.jsonl",
    ]


def test_humaneval_comes_from_the_installed_package(no_mirror, tmp_path):
    assert len(load_questions("humaneval_full")) == 164
    assert no_mirror == []
    cached = tmp_path / "cache" / "data" / sources.HUMANEVAL_FILE
    assert cached.read_bytes() == (REAL_MIRROR / sources.HUMANEVAL_FILE).read_bytes()
    assert len(load_questions("humaneval")) == 80
    assert no_mirror == ["https://raw.githubusercontent.com/SafeAILab/EAGLE/main/eagle/data/humaneval/question.jsonl"]


def test_sha_mismatch_is_rejected_and_leaves_nothing(no_mirror, monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "_download", lambda url: b'{"question_id": 1, "category": "qa", "turns": ["x"]}\n')
    with pytest.raises(Clover2Error, match=r"data file spec_bench/question.jsonl from https://\S+ has sha256 \w{16}, "
                       r"expected 4b6d33e79484f984"):
        load_questions("qa")
    cache = tmp_path / "cache"
    assert not cache.exists() or [p for p in cache.rglob("*") if p.is_file()] == []


def test_network_failure_names_the_url_and_the_mirror(tmp_path, monkeypatch):
    monkeypatch.delenv("CLOVER2_DATA_MIRROR")
    monkeypatch.setenv("CLOVER2_CACHE", str(tmp_path / "cache"))

    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
    url = sources.SOURCES["eagle/gsm8k/question.jsonl"].url
    with pytest.raises(Clover2Error, match=re.escape(f"could not download {url}") + ".*CLOVER2_DATA_MIRROR"):
        data_file("eagle/gsm8k/question.jsonl")
    assert not (tmp_path / "cache" / "data" / "eagle" / "gsm8k" / "question.jsonl").exists()


def test_unknown_file_without_a_mirror(no_mirror):
    with pytest.raises(Clover2Error, match=r"no public source is known for data file 'nope/x.jsonl'; set CLOVER2_DATA"):
        data_file("nope/x.jsonl")


def test_a_bad_byte_is_reported_on_its_own_line_and_column(tmp_path):
    lines = [json.dumps({"task": "qa", "question_id": str(i), "category": "qa", "turns": ["x"]}).encode() for i in range(3)]
    lines[1] = lines[1].replace(b'"x"', b'"\xff"')
    path = tmp_path / "questions.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    column = lines[1].index(b"\xff") + 1
    with pytest.raises(Clover2Error, match=re.escape(f"{path}:2: not UTF-8 (byte 0xff at column {column})")):
        read_questions(path)


def test_a_question_file_with_a_repeated_task_and_id_names_both_lines(tmp_path):
    questions = load_questions("qa", limit=2)
    path = tmp_path / "questions.jsonl"
    write_questions(path, [questions[0], questions[1], questions[0]])
    with pytest.raises(Clover2Error, match=re.escape(f"{path}:3: task 'qa' question_id '{questions[0].question_id}' is already on line 1")):
        read_questions(path)
    write_questions(path, [questions[0], replace(questions[0], task="rag")])  # the same id in another task is another question
    assert len(read_questions(path)) == 2
