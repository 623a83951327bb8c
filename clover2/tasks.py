"""Question sets as registered data: each task names a file, how its lines are read, and which lines it keeps.

Files come from the data mirror or their public sources (`clover2.sources`).

EAGLE's HumanEval prompt convention: the instruction "Complete the code I provided." is glued to the
HumanEval prompt with no separator. Most prompts begin with a newline, so the turn usually reads
"…provided.\\n\\ndef …", but the 22 of 164 that begin with `from`/`import` read "…provided.from typing …".
`humaneval_full` copies that byte for byte so that the 80 questions the two tasks share have identical
turns (and token counts).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clover2.atomic import atomic_write_bytes
from clover2.errors import Clover2Error
from clover2.reporting.quality import gsm8k_correct, humaneval_passed
from clover2.sources import HUMANEVAL_FILE, SPEC_BENCH_FILE, data_file

HUMANEVAL_PREFIX = "Complete the code I provided."
HUMANEVAL_FIELDS = ("task_id", "prompt", "entry_point", "test", "canonical_solution")
MT_BENCH_CATEGORIES = frozenset(
    {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
)
SPEC_BENCH_ONE_TURN = ("translation", "summarization", "qa", "math_reasoning", "rag")



@dataclass(frozen=True)
class Question:
    task: str
    question_id: str  # stable id as a string ("81", "HumanEval/0", ...)
    category: str
    turns: tuple[str, ...]  # user turns; >= 1, each non-empty
    reference: Any = None


@dataclass(frozen=True)
class TaskSpec:
    """A task as data: which file, which line schema, which lines, and how the reference is made."""

    name: str
    file: str  # relative to the data mirror
    schema: str  # "fastchat" (question_id, category, turns), "gsm8k" (question, answer) or "humaneval"
    description: str
    categories: frozenset[str] | None = None  # keep lines of these categories; None keeps every line
    category: str | None = None  # the category of every question, for schemas without the field
    reference: str = "field"  # "field": as stored; "single": unwrap a one-element list; "humaneval": the record
    turn_prefix: str = ""  # put before the prompt (humaneval schema) or stripped to find it ("humaneval" reference)
    label: str | None = None  # its column head in the paper's tables (short enough for the page); None: not a paper column
    quality: str | None = None  # what `scorer` measures, as the quality table's column names it
    scorer: Callable[[str, Any], bool] | None = None  # (answer, reference) -> correct


def _gsm8k_correct(answer: str, reference: Any) -> bool:
    """GSM8K references are the solution text; Spec-Bench's math_reasoning keeps it as a one-item list."""
    return gsm8k_correct(answer, reference[0] if isinstance(reference, list | tuple) else reference)


def _humaneval_passed(answer: str, reference: Any) -> bool:
    return humaneval_passed(answer, reference).passed


GSM8K = {"quality": "GSM8K accuracy", "scorer": _gsm8k_correct}
HUMANEVAL = {"quality": "HumanEval pass@1", "scorer": _humaneval_passed}


def _spec_bench_task(name: str, categories: frozenset[str], what: str, **columns) -> TaskSpec:
    return TaskSpec(name, SPEC_BENCH_FILE, "fastchat", what, categories=categories, **columns)


# The paper's tasks first, in the order of its tables (the labelled ones); then the larger sets.
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _spec_bench_task("mt_bench", MT_BENCH_CATEGORIES, "Spec-Bench MT-bench, 8 categories x 10, 2 turns", label="MT-Bench"),
        _spec_bench_task("translation", frozenset({"translation"}), "Spec-Bench WMT14 DE->EN, 80", label="Transl."),
        _spec_bench_task("summarization", frozenset({"summarization"}), "Spec-Bench CNN/DM, 80", label="Summ."),
        _spec_bench_task("qa", frozenset({"qa"}), "Spec-Bench Natural Questions, 80", label="QA"),
        _spec_bench_task("math_reasoning", frozenset({"math_reasoning"}), "Spec-Bench GSM8K, 80", label="Math", **GSM8K),
        _spec_bench_task("rag", frozenset({"rag"}), "Spec-Bench DPR retrieval-augmented QA, 80", label="RAG"),
        TaskSpec("humaneval", "eagle/humaneval/question.jsonl", "fastchat", "EAGLE's HumanEval subset, 80",
                 reference="humaneval", turn_prefix=HUMANEVAL_PREFIX, label="HumanEval", **HUMANEVAL),
        TaskSpec("gsm8k", "eagle/gsm8k/question.jsonl", "fastchat", "EAGLE's GSM8K subset, 80", reference="single",
                 label="GSM8K", **GSM8K),
        _spec_bench_task("spec_bench", MT_BENCH_CATEGORIES | frozenset(SPEC_BENCH_ONE_TURN), "all six Spec-Bench tasks, 480"),
        TaskSpec("gsm8k_full", "gsm8k/test.jsonl", "gsm8k", "GSM8K test set, 1319", category="math", **GSM8K),
        TaskSpec("humaneval_full", HUMANEVAL_FILE, "humaneval", "HumanEval, 164, with EAGLE's instruction", category="code",
                 turn_prefix=HUMANEVAL_PREFIX, **HUMANEVAL),
    )
}


