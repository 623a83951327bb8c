"""`clover2 <verb>`: the command line every workflow rule calls; usable without Snakemake."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from clover2.errors import Clover2Error


def _prepare_target(args: argparse.Namespace) -> None:
    from clover2.targets import prepare_target

    started = time.perf_counter()
    out = prepare_target(args.name, args.out, chat_template=args.chat_template)
    print(f"target ready: {out} ({time.perf_counter() - started:.1f} s)")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _bench(args: argparse.Namespace) -> None:
    import torch

    from clover2 import bench
    from clover2.decoding import DecodeConfig
    from clover2.methods import get_method
    from clover2.provenance import provenance
    from clover2.targets import load_target
    from clover2.tasks import load_questions

    if args.threads:
        torch.set_num_threads(args.threads)
    decode = get_method(args.method)
    questions = load_questions(args.task, limit=args.limit, ids=args.ids)
    device = args.device or _default_device()
    dtype = args.dtype or ("float16" if device.startswith("cuda") else "float32")
    target = load_target(args.target, device=device, dtype=dtype)
    try:
        config = DecodeConfig(
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            max_length=args.max_length,
            seed=args.seed,
        )
    except ValueError as error:
        raise Clover2Error(f"bench: {error}") from None
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    settings.pop("func")
    settings.update(device=device, dtype=dtype, target_identity=target.identity)
    record = provenance(settings, target.model.device, args.seed)
    rows = bench.run(target, args.method, decode, questions, config, record, warmup=args.warmup)
    count = bench.write_jsonl(args.out, rows)
    print(f"{count} questions -> {args.out}")


def _tasks(args: argparse.Namespace) -> None:
    from clover2.tasks import load_questions, task_names

    for name in task_names():
        questions = load_questions(name)
        turns = sorted({len(q.turns) for q in questions})
        print(f"{name:16s} {len(questions):5d} questions, turns {turns}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clover2", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    prepare = verbs.add_parser("prepare-target", help="materialise a target LLM as a Hugging Face directory")
    prepare.add_argument("name", help="an embedded target (smollm2-135m-instruct), a hub id, a local directory or a .gguf file")
    prepare.add_argument("--out", type=Path, required=True)
    prepare.add_argument("--chat-template", help="a registered chat template to install (e.g. vicuna_v1.1)")
    prepare.set_defaults(func=_prepare_target)

    run = verbs.add_parser("bench", help="decode a task's questions with one method; one JSON line per question")
    run.add_argument("--target", type=Path, required=True, help="a directory made by prepare-target")
    run.add_argument("--method", required=True)
    run.add_argument("--task", required=True)
    run.add_argument("--temperature", type=float, default=0.0)
    run.add_argument("--limit", type=int, help="the first N questions of the task")
    run.add_argument("--ids", nargs="+", help="only these question ids")
    run.add_argument("--max-new-tokens", type=int, default=1024)
    run.add_argument("--max-length", type=int, default=1960, help="prompt + new tokens per turn")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--warmup", type=int, default=3, help="warm-up generations excluded from the records")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    run.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: float16 on GPU, float32 on CPU")
    run.add_argument("--out", type=Path, required=True)
    run.set_defaults(func=_bench)

    tasks = verbs.add_parser("tasks", help="list the registered question sets")
    tasks.set_defaults(func=_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except Clover2Error as error:
        print(f"clover2: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
