"""`clover2` verbs that decode questions: bench (timed records) and check-lossless."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clover2.cli import common
from clover2.errors import Clover2Error
from clover2.options import key_values


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    for add in (_add_bench, _add_check_lossless):
        add(verbs)


def _add_bench(verbs: argparse._SubParsersAction) -> None:
    run = verbs.add_parser("bench", help="decode questions with every --method, interleaved; one JSON line per (question, method)")
    _decoding_arguments(run)
    run.add_argument("--warmup", type=int, default=3, help="warm-up generations excluded from the records")
    run.add_argument("--repeat", type=int, default=0, help="which timing repeat this run is (recorded in the provenance)")
    run.add_argument("--baseline", help="also decode every question with this method (e.g. vanilla), once, interleaved")
    run.add_argument("--aa-questions", type=int, default=0, metavar="N",
                     help="the baseline decodes the first N questions a second time, in the rotation (the A/A noise check)")
    run.add_argument("--timing", choices=["turn", "phases"], default="turn",
                     help="turn: one device sync per turn, for tokens/s; phases: a sync around every phase, for the "
                     "time split (4 syncs a step on a GPU; on a CPU both are the same)")
    run.add_argument("--out", type=Path, required=True)
    run.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> None:
    from clover2 import bench

    if args.aa_questions and not args.baseline:
        raise Clover2Error("--aa-questions: the A/A check decodes the --baseline twice; give one")
    target, runs, questions, config, skipped = _setup(args)
    selected = len(questions) + len(skipped or [])
    provenance = common.provenance_of(args, target)
    finished = bench.finished_rows(args.out, provenance["config_hash"])
    if finished:
        print(f"resuming: {len(finished)} records of an interrupted run kept from {bench.partial_path(args.out)}")
    done = {(row["question_id"], row["method"], row.get("replicate", 0)) for row in finished}
    aa = (next(r for r in runs if r[0] == args.baseline), args.aa_questions) if args.aa_questions else None
    rows = bench.run(target, runs, questions, config, provenance, args.warmup, done, skipped, aa)
    count = bench.write_jsonl(args.out, rows, finished)
    print(f"{count} records ({len(runs)} methods x {selected - len(skipped or [])} questions) -> {args.out}")
    _report_skips(skipped, selected)


def _add_check_lossless(verbs: argparse._SubParsersAction) -> None:
    check = verbs.add_parser(
        "check-lossless", help="T = 0: every turn equals plain decoding; T > 0: a chi-squared test of the samples"
    )
    _decoding_arguments(check)
    check.add_argument("--samples", type=int, default=2000, help="T > 0: draws per method")
    check.add_argument("--alpha", type=float, default=0.01, help="T > 0: significance level of the test")
    check.add_argument("--out", type=Path, help="write the report (JSON) here")
    check.set_defaults(func=_check_lossless)


def _check_lossless(args: argparse.Namespace) -> int:
    from clover2.atomic import atomic_write_text
    from clover2.bench import turn_prompt
    from clover2.lossless import check_greedy, check_sampling

    target, runs, questions, config, skipped = _setup(args)
    _report_skips(skipped, len(questions) + len(skipped or []))
    if config.temperature == 0:
        reports = check_greedy(target, runs, questions, config)
        for name, report in reports.items():
            print(f"{name} on {args.task} ({args.dtype}): {report.turns_identical}/{report.turns_checked} turns identical to "
                  f"plain decoding, {len(report.near_ties)} diverged at a near-tie, {len(report.mismatches)} mismatched")
            for kind, divergences in (("near-tie", report.near_ties), ("MISMATCH", report.mismatches)):
                for d in divergences:
                    print(f"  {kind}: question {d.question_id} turn {d.turn}, new token {d.position}: margins plain "
                          f"{d.plain_margin}, {name} {d.method_margin} (tolerance {d.tolerance:.3g}; "
                          f"{name} kept its target's argmax: {d.method_chose_argmax})")
                    print(f"    plain:  {d.plain!r}\n    {name}: {d.method!r}")
    else:
        prompt = turn_prompt(target, questions[0], 0, [], config) if questions else []
        if not prompt:
            raise Clover2Error(f"check-lossless: task {args.task!r} selected no question to sample from")
        reports = check_sampling(target, runs, prompt, config.temperature, args.samples, config.max_new_tokens, args.alpha, args.seed)
        for name, report in reports.items():
            print(
                f"{name} at T={config.temperature}: chi-squared {report.statistic:.1f} on {report.dof} dof over "
                f"{report.outcomes} continuations of {report.tokens} tokens, p = {report.p_value:.4f} (alpha {report.alpha})"
            )
    passed = all(report.passed for report in reports.values())
    print("lossless: PASS" if passed else "lossless: FAIL")
    if args.out:
        document = {"reports": {name: r.to_json() for name, r in reports.items()}, "provenance": common.provenance_of(args, target)}
        atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")
    return 0 if passed else 1


def _decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", type=Path, required=True, help="a directory made by prepare-target")
    parser.add_argument("--method", action=common.MethodChoices, required=True, metavar="[NAME=]METHOD")
    parser.add_argument("--head", action="append", metavar="[METHOD=]DIR",
                        help="the trained head directory of a method that drafts with one (repeatable)")
    parser.add_argument("--draft-option", action="append", metavar="[METHOD:]KEY=VALUE",
                        help="change a trained head's drafting option for this run, e.g. eagle2:total_tokens=30; "
                             "without METHOD, of every method with a head (repeatable)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="a registered task (clover2 tasks lists them)")
    source.add_argument("--questions", type=Path, nargs="+", help="question files written by clover2 questions")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--limit", type=int, help="the first N questions of the task (of each question file)")
    parser.add_argument("--ids", nargs="+", help="only these question ids")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="per turn (check-lossless at T > 0: per draw)")
    parser.add_argument("--max-length", type=int, default=1960, help="prompt + new tokens per turn")
    parser.add_argument("--skip-long-prompts", action="store_true",
                        help="leave out (and count) a question whose prompt leaves no room for an answer under "
                             "--max-length or the model's context; by default it is an error naming the question")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=common.DTYPE_CHOICES,
                        help="auto: bf16 on a CPU with avx512_bf16 or amx_bf16 (else float32), float16 on GPU; "
                        "default: float16 on GPU, float32 on CPU")
    parser.add_argument("--kernels", choices=["auto", "triton", "torch"], help="verification kernels (default auto: Triton on CUDA)")


def _decode_config(args: argparse.Namespace):
    from clover2.engine.decoding import DecodeConfig

    try:
        return DecodeConfig(
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            max_length=args.max_length,
            seed=args.seed,
            timing=getattr(args, "timing", "phases"),
        )
    except ValueError as error:
        raise Clover2Error(f"{args.verb}: {error}") from None


def _setup(args: argparse.Namespace):
    """Check the cheap arguments first, then load the target and build every method for it."""
    import torch

    from clover2 import bench
    from clover2.engine.kernels import choose_backend
    from clover2.tasks import load_questions, read_questions

    choose_backend(args.kernels or "auto")
    if args.limit is not None and args.limit < 0:
        raise Clover2Error(f"--limit must be >= 0, got {args.limit}")
    if args.threads:
        torch.set_num_threads(args.threads)
    factories = _method_factories(args)
    config = _decode_config(args)
    if args.questions:
        questions = [q for path in args.questions for q in read_questions(path)[: args.limit]]
        args.task = ",".join(dict.fromkeys(q.task for q in questions))
    else:
        questions = load_questions(args.task, limit=args.limit, ids=args.ids)
    target = common.target_from(args)
    skipped = [] if args.skip_long_prompts else None
    questions = bench.fitting(target, questions, config, skipped)
    return target, [(name, make(target.model)) for name, make in factories], questions, config, skipped


def _report_skips(skipped: list[str] | None, selected: int) -> None:
    if skipped:
        print(f"skipped {len(skipped)} of {selected} questions (--skip-long-prompts):", file=sys.stderr)
        for reason in skipped:
            print(f"  {reason}", file=sys.stderr)


def _method_factories(args: argparse.Namespace) -> list:
    """(name, factory) per --method, in order; --method NAME=METHOD decodes as METHOD under its own name
    (one head's two trees in one job); --head NAME=DIR pairs a head with its method (a bare DIR is
    allowed when there is one method)."""
    from clover2.methods import method_factory

    decodes_as = dict(_method_name(value) for value in [*args.method, *([args.baseline] if getattr(args, "baseline", None) else [])])
    names = [name for name, _ in map(_method_name, args.method)]
    heads = {}
    for value in args.head or []:
        method, sep, directory = value.partition("=")
        if not sep:
            if len(names) != 1:
                raise Clover2Error(f"--head {value}: with several methods, name the method (--head METHOD=DIR)")
            method, directory = names[0], value
        if method not in names:
            raise Clover2Error(f"--head {value}: {method!r} is not one of the --method values")
        heads[method] = Path(directory)
    drafting = _drafting(args.draft_option or [], names, list(heads))
    return [(name, method_factory(method, heads.get(name), drafting.get(name))) for name, method in decodes_as.items()]


def _method_name(value: str) -> tuple[str, str]:
    """--method NAME=METHOD, or METHOD under its own name."""
    name, _, method = value.partition("=")
    return name, method or name


def _drafting(pairs: list[str], methods: list[str], with_heads: list[str]) -> dict[str, dict]:
    """--draft-option [METHOD:]KEY=VALUE as options per method, in order (a later value wins); a pair
    without METHOD applies to every method that drafts with a trained head."""
    from clover2.options import method_option

    drafting: dict[str, dict] = {}
    for pair in pairs:
        method, option = method_option(pair)
        if method is not None and method not in methods:
            raise Clover2Error(f"--draft-option {pair}: {method!r} is not one of the --method values")
        for name in [method] if method is not None else with_heads:
            drafting.setdefault(name, {}).update(key_values([option], "--draft-option"))
    return drafting