def task_names() -> list[str]:
    return sorted(TASKS)


def load_questions(task: str, limit: int | None = None, ids: Sequence[str] | None = None) -> list[Question]:
    """The questions of `task` in file order; `ids` keeps those question ids, then `limit` keeps the first N."""
    spec = TASKS.get(task)
    if spec is None:
        raise Clover2Error(f"unknown task {task!r}; known tasks: {', '.join(task_names())}")
    if limit is not None and limit < 0:
        raise Clover2Error(f"limit must be >= 0, got {limit}")
    questions = _read_task(spec)
    if ids is not None:
        questions = _select_ids(questions, [ids] if isinstance(ids, str) else ids, spec)
    return questions if limit is None else questions[:limit]


def _select_ids(questions: list[Question], ids: Sequence[str], spec: TaskSpec) -> list[Question]:
    wanted = {str(i) for i in ids}
    missing = wanted - {q.question_id for q in questions}
    if missing:
        raise Clover2Error(f"task {spec.name!r} ({spec.file}) has no question ids {', '.join(sorted(missing))}")
    return [q for q in questions if q.question_id in wanted]


# --------------------------------------------------------------------------- reading and checking lines


@dataclass(frozen=True)
class _Line:
    """Where a record came from, so every complaint can name the file and the 1-based line."""

    path: Path
    number: int
    row: dict

    def fail(self, field: str, expected: str) -> Clover2Error:
        got = repr(self.row[field]) if field in self.row else "no such field"
        got = got if len(got) <= 60 else got[:57] + "..."
        return Clover2Error(f"{self.path}:{self.number}: field {field!r}: expected {expected}, got {got}")

    def text(self, field: str) -> str:
        value = self.row.get(field)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, "a non-empty string")
        return value

    def turns(self) -> tuple[str, ...]:
        value = self.row.get("turns")
        if not isinstance(value, list) or not value:
            raise self.fail("turns", "a non-empty list of strings")
        for i, turn in enumerate(value):
            if not isinstance(turn, str) or not turn.strip():
                raise self.fail("turns", f"a non-empty string at turns[{i}]")
        return tuple(value)

    def question_id(self) -> str:
        value = self.row.get("question_id")
        # bool is an int subclass; a true/false id is a broken file, not an id.
        if isinstance(value, bool) or not isinstance(value, int | str) or str(value) == "":
            raise self.fail("question_id", "an integer or a non-empty string")
        return str(value)


