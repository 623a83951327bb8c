"""`clover2` verbs that make the workflow's inputs: a prepared target and question files."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    for add in (_add_prepare_target, _add_questions, _add_tasks):
        add(verbs)


def _add_prepare_target(verbs: argparse._SubParsersAction) -> None:
    prepare = verbs.add_parser("prepare-target", help="materialise a target LLM as a Hugging Face directory")
    prepare.add_argument("name", help="an embedded target (smollm2-135m-instruct), a hub id, a local directory or a .gguf file")
    prepare.add_argument("--out", type=Path, required=True)
    prepare.add_argument("--chat-template", help="a registered chat template to install (e.g. vicuna_v1.1)")
    prepare.set_defaults(func=_prepare_target)


def _prepare_target(args: argparse.Namespace) -> None:
    from clover2.targets import prepare_target

    started = time.perf_counter()
    out = prepare_target(args.name, args.out, chat_template=args.chat_template)
    print(f"target ready: {out} ({time.perf_counter() - started:.1f} s)")


def _add_questions(verbs: argparse._SubParsersAction) -> None:
    select = verbs.add_parser("questions", help="write tasks' selected questions to files (the workflow's data stage)")
    select.add_argument("--task", nargs="+", required=True)
    select.add_argument("--limit", type=int, help="the first N questions of each task")
    select.add_argument("--out-dir", type=Path, required=True, help="writes DIR/<task>.jsonl for each task")
    select.set_defaults(func=_questions)


def _questions(args: argparse.Namespace) -> None:
    from clover2.tasks import load_questions, write_questions

    for task in args.task:
        questions = load_questions(task, limit=args.limit)
        out = args.out_dir / f"{task}.jsonl"
        write_questions(out, questions)
        print(f"{len(questions)} questions of {task} -> {out}")


def _add_tasks(verbs: argparse._SubParsersAction) -> None:
    tasks = verbs.add_parser("tasks", help="list the registered question sets")
    tasks.set_defaults(func=_tasks)


def _tasks(args: argparse.Namespace) -> None:
    from clover2.tasks import load_questions, task_names

    for name in task_names():
        questions = load_questions(name)
        turns = sorted({len(q.turns) for q in questions})
        print(f"{name:16s} {len(questions):5d} questions, turns {turns}")
