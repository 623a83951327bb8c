"""`clover2` verbs that turn records into tables and the paper: report, paper-pdf, stage-times."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clover2.errors import Clover2Error


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    for add in (_add_report, _add_paper_pdf, _add_stage_times):
        add(verbs)


def _add_report(verbs: argparse._SubParsersAction) -> None:
    report = verbs.add_parser("report", help="regenerate the tables from raw bench records, losslessness reports and heads")
    report.add_argument("--bench", type=Path, nargs="+", required=True, help="bench JSONL files")
    report.add_argument("--lossless", type=Path, nargs="*", default=[], help="check-lossless reports (JSON)")
    report.add_argument("--heads", type=Path, nargs="*", default=[], help="trained head directories")
    report.add_argument("--baseline", default="vanilla", help="the method speedups are relative to")
    report.add_argument("--out", type=Path, required=True, help="all tables, booktabs LaTeX")
    report.add_argument("--markdown", type=Path, help="all tables, Markdown")
    report.add_argument("--questions", type=Path, nargs="*", default=[], help="question files (references for quality scores)")
    report.add_argument("--published", type=Path, help="the paper's numbers (CSV), for the published-vs-reproduced table")
    report.add_argument("--target-name", default="", help="this run's target, as named in the published CSV")
    report.add_argument("--sweep", type=Path, nargs="*", default=[], help="bench files of a tree-size sweep (--draft-option runs)")
    report.add_argument("--step-cost", type=Path, nargs="*", default=[], help="clover2 step-cost files (JSON)")
    report.add_argument("--trees", type=Path, nargs="*", default=[], help="clover2 choose-tree files (JSON)")
    report.add_argument("--ablation-bench", nargs="*", default=[], metavar="NAME=FILE",
                        help="each ablation variant's bench file (T = 0, baseline interleaved), the full method first")
    report.add_argument("--ablation-heads", nargs="*", default=[], metavar="NAME=DIR", help="each ablation variant's head")
    report.add_argument("--paper", type=Path, help="also write DIR/tables/*.tex, DIR/figures/* and DIR/main.tex")
    report.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> None:
    from clover2.reporting.paper import write_paper
    from clover2.reporting.render import write_tables
    from clover2.reporting.tables import build_tables
    from clover2.tasks import TASKS, read_questions

    published = args.published if args.published and args.published.is_file() else None
    if args.published and published is None:
        print(f"clover2 report: {args.published} not found; no published-vs-reproduced table", file=sys.stderr)
    questions = [question for path in args.questions for question in read_questions(path)]
    tables, stats = build_tables(
        args.bench, args.lossless, args.heads, args.baseline, questions, published, args.target_name, args.sweep,
        args.step_cost, _ablation(args.ablation_bench, args.ablation_heads), TASKS, args.trees,
    )
    write_tables(tables, args.out, args.markdown)
    if args.paper:
        write_paper(tables, stats, args.paper, args.target_name or "this run")
    print(f"{len(tables)} tables -> {args.out}")


def _add_paper_pdf(verbs: argparse._SubParsersAction) -> None:
    pdf = verbs.add_parser("paper-pdf", help="build DIR/main.pdf with latexmk; fails on a LaTeX error, a missing figure, "
                           "an undefined reference or a table wider than the page")
    pdf.add_argument("directory", type=Path, help="a directory written by clover2 report --paper")
    pdf.set_defaults(func=_paper_pdf)


def _paper_pdf(args: argparse.Namespace) -> None:
    from clover2.reporting.paper import compile_pdf

    print(f"paper built: {compile_pdf(args.directory)}")


def _add_stage_times(verbs: argparse._SubParsersAction) -> None:
    times = verbs.add_parser("stage-times", help="wall time per workflow stage, from Snakemake's benchmark files")
    times.add_argument("roots", type=Path, nargs="+", help="directories holding …/benchmarks/<stage>/… (e.g. results)")
    times.set_defaults(func=_stage_times)


def _stage_times(args: argparse.Namespace) -> None:
    from clover2.workflow import stage_times

    table = stage_times(args.roots)
    shown = table.astype(object).where(table.notna(), None)  # a stage without decoding records: no start-up share
    print(shown.to_markdown(floatfmt=(".0f",) * 6 + (".0%",), missingval="–"))
    print(f"\nall stages: {table['job_seconds'].sum():.0f} job-seconds")


def _ablation(bench: list[str], heads: list[str]) -> tuple[dict[str, Path], dict[str, Path]] | None:
    """--ablation-bench and --ablation-heads NAME=PATH pairs as two dicts with the same variants, in order."""
    files, dirs = (_named_paths(pairs, flag) for pairs, flag in ((bench, "--ablation-bench"), (heads, "--ablation-heads")))
    if list(files) != list(dirs):
        raise Clover2Error(f"--ablation-bench names {', '.join(files)} but --ablation-heads names {', '.join(dirs)}")
    return (files, dirs) if files else None


def _named_paths(pairs: list[str], flag: str) -> dict[str, Path]:
    named = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name:
            raise Clover2Error(f"{flag} {pair}: expected NAME=PATH")
        named[name] = Path(path)
    return named
