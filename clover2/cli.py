"""`clover2 <verb>`: the command line every workflow rule calls; usable without Snakemake."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from clover2.errors import Clover2Error

DTYPE_CHOICES = ["auto", "float32", "float16", "bfloat16"]  # auto: clover2.targets.resolve_dtype


def _prepare_target(args: argparse.Namespace) -> None:
    from clover2.targets import prepare_target

    started = time.perf_counter()
    out = prepare_target(args.name, args.out, chat_template=args.chat_template)
    print(f"target ready: {out} ({time.perf_counter() - started:.1f} s)")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _decode_config(args: argparse.Namespace):
    from clover2.decoding import DecodeConfig

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
    from clover2.tasks import load_questions, read_questions

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
    target = _load_target(args)
    skipped = [] if args.skip_long_prompts else None
    questions = bench.fitting(target, questions, config, skipped)
    return target, [(name, make(target.model)) for name, make in factories], questions, config, skipped


def _report_skips(skipped: list[str] | None, selected: int) -> None:
    if skipped:
        print(f"skipped {len(skipped)} of {selected} questions (--skip-long-prompts):", file=sys.stderr)
        for reason in skipped:
            print(f"  {reason}", file=sys.stderr)


def _load_target(args: argparse.Namespace):
    """The target on --device in --dtype; the dtype chosen, and why, land in the command's provenance."""
    from clover2.targets import load_target, resolve_dtype

    args.device = args.device or _default_device()
    args.dtype, args.dtype_reason = resolve_dtype(args.dtype, args.device)
    if args.dtype_reason.startswith("auto: fell back"):
        print(f"warning: dtype {args.dtype_reason}", file=sys.stderr)
    return load_target(args.target, device=args.device, dtype=args.dtype)


def _method_factories(args: argparse.Namespace) -> list:
    """(name, factory) per --method, in order; --head METHOD=DIR pairs a head with its method
    (a bare DIR is allowed when there is one method)."""
    from clover2.methods import method_factory

    methods = list(dict.fromkeys([*args.method, *([args.baseline] if getattr(args, "baseline", None) else [])]))
    heads = {}
    for value in args.head or []:
        method, sep, directory = value.partition("=")
        if not sep:
            if len(args.method) != 1:
                raise Clover2Error(f"--head {value}: with several methods, name the method (--head METHOD=DIR)")
            method, directory = args.method[0], value
        if method not in args.method:
            raise Clover2Error(f"--head {value}: {method!r} is not one of the --method values")
        heads[method] = Path(directory)
    drafting = _drafting(args.draft_option or [], args.method, list(heads))
    return [(name, method_factory(name, heads.get(name), drafting.get(name))) for name in methods]


def _drafting(pairs: list[str], methods: list[str], with_heads: list[str]) -> dict[str, dict]:
    """--draft-option [METHOD:]KEY=VALUE as options per method, in order (a later value wins); a pair
    without METHOD applies to every method that drafts with a trained head."""
    from clover2.metrics import drafting_method

    drafting: dict[str, dict] = {}
    for pair in pairs:
        method, option = drafting_method(pair)
        if method is not None and method not in methods:
            raise Clover2Error(f"--draft-option {pair}: {method!r} is not one of the --method values")
        for name in [method] if method is not None else with_heads:
            drafting.setdefault(name, {}).update(_options([option], "--draft-option"))
    return drafting


def _settings(args: argparse.Namespace) -> dict:
    """The command's arguments as a record stores them: JSON values, paths as text."""
    return json.loads(json.dumps({k: v for k, v in vars(args).items() if k != "func"}, default=str))


def _provenance(args: argparse.Namespace, target) -> dict:
    from clover2.provenance import provenance

    settings = _settings(args)
    settings["target_identity"] = target.identity
    return provenance(settings, target.model.device, args.seed)


