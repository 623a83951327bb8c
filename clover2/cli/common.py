"""What the verbs share: the device and dtype a command runs in, its settings and provenance, and
argument actions whose help lists the registered methods."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DTYPE_CHOICES = ["auto", "float32", "float16", "bfloat16"]  # auto: clover2.targets.resolve_dtype


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def target_from(args: argparse.Namespace):
    """The target on --device in --dtype; the dtype chosen, and why, land in the command's provenance."""
    from clover2.targets import load_target, resolve_dtype

    args.device = args.device or default_device()
    args.dtype, args.dtype_reason = resolve_dtype(args.dtype, args.device)
    if args.dtype_reason.startswith("auto: fell back"):
        print(f"warning: dtype {args.dtype_reason}", file=sys.stderr)
    return load_target(args.target, device=args.device, dtype=args.dtype)


def settings_of(args: argparse.Namespace) -> dict:
    """The command's arguments as a record stores them: JSON values, paths as text."""
    return json.loads(json.dumps({k: v for k, v in vars(args).items() if k != "func"}, default=str))


def provenance_of(args: argparse.Namespace, target) -> dict:
    """A decoding command's provenance: its settings, the target's identity, device and seed."""
    from clover2.provenance import provenance

    settings = settings_of(args)
    settings["target_identity"] = target.identity
    settings["chosen_trees"] = chosen_trees(getattr(args, "draft_option", None) or [])
    return provenance(settings, target.model.device, args.seed)


def chosen_trees(pairs: list[str]) -> dict[str, dict]:
    """What each tree file a --draft-option names (`[METHOD:]KEY=FILE.json`) holds: its tree (a static
    tree's paths, a dynamic tree's settings) and, for one clover2 choose-tree wrote, the prediction, so
    that a record says what it decoded with, not only where that was written."""
    from clover2.options import method_option

    trees = {}
    for pair in pairs:
        value = method_option(pair)[1].partition("=")[2]
        if value.endswith(".json"):
            chosen = json.loads(Path(value).read_text(encoding="utf-8"))
            trees[value] = {name: chosen[name] for name in ("paths", "drafting", "predicted") if name in chosen}
    return trees


class MethodChoices(argparse._AppendAction):
    """--method, whose help lists the registered methods: built only when help is shown, because
    the registries import torch and transformers (seconds that every other verb would pay)."""

    @property
    def help(self) -> str:
        from clover2.heads.protocol import head_methods
        from clover2.methods import METHODS

        return (f"a decoding method (repeatable: all decode the same questions in one process): {', '.join(METHODS)}; "
                f"with a trained head (--head): {', '.join(head_methods())}; NAME=METHOD decodes as METHOD with NAME in the records "
                f"(one head with two trees in one job)")

    @help.setter
    def help(self, value: str | None) -> None:
        pass


class HeadChoices(argparse._StoreAction):
    """train's --method, whose help lists the registered heads, built only when help is shown (as --method's)."""

    @property
    def help(self) -> str:
        from clover2.heads.protocol import head_methods

        return f"the head to train: {', '.join(head_methods())}"

    @help.setter
    def help(self, value: str | None) -> None:
        pass
