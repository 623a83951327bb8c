"""The benchmark runner: decode questions turn by turn with one method and keep a record per question."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from clover2.atomic import complete_json_lines
from clover2.chat import prompt_ids
from clover2.engine.decoding import DecodeConfig, TurnRecord, turn_generator
from clover2.engine.target import Target
from clover2.errors import Clover2Error
from clover2.methods import DecodeTurn
from clover2.records import bench_row
from clover2.tasks import Question

WARMUP_TOKENS = 8  # warm-up only has to run every code path once (several draft-verify steps), not answer


def answer_text(target: Target, record: TurnRecord) -> str:
    """The turn's answer as the next turn's prompt will quote it: without its stop token."""
    tokens = record.tokens[:-1] if record.stop_reason == "stop_token" else record.tokens
    return target.tokenizer.decode(tokens, skip_special_tokens=True)


class LongPrompt(Clover2Error):
    """A turn's prompt leaves no room for one new token under --max-length or the model's context."""


def turn_prompt(target: Target, question: Question, turn: int, answers: Sequence[str], config: DecodeConfig) -> list[int]:
    """The prompt ids of `question`'s turn `turn` (0-based) after `answers`; LongPrompt when no new token fits,
    never a turn of zero new tokens that a table would count as an answer."""
    ids = prompt_ids(target.tokenizer, question.turns[: turn + 1], answers)
    context = getattr(target.model.config, "max_position_embeddings", None) or config.max_length
    limit, which = min((config.max_length, "--max-length"), (context, "the model's context"))
    if len(ids) >= limit:
        raise LongPrompt(f"{question.task} question {question.question_id} turn {turn + 1}: its prompt has {len(ids)} "
                         f"tokens, leaving no room for an answer under {which} ({limit})")
    return ids


def fitting(target: Target, questions: Sequence[Question], config: DecodeConfig, skipped: list[str] | None) -> list[Question]:
    """The questions whose first turn leaves room for an answer (checked before any decoding): a question
    that does not is an error, or, when `skipped` is a list, left out and its reason appended there."""
    kept = []
    for question in questions:
        try:
            turn_prompt(target, question, 0, [], config)
        except LongPrompt as error:
            if skipped is None:
                raise
            skipped.append(str(error))
            continue
        kept.append(question)
    return kept


def decode_question(target: Target, decode: DecodeTurn, question: Question, config: DecodeConfig) -> list[dict]:
    """Every turn of `question`; each later turn's prompt includes the model's own earlier answers."""
    answers: list[str] = []
    turns = []
    for turn, _ in enumerate(question.turns):
        ids = turn_prompt(target, question, turn, answers, config)
        generator = turn_generator(config.seed, question.question_id, turn, target.model.device)
        record = decode(target.model, ids, config, target.stop_token_ids, generator)
        answers.append(answer_text(target, record))
        turns.append({**record.to_json(), "text": answers[-1]})
    return turns


def warm_up(target: Target, decode: DecodeTurn, question: Question, config: DecodeConfig, times: int) -> None:
    """Run the first turn a few times so that one-off costs (allocation, lazy init) stay out of timings."""
    short = replace(config, max_new_tokens=min(config.max_new_tokens, WARMUP_TOKENS))
    ids = prompt_ids(target.tokenizer, question.turns[:1], [])
    for _ in range(times):
        decode(target.model, ids, short, target.stop_token_ids, turn_generator(config.seed, "warmup", 0, target.model.device))


Run = tuple[str, DecodeTurn]  # a method's name and its decoder


def run(
    target: Target,
    runs: Sequence[Run],
    questions: Sequence[Question],
    config: DecodeConfig,
    provenance: dict,
    warmup: int = 3,
    done: Collection[tuple[str, str, int]] = (),
    skipped: list[str] | None = None,
    aa: tuple[Run, int] | None = None,
) -> Iterator[dict]:
    """Yield one result row per (question, run), with a progress bar; skip the (question id, method,
    replicate) triples in `done`.

    Every run decodes each question in this process, the order rotating from question to question,
    so the speed ratio of any two runs (a method and the plain baseline) is measured under the same
    conditions at the same time, and no run always goes first. `aa` = (the baseline's run, N): the
    baseline decodes the first N questions a second time in the rotation (rows marked replicate 1), so
    the report can say how far apart two runs of the same method come out (the A/A check). A question's
    rows come together once every run has decoded it: a later turn whose prompt (grown by the earlier
    answers) leaves no room is an error, or, when `skipped` is a list, drops the question from every run
    with its reason there.
    """
    if questions and warmup:
        for _, run_decode in runs:
            warm_up(target, run_decode, questions[0], config, warmup)
    tasks = ",".join(dict.fromkeys(q.task for q in questions)) or "-"
    for index, question in enumerate(tqdm(questions, desc=f"{len(runs)} runs on {tasks}", unit="q")):
        rotation = [(name, decode, 0) for name, decode in runs]
        if aa is not None and index < aa[1]:
            rotation.append((*aa[0], 1))
        shift = index % len(rotation)
        try:
            rows = [bench_row(question.task, question.question_id, question.category, name,
                              decode_question(target, run_decode, question, config), provenance, replicate)
                    for name, run_decode, replicate in [*rotation[shift:], *rotation[:shift]]
                    if (question.question_id, name, replicate) not in done]
        except LongPrompt as error:
            if skipped is None:
                raise
            skipped.append(str(error))
            continue
        yield from rows


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def finished_rows(path: Path, config_hash: str) -> list[dict]:
    """The rows an interrupted run of the same settings left in `path`'s partial file (a torn last line is dropped)."""
    partial = partial_path(path)
    if not partial.is_file():
        return []
    return [row for row in complete_json_lines(partial) if row["provenance"]["config_hash"] == config_hash]


def write_jsonl(path: Path, rows: Iterator[dict], finished: Sequence[dict] = ()) -> int:
    """Append each row to `path`.partial as it comes (after the `finished` rows of an earlier run),
    then rename the partial file into place: an interrupted run leaves no file that looks complete,
    and a rerun resumes from what it kept."""
    partial = partial_path(path)
    partial.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with partial.open("w", encoding="utf-8") as handle:
        for row in itertools.chain(finished, rows):  # as each row comes, not once all are done
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            count += 1
    os.replace(partial, path)
    return count
