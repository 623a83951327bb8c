"""The benchmark runner: decode questions turn by turn with one method and keep a record per question."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from clover2.atomic import atomic_write_text
from clover2.chat import prompt_ids
from clover2.decoding import DecodeConfig, TurnRecord, turn_generator
from clover2.methods import DecodeTurn
from clover2.tasks import Question
from clover2.targets import Target

WARMUP_TOKENS = 8  # warm-up only has to run every code path once (several draft-verify steps), not answer


def answer_text(target: Target, record: TurnRecord) -> str:
    """The turn's answer as the next turn's prompt will quote it: without its stop token."""
    tokens = record.tokens[:-1] if record.stop_reason == "stop_token" else record.tokens
    return target.tokenizer.decode(tokens, skip_special_tokens=True)


def decode_question(target: Target, decode: DecodeTurn, question: Question, config: DecodeConfig) -> list[dict]:
    """Every turn of `question`; each later turn's prompt includes the model's own earlier answers."""
    answers: list[str] = []
    turns = []
    for turn, _ in enumerate(question.turns):
        ids = prompt_ids(target.tokenizer, question.turns[: turn + 1], answers)
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


def run(
    target: Target,
    method: str,
    decode: DecodeTurn,
    questions: Sequence[Question],
    config: DecodeConfig,
    provenance: dict,
    warmup: int = 3,
    baseline: tuple[str, DecodeTurn] | None = None,
) -> Iterator[dict]:
    """Yield one result row per question (and per baseline run of it), with a progress bar.

    With a `baseline` (name, decoder), each question is decoded by both, in alternating order, in
    this process: their speed ratio is measured under the same conditions at the same time.
    """
    runs = [(method, decode)] + ([baseline] if baseline else [])
    if questions and warmup:
        for _, run_decode in runs:
            warm_up(target, run_decode, questions[0], config, warmup)
    for index, question in enumerate(tqdm(questions, desc=f"{method} on {questions[0].task if questions else '-'}", unit="q")):
        for name, run_decode in runs if index % 2 == 0 else runs[::-1]:
            yield {
                "task": question.task,
                "question_id": question.question_id,
                "category": question.category,
                "method": name,
                "turns": decode_question(target, run_decode, question, config),
                "provenance": provenance,
            }


def write_jsonl(path: Path, rows: Iterator[dict]) -> int:
    """Write all rows at once at the end, atomically: an interrupted run leaves no partial file."""
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
