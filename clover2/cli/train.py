"""`clover2` verbs that train heads: train, and cache-teacher for the signals it learns from."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from clover2.cli import common
from clover2.errors import Clover2Error
from clover2.options import key_values


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    for add in (_add_train, _add_cache_teacher):
        add(verbs)


def _add_train(verbs: argparse._SubParsersAction) -> None:
    training = verbs.add_parser("train", help="train a draft head by distillation from the target on ShareGPT")
    training.add_argument("--target", type=Path, required=True)
    training.add_argument("--method", required=True, action=common.HeadChoices)
    training.add_argument("--out", type=Path, required=True, help="the head directory to write")
    training.add_argument("--config", type=Path, help="YAML of training settings (see clover2/training/loop.py TrainConfig)")
    training.add_argument("--data", type=Path, help="ShareGPT JSONL(.gz); default: the data mirror's sharegpt file")
    training.add_argument("--option", action="append", help="a head option KEY=VALUE (repeatable), e.g. tree=...")
    for name, kind in (("conversations", int), ("heldout", int), ("max-length", int), ("batch-size", int),
                       ("epochs", int), ("max-steps", int), ("minutes", float), ("lr", float),
                       ("warmup-steps", int), ("schedule", str), ("decay-steps", int), ("eval-every", int), ("checkpoint-every", int), ("seed", int)):
        training.add_argument(f"--{name}", type=kind)
    training.add_argument("--teacher-cache", help="train from a clover2 cache-teacher directory instead of running the target")
    training.add_argument("--threads", type=int)
    training.add_argument("--device")
    training.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> None:
    import dataclasses

    import yaml

    from clover2.targets import load_target
    from clover2.training.loop import TrainConfig, train

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
    settings["options"] = {**settings.get("options", {}), **key_values(args.option)}
    if "betas" in settings:
        settings["betas"] = tuple(settings["betas"])
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    data = None if settings.get("teacher_cache") else _training_data(args)
    device, rank = args.device or common.default_device(), os.environ.get("LOCAL_RANK")
    if rank is not None and device == "cuda":  # under accelerate launch: one GPU per process
        device = f"cuda:{rank}"
    if rank not in (None, "0"):  # and one set of loading bars, the first process's
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    target = load_target(args.target, device=device)
    train(target, data, args.out, TrainConfig(**settings))


def _add_cache_teacher(verbs: argparse._SubParsersAction) -> None:
    cache = verbs.add_parser("cache-teacher", help="store the target's u, h (fp16) and top-k logits for training (large!)")
    cache.add_argument("--target", type=Path, required=True)
    cache.add_argument("--data", type=Path, help="ShareGPT JSONL(.gz) or JSON array; default: the data mirror's file")
    cache.add_argument("--out", type=Path, required=True)
    cache.add_argument("--conversations", type=int, default=68000)
    cache.add_argument("--max-length", type=int, default=2048)
    cache.add_argument("--top-k", type=int, default=64, help="teacher logits kept per position")
    cache.add_argument("--batch-size", type=int, default=4)
    cache.add_argument("--answers", choices=["sharegpt", "target"], default="sharegpt",
                       help="the assistant text: ShareGPT's, or the target's own answers to each first user turn")
    cache.add_argument("--answer-tokens", type=int, default=256, help="--answers target: new tokens per answer at most")
    cache.add_argument("--answer-temperature", type=float, default=0.0, help="--answers target: 0 greedy, > 0 sampled")
    cache.add_argument("--threads", type=int)
    cache.add_argument("--device")
    cache.add_argument("--dtype", choices=common.DTYPE_CHOICES,
                       help="the target's, as bench runs it (default: float16 on GPU, float32 on CPU)")
    cache.set_defaults(func=_cache_teacher)


def _cache_teacher(args: argparse.Namespace) -> None:
    import torch

    from clover2.training.sharegpt import load_examples
    from clover2.training.target_answers import first_user_turns, target_answers
    from clover2.training.teacher import write_teacher_cache

    if args.top_k < 1 or args.conversations < 1:
        raise Clover2Error("cache-teacher: --top-k and --conversations must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = _training_data(args)
    target = common.target_from(args)
    if args.answers == "target":
        prompts = first_user_turns(data, args.conversations)
        examples = target_answers(target, prompts, args.answer_tokens, args.max_length, args.answer_temperature, args.batch_size)
        answers = {"answers": "target", "answer_tokens": args.answer_tokens, "answer_temperature": args.answer_temperature}
    else:
        examples = load_examples(target.tokenizer, data, args.conversations, args.max_length)
        answers = {"answers": "sharegpt"}
    out = write_teacher_cache(target, examples, args.out, args.top_k, args.batch_size, answers | {"data": str(data), "dtype": args.dtype})
    print(f"teacher cache ready: {out}")


def _training_data(args: argparse.Namespace) -> Path:
    from clover2.sources import data_file
    from clover2.training.sharegpt import SHAREGPT_FILE

    data = args.data or data_file(SHAREGPT_FILE)
    if not Path(data).is_file():
        raise Clover2Error(f"training data not found: {data}")
    return Path(data)