def _bench(args: argparse.Namespace) -> None:
    from clover2 import bench

    target, runs, questions, config, skipped = _setup(args)
    selected = len(questions) + len(skipped or [])
    provenance = _provenance(args, target)
    finished = bench.finished_rows(args.out, provenance["config_hash"])
    if finished:
        print(f"resuming: {len(finished)} records of an interrupted run kept from {bench.partial_path(args.out)}")
    done = {(row["question_id"], row["method"]) for row in finished}
    rows = bench.run(target, runs, questions, config, provenance, args.warmup, done, skipped)
    count = bench.write_jsonl(args.out, rows, finished)
    print(f"{count} records ({len(runs)} methods x {selected - len(skipped or [])} questions) -> {args.out}")
    _report_skips(skipped, selected)


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
                  f"plain decoding, {len(report.near_ties)} diverged at a near-tie, {len(report.mismatches)} mismatched")  # fmt: skip
            for kind, divergences in (("near-tie", report.near_ties), ("MISMATCH", report.mismatches)):
                for d in divergences:
                    print(f"  {kind}: question {d.question_id} turn {d.turn}, new token {d.position}: margins plain "
                          f"{d.plain_margin}, {name} {d.method_margin} (tolerance {d.tolerance:.3g}; {name} kept its target's argmax: {d.method_chose_argmax})")  # fmt: skip
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
        document = {"reports": {name: r.to_json() for name, r in reports.items()}, "provenance": _provenance(args, target)}
        atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")
    return 0 if passed else 1


def _train(args: argparse.Namespace) -> None:
    import dataclasses

    import yaml

    from clover2.targets import load_target
    from clover2.training import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {}
    if args.config:
        try:
            settings = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise Clover2Error(f"{args.config}: cannot read the training config ({error})") from None
        unknown = set(settings) - fields
        if unknown:
            raise Clover2Error(f"{args.config}: unknown training settings {', '.join(sorted(unknown))}")
    settings.update({key: value for key, value in vars(args).items() if key in fields and value is not None})
    settings["options"] = {**settings.get("options", {}), **_options(args.option)}
    if "betas" in settings:
        settings["betas"] = tuple(settings["betas"])
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    data = None if settings.get("teacher_cache") else _training_data(args)
    device, rank = args.device or _default_device(), os.environ.get("LOCAL_RANK")
    if rank is not None and device == "cuda":  # under accelerate launch: one GPU per process
        device = f"cuda:{rank}"
    if rank not in (None, "0"):  # and one set of loading bars, the first process's
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    target = load_target(args.target, device=device)
    train(target, data, args.out, TrainConfig(**settings))


def _training_data(args: argparse.Namespace) -> Path:
    from clover2.sharegpt import SHAREGPT_FILE
    from clover2.tasks import data_file

    data = args.data or data_file(SHAREGPT_FILE)
    if not Path(data).is_file():
        raise Clover2Error(f"training data not found: {data}")
    return Path(data)