def _jsonl_lines(path: Path) -> Iterator[_Line]:
    """Each non-blank line's object; read as bytes and decoded line by line, so that a bad byte is
    reported on its own line, at its column."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        number = 0
        try:
            for number, raw in enumerate(handle, start=1):
                text = raw.decode("utf-8")
                if text.strip():
                    yield _Line(path, number, _json_object(text, path, number))
        except UnicodeDecodeError as err:
            raise Clover2Error(f"{path}:{number}: not UTF-8 (byte {err.object[err.start]:#04x} at column {err.start + 1})") from None
        except (gzip.BadGzipFile, EOFError) as err:
            raise Clover2Error(f"{path}:{number + 1}: cannot be read as gzipped JSON lines ({err})") from None


def _json_object(raw: str, path: Path, number: int) -> dict:
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as err:
        raise Clover2Error(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(row, dict):
        raise Clover2Error(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
    return row


def _fastchat(spec: TaskSpec, line: _Line, index: int) -> Question:
    reference = line.row.get("reference")
    if spec.reference == "single":
        if not isinstance(reference, list) or len(reference) != 1 or not isinstance(reference[0], str):
            raise line.fail("reference", "a list holding one solution string")
        reference = reference[0]
    elif isinstance(reference, list):
        reference = tuple(reference)
    return Question(spec.name, line.question_id(), line.text("category"), line.turns(), reference)


def _gsm8k(spec: TaskSpec, line: _Line, index: int) -> Question:
    return Question(spec.name, str(index), spec.category, (line.text("question"),), line.text("answer"))


def _humaneval(spec: TaskSpec, line: _Line, index: int) -> Question:
    record = _humaneval_record(line)
    return Question(spec.name, record["task_id"], spec.category, (spec.turn_prefix + record["prompt"],), record)


def _humaneval_record(line: _Line) -> dict[str, str]:
    return {field: line.text(field) for field in HUMANEVAL_FIELDS}


_SCHEMAS: dict[str, Callable[[TaskSpec, _Line, int], Question]] = {
    "fastchat": _fastchat,
    "gsm8k": _gsm8k,
    "humaneval": _humaneval,
}


def _read_task(spec: TaskSpec) -> list[Question]:
    path = data_file(spec.file)
    known = _categories_of(spec.file)
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for index, line in enumerate(_jsonl_lines(path)):
        question = _SCHEMAS[spec.schema](spec, line, index)
        if known is not None and question.category not in known:
            raise line.fail("category", f"one of {', '.join(sorted(known))}")
        if spec.categories is not None and question.category not in spec.categories:
            continue
        if question.question_id in seen:
            raise line.fail("question_id", f"an id not already used on line {seen[question.question_id]}")
        seen[question.question_id] = line.number
        questions.append(question)
    if not questions:
        raise Clover2Error(f"{path}: no questions for task {spec.name!r}")
    if spec.reference == "humaneval":
        questions = _attach_humaneval(questions, spec, path)
    return questions


def _categories_of(file: str) -> frozenset[str] | None:
    """Every category some task claims from `file`, or None when a task takes the whole file.

    A line whose category no task claims would silently vanish from every task, so it is an error.
    """
    claimed: set[str] = set()
    for spec in TASKS.values():
        if spec.file == file:
            if spec.categories is None:
                return None
            claimed |= spec.categories
    return frozenset(claimed)


def _attach_humaneval(questions: list[Question], spec: TaskSpec, path: Path) -> list[Question]:
    """Give each EAGLE HumanEval question its full HumanEval record, found by the prompt text."""
    records = map(_humaneval_record, _jsonl_lines(data_file(HUMANEVAL_FILE)))
    by_prompt = {record["prompt"]: record for record in records}
    attached = []
    for question in questions:
        turn = question.turns[0]
        record = by_prompt.get(turn[len(spec.turn_prefix) :]) if turn.startswith(spec.turn_prefix) else None
        if record is None:
            raise Clover2Error(
                f"{path}: question_id {question.question_id}: turn is not {spec.turn_prefix!r} "
                f"followed by a HumanEval prompt from {HUMANEVAL_FILE}"
            )
        attached.append(Question(question.task, question.question_id, question.category, question.turns, record))
    return attached


# --------------------------------------------------------------------------- question files


def write_questions(path: Path, questions: Sequence[Question]) -> None:
    """The selected questions as JSON lines (the workflow's data stage), written atomically."""
    lines = [json.dumps({**asdict(q), "turns": list(q.turns)}, ensure_ascii=False) for q in questions]
    atomic_write_bytes(Path(path), "".join(line + "\n" for line in lines).encode("utf-8"))


def read_questions(path: Path) -> list[Question]:
    """Questions from a file `write_questions` made; a malformed line is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise Clover2Error(f"question file not found: {path}")
    questions, seen = [], {}
    for line in _jsonl_lines(path):
        question = Question(line.text("task"), line.question_id(), line.text("category"), line.turns(), line.row.get("reference"))
        key = (question.task, question.question_id)
        if key in seen:  # resuming and pairing with the baseline key on it
            raise Clover2Error(f"{path}:{line.number}: task {key[0]!r} question_id {key[1]!r} is already on line {seen[key]}")
        seen[key] = line.number
        questions.append(question)
    if not questions:
        raise Clover2Error(f"{path}: no questions")
    return questions