def _cache_teacher(args: argparse.Namespace) -> None:
    import torch

    from clover2.sharegpt import load_examples
    from clover2.target_answers import first_user_turns, target_answers
    from clover2.teacher import write_teacher_cache

    if args.top_k < 1 or args.conversations < 1:
        raise Clover2Error("cache-teacher: --top-k and --conversations must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = _training_data(args)
    target = _load_target(args)
    if args.answers == "target":
        prompts = first_user_turns(data, args.conversations)
        examples = target_answers(target, prompts, args.answer_tokens, args.max_length, args.answer_temperature, args.batch_size)
        answers = {"answers": "target", "answer_tokens": args.answer_tokens, "answer_temperature": args.answer_temperature}
    else:
        examples = load_examples(target.tokenizer, data, args.conversations, args.max_length)
        answers = {"answers": "sharegpt"}
    out = write_teacher_cache(target, examples, args.out, args.top_k, args.batch_size, answers | {"data": str(data), "dtype": args.dtype})
    print(f"teacher cache ready: {out}")


def _options(pairs: list[str] | None, flag: str = "--option") -> dict:
    """KEY=VALUE head options; values parse as YAML scalars (numbers, booleans, strings)."""
    import yaml

    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise Clover2Error(f"{flag} expects KEY=VALUE, got {pair!r}")
        options[key] = yaml.safe_load(value)
    return options


def _kernels_bench(args: argparse.Namespace) -> None:
    import pandas as pd
    import torch

    from clover2.atomic import atomic_write_text
    from clover2.provenance import provenance
    from clover2.targets import DTYPES, load_target

    device = torch.device(args.device)
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise Clover2Error(f"kernels-bench --device {args.device}: the Triton kernels need a CUDA device")
    unknown = sorted(set(args.shapes) - {"smollm2", "7b"})
    if unknown:
        raise Clover2Error(f"kernels-bench --shapes: unknown {', '.join(unknown)} (expected smollm2, 7b)")
    from clover2 import kernel_bench

    report = {"attention": kernel_bench.attention_rows(args.shapes, args.tree_sizes, args.prefixes, DTYPES[args.dtype], device, args.repeats)}
    if args.target:
        target = load_target(args.target, device=args.device, dtype=args.dtype)
        report["verify_step"] = kernel_bench.verify_rows(target, args.tree_sizes, args.prefixes, args.repeats)
    for part, rows in report.items():
        print(f"## {part} ({args.dtype}, median ms over {args.repeats}; *_over_kernel > 1: the kernel is faster)")
        print(pd.DataFrame(rows).to_string(index=False))
    if args.out:
        document = {**report, "provenance": provenance(_settings(args), device, 0)}
        atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")


def _step_cost(args: argparse.Namespace) -> None:
    import pandas as pd
    import torch

    from clover2 import step_cost
    from clover2.atomic import atomic_write_text
    from clover2.provenance import provenance
    from clover2.targets import resolve_dtype

    args.device = args.device or _default_device()
    args.dtype, args.dtype_reason = resolve_dtype(args.dtype, args.device)
    args.backends = args.backends or (["torch", "triton"] if args.device.startswith("cuda") else ["torch"])
    if "triton" in args.backends and not args.device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        raise Clover2Error(f"step-cost --kernels triton on {args.device}: Triton needs a CUDA device (or TRITON_INTERPRET=1)")
    published = args.published if args.published and args.published.is_file() else None
    if published is None:
        print(f"clover2 step-cost: {args.published} not found; no projected speedups", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = step_cost.Settings(args.prompts, args.prompt_tokens, args.new_tokens, args.warmup_tokens, args.seed, args.profile)
    methods = args.method or [*step_cost.PLAIN_METHODS, *_head_methods()]
    record = provenance(_settings(args), torch.device(args.device), args.seed)

    def save(rows: list[dict]) -> None:
        if args.out:
            atomic_write_text(args.out, json.dumps({"rows": rows, "provenance": record}, indent=2) + "\n")

    rows = step_cost.run_step_cost(args.shapes, args.target, methods, args.backends, args.device, args.dtype, settings, published, save)
    columns = ["target", "method", "kernels", "tree_size", "tau", "plain_ms_per_token", "ms_per_step", "draft_ms",
               "verify_ms", "bookkeeping_ms", "sync_overhead", "projected_speedup"]  # fmt: skip
    print(f"## ms per step after the prefill ({args.dtype}, {args.device}; medians over {args.prompts} prompts)")
    print(pd.DataFrame(rows)[columns].to_string(index=False, float_format="{:.2f}".format))


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


def _head_methods() -> list[str]:
    from clover2.head_protocol import head_methods

    return head_methods()


def _report(args: argparse.Namespace) -> None:
    from clover2.report import build_tables, write_paper, write_tables

    published = args.published if args.published and args.published.is_file() else None
    if args.published and published is None:
        print(f"clover2 report: {args.published} not found; no published-vs-reproduced table", file=sys.stderr)
    tables, stats = build_tables(
        args.bench, args.lossless, args.heads, args.baseline, args.questions, published, args.target_name, args.sweep,
        args.step_cost, _ablation(args.ablation_bench, args.ablation_heads),
    )
    write_tables(tables, args.out, args.markdown)
    if args.paper:
        write_paper(tables, stats, args.paper, args.target_name or "this run")
    print(f"{len(tables)} tables -> {args.out}")


def _paper_pdf(args: argparse.Namespace) -> None:
    from clover2.report import compile_pdf

    print(f"paper built: {compile_pdf(args.directory)}")


def _stage_times(args: argparse.Namespace) -> None:
    from clover2.workflow import stage_times

    table = stage_times(args.roots)
    shown = table.astype(object).where(table.notna(), None)  # a stage without decoding records: no start-up share
    print(shown.to_markdown(floatfmt=(".0f",) * 6 + (".0%",), missingval="–"))
    print(f"\nall stages: {table['job_seconds'].sum():.0f} job-seconds")


def _questions(args: argparse.Namespace) -> None:
    from clover2.tasks import load_questions, write_questions

    for task in args.task:
        questions = load_questions(task, limit=args.limit)
        out = args.out_dir / f"{task}.jsonl"
        write_questions(out, questions)
        print(f"{len(questions)} questions of {task} -> {out}")


def _tasks(args: argparse.Namespace) -> None:
    from clover2.tasks import load_questions, task_names

    for name in task_names():
        questions = load_questions(name)
        turns = sorted({len(q.turns) for q in questions})
        print(f"{name:16s} {len(questions):5d} questions, turns {turns}")


def _decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", type=Path, required=True, help="a directory made by prepare-target")
    parser.add_argument("--method", action=_MethodAction, required=True, metavar="METHOD")
    parser.add_argument("--head", action="append", metavar="[METHOD=]DIR",
                        help="the trained head directory of a method that drafts with one (repeatable)")  # fmt: skip
    parser.add_argument("--draft-option", action="append", metavar="[METHOD:]KEY=VALUE",
                        help="change a trained head's drafting option for this run, e.g. eagle2:total_tokens=30; "
                             "without METHOD, of every method with a head (repeatable)")  # fmt: skip
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
                             "--max-length or the model's context; by default it is an error naming the question")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES,
                        help="auto: bf16 on a CPU with avx512_bf16 or amx_bf16 (else float32), float16 on GPU; "
                        "default: float16 on GPU, float32 on CPU")  # fmt: skip
    parser.add_argument("--kernels", choices=["auto", "triton", "torch"], help="verification kernels (default auto: Triton on CUDA)")


class _MethodAction(argparse._AppendAction):
    """--method, whose help lists the registered methods: built only when help is shown, because
    the registries import torch and transformers (seconds that every other verb would pay)."""

    @property
    def help(self) -> str:
        from clover2.head_protocol import head_methods
        from clover2.methods import METHODS

        return (f"a decoding method (repeatable: all decode the same questions in one process): {', '.join(METHODS)}; "
                f"with a trained head (--head): {', '.join(head_methods())}")  # fmt: skip

    @help.setter
    def help(self, value: str | None) -> None:
        pass


class _HeadMethodAction(argparse._StoreAction):
    """train's --method, whose help lists the registered heads, built only when help is shown (as --method's)."""

    @property
    def help(self) -> str:
        return f"the head to train: {', '.join(_head_methods())}"

    @help.setter
    def help(self, value: str | None) -> None:
        pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clover2", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    prepare = verbs.add_parser("prepare-target", help="materialise a target LLM as a Hugging Face directory")
    prepare.add_argument("name", help="an embedded target (smollm2-135m-instruct), a hub id, a local directory or a .gguf file")
    prepare.add_argument("--out", type=Path, required=True)
    prepare.add_argument("--chat-template", help="a registered chat template to install (e.g. vicuna_v1.1)")
    prepare.set_defaults(func=_prepare_target)

    run = verbs.add_parser("bench", help="decode questions with every --method, interleaved; one JSON line per (question, method)")
    _decoding_arguments(run)
    run.add_argument("--warmup", type=int, default=3, help="warm-up generations excluded from the records")
    run.add_argument("--repeat", type=int, default=0, help="which timing repeat this run is (recorded in the provenance)")
    run.add_argument("--baseline", help="also decode every question with this method (e.g. vanilla), once, interleaved")
    run.add_argument("--timing", choices=["turn", "phases"], default="turn",
                     help="turn: one device sync per turn, for tokens/s; phases: a sync around every phase, for the "
                     "time split (4 syncs a step on a GPU; on a CPU both are the same)")  # fmt: skip
    run.add_argument("--out", type=Path, required=True)
    run.set_defaults(func=_bench)

    check = verbs.add_parser(
        "check-lossless", help="T = 0: every turn equals plain decoding; T > 0: a chi-squared test of the samples"
    )
    _decoding_arguments(check)
    check.add_argument("--samples", type=int, default=2000, help="T > 0: draws per method")
    check.add_argument("--alpha", type=float, default=0.01, help="T > 0: significance level of the test")
    check.add_argument("--out", type=Path, help="write the report (JSON) here")
    check.set_defaults(func=_check_lossless)

    training = verbs.add_parser("train", help="train a draft head by distillation from the target on ShareGPT")
    training.add_argument("--target", type=Path, required=True)
    training.add_argument("--method", required=True, action=_HeadMethodAction)
    training.add_argument("--out", type=Path, required=True, help="the head directory to write")
    training.add_argument("--config", type=Path, help="YAML of training settings (see clover2/training.py TrainConfig)")
    training.add_argument("--data", type=Path, help="ShareGPT JSONL(.gz); default: the data mirror's sharegpt file")
    training.add_argument("--option", action="append", help="a head option KEY=VALUE (repeatable), e.g. tree=...")
    for name, kind in (("conversations", int), ("heldout", int), ("max-length", int), ("batch-size", int),
                       ("epochs", int), ("max-steps", int), ("minutes", float), ("lr", float),
                       ("warmup-steps", int), ("schedule", str), ("eval-every", int), ("checkpoint-every", int), ("seed", int)):  # fmt: skip
        training.add_argument(f"--{name}", type=kind)
    training.add_argument("--teacher-cache", help="train from a clover2 cache-teacher directory instead of running the target")
    training.add_argument("--threads", type=int)
    training.add_argument("--device")
    training.set_defaults(func=_train)

    cache = verbs.add_parser("cache-teacher", help="store the target's u, h (fp16) and top-k logits for training (large!)")
    cache.add_argument("--target", type=Path, required=True)
    cache.add_argument("--data", type=Path, help="ShareGPT JSONL(.gz) or JSON array; default: the data mirror's file")
    cache.add_argument("--out", type=Path, required=True)
    cache.add_argument("--conversations", type=int, default=68000)
    cache.add_argument("--max-length", type=int, default=2048)
    cache.add_argument("--top-k", type=int, default=64, help="teacher logits kept per position")
    cache.add_argument("--batch-size", type=int, default=4)
    cache.add_argument("--answers", choices=["sharegpt", "target"], default="sharegpt",
                       help="the assistant text: ShareGPT's, or the target's own answers to each first user turn")  # fmt: skip
    cache.add_argument("--answer-tokens", type=int, default=256, help="--answers target: new tokens per answer at most")
    cache.add_argument("--answer-temperature", type=float, default=0.0, help="--answers target: 0 greedy, > 0 sampled")
    cache.add_argument("--threads", type=int)
    cache.add_argument("--device")
    cache.add_argument("--dtype", choices=DTYPE_CHOICES,
                       help="the target's, as bench runs it (default: float16 on GPU, float32 on CPU)")  # fmt: skip
    cache.set_defaults(func=_cache_teacher)

    kernels = verbs.add_parser("kernels-bench", help="time the tree-attention kernel against SDPA and eager (GPU)")
    kernels.add_argument("--target", type=Path, help="also time the whole verification step on this target")
    kernels.add_argument("--device", default="cuda")
    kernels.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16")
    kernels.add_argument("--shapes", nargs="+", default=["smollm2", "7b"], help="smollm2 (9/3 heads, dim 64), 7b (32/32, 128)")
    kernels.add_argument("--tree-sizes", nargs="+", type=int, default=[26, 60])
    kernels.add_argument("--prefixes", nargs="+", type=int, default=[256, 512, 1024, 2048])
    kernels.add_argument("--repeats", type=int, default=50)
    kernels.add_argument("--out", type=Path, help="write the rows and provenance (JSON) here")
    kernels.set_defaults(func=_kernels_bench)

    times = verbs.add_parser("stage-times", help="wall time per workflow stage, from Snakemake's benchmark files")
    times.add_argument("roots", type=Path, nargs="+", help="directories holding …/benchmarks/<stage>/… (e.g. results)")
    times.set_defaults(func=_stage_times)

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
    report.add_argument("--ablation-bench", nargs="*", default=[], metavar="NAME=FILE",
                        help="each ablation variant's bench file (T = 0, baseline interleaved), the full method first")  # fmt: skip
    report.add_argument("--ablation-heads", nargs="*", default=[], metavar="NAME=DIR", help="each ablation variant's head")
    report.add_argument("--paper", type=Path, help="also write DIR/tables/*.tex, DIR/figures/* and DIR/main.tex")
    report.set_defaults(func=_report)

    cost = verbs.add_parser("step-cost", help="ms per plain token and per speculative step (draft/verify/bookkeeping) "
                            "per target shape, method and kernel backend, with the paper's τ projected onto them")  # fmt: skip
    cost.add_argument("--shapes", nargs="*", default=["smollm2-135m", "vicuna-7b", "llama3-8b"],
                      help="random-weight targets of these shapes: tiny, smollm2-135m, vicuna-7b, llama3-8b")  # fmt: skip
    cost.add_argument("--target", type=Path, nargs="*", default=[], help="prepared targets to time as well")
    cost.add_argument("--method", nargs="+", help="default: vanilla, hf-generate and every head method (untrained)")
    cost.add_argument("--kernels", dest="backends", nargs="+", choices=["torch", "triton"], help="default: both on CUDA, torch on a CPU")
    cost.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    cost.add_argument("--dtype", choices=DTYPE_CHOICES, help="default: float16 on GPU, float32 on CPU")
    cost.add_argument("--prompts", type=int, default=3, help="random prompts per target (medians over them)")
    cost.add_argument("--prompt-tokens", type=int, default=256)
    cost.add_argument("--new-tokens", type=int, default=64, help="tokens per decode (no stop token)")
    cost.add_argument("--warmup-tokens", type=int, default=16, help="per method and backend, before timing")
    cost.add_argument("--seed", type=int, default=0)
    cost.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    cost.add_argument("--published", type=Path, default=Path("../shared/reference/clover2_published.csv"),
                      help="the paper's numbers (CSV): τ for the projected speedups")  # fmt: skip
    cost.add_argument("--profile", type=Path, help="also profile one decode per method and backend (torch.profiler): "
                      "DIR/TARGET-METHOD-KERNELS.trace.json (Chrome trace, phases labelled) and .ops.txt")  # fmt: skip
    cost.add_argument("--out", type=Path, help="write the rows and provenance (JSON) here")
    cost.set_defaults(func=_step_cost)

    pdf = verbs.add_parser("paper-pdf", help="build DIR/main.pdf with latexmk; fails on a LaTeX error, a missing figure, "
                           "an undefined reference or a table wider than the page")  # fmt: skip
    pdf.add_argument("directory", type=Path, help="a directory written by clover2 report --paper")
    pdf.set_defaults(func=_paper_pdf)

    select = verbs.add_parser("questions", help="write tasks' selected questions to files (the workflow's data stage)")
    select.add_argument("--task", nargs="+", required=True)
    select.add_argument("--limit", type=int, help="the first N questions of each task")
    select.add_argument("--out-dir", type=Path, required=True, help="writes DIR/<task>.jsonl for each task")
    select.set_defaults(func=_questions)

    tasks = verbs.add_parser("tasks", help="list the registered question sets")
    tasks.set_defaults(func=_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "kernels", None):
        os.environ["CLOVER2_KERNELS"] = args.kernels  # read by clover2.kernels.backend_for on every call
    try:
        return args.func(args) or 0
    except Clover2Error as error:
        print(f"clover2: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
