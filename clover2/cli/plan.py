"""`clover2` verbs that choose a head's tree for this machine: acceptance, calibrate and choose-tree."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clover2.cli import common
from clover2.errors import Clover2Error
from clover2.options import key_values
from clover2.records import drafting_options


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    for add in (_add_acceptance, _add_calibrate, _add_choose_tree):
        add(verbs)


def _add_acceptance(verbs: argparse._SubParsersAction) -> None:
    acceptance = verbs.add_parser("acceptance", help="a trained head's acceptance profile p(depth, rank) on the teacher "
                                  "cache's held-out conversations (training writes one into the head directory)")
    acceptance.add_argument("--target", type=Path, required=True)
    acceptance.add_argument("--head", type=Path, required=True, help="a head directory")
    acceptance.add_argument("--method", help="draft as this method (one that shares the head's weights, e.g. eagle2 "
                            "with an eagle head); a head whose tree is dynamic gets its table of tree sizes")
    acceptance.add_argument("--draft-option", action="append", default=[], metavar="KEY=VALUE",
                            help="a drafting option of the method (e.g. top_k=4; repeatable)")
    acceptance.add_argument("--max-nodes", type=int, default=64, help="a dynamic tree's sizes: up to this many kept nodes")
    acceptance.add_argument("--teacher-cache", type=Path, required=True)
    acceptance.add_argument("--heldout", type=int, default=32, help="the cache's first conversations, as training kept apart")
    acceptance.add_argument("--positions", type=int, default=1024, help="at most this many positions drafted from")
    acceptance.add_argument("--out", type=Path, required=True)
    acceptance.add_argument("--threads", type=int)
    acceptance.add_argument("--device")
    acceptance.add_argument("--dtype", choices=common.DTYPE_CHOICES, default="float32")
    acceptance.set_defaults(func=_acceptance)


def _acceptance(args: argparse.Namespace) -> None:
    import torch

    from clover2.heads.acceptance import dynamic_acceptance, head_acceptance, save_acceptance
    from clover2.heads.directory import load_head
    from clover2.provenance import provenance
    from clover2.training.teacher import CachedTeacher

    if args.threads:
        torch.set_num_threads(args.threads)
    target = common.target_from(args)
    drafting = key_values(args.draft_option, "--draft-option")
    head = load_head(args.head, target.model, args.method, drafting).eval().to(target.model.device, target.model.dtype)
    teacher = CachedTeacher(args.teacher_cache, target)
    batches = (teacher.batch([example], target.model.device) for example in teacher.examples[: args.heldout])
    dtype = target.model.dtype
    states = (_in_dtype(batch, dtype) for batch in batches)
    profile = dynamic_acceptance(head, states, args.positions, nodes=args.max_nodes)
    if profile is None:
        profile = head_acceptance(head, states, args.positions)
    save_acceptance(profile, args.out, {"provenance": provenance(common.settings_of(args), target.model.device, 0)})
    document = profile.to_json()  # p(d, r) of a static profile, τ(D, N) of a dynamic tree's table
    print(json.dumps({key: document[key] for key in ("positions", "p", "tau") if key in document}))


def _in_dtype(batch, dtype):
    import dataclasses

    return dataclasses.replace(batch, u=batch.u.to(dtype), h=batch.h.to(dtype))


def _add_calibrate(verbs: argparse._SubParsersAction) -> None:
    calibrate = verbs.add_parser("calibrate", help="this machine's cost model: verify ms per token count, the plain "
                                 "step, and each head's draft and bookkeeping ms per tree depth and size")
    calibrate.add_argument("--target", type=Path, required=True)
    calibrate.add_argument("--head", action="append", default=[], metavar="NAME=DIR",
                           help="a trained head to time, under the name choose-tree asks for (repeatable)")
    calibrate.add_argument("--method", action="append", default=[], metavar="NAME=METHOD",
                           help="draft NAME's head as METHOD (one that shares its weights, e.g. eagle2=eagle's head)")
    calibrate.add_argument("--draft-option", action="append", default=[], metavar="NAME:KEY=VALUE",
                           help="a drafting option of NAME's method that the tree's size leaves alone (e.g. eagle2:top_k=4)")
    calibrate.add_argument("--prompt-tokens", type=int, default=300, help="as long as the benchmark's prompts")
    calibrate.add_argument("--max-tokens", type=int, default=64, help="verify costs for 1 ... this many tokens")
    calibrate.add_argument("--new-tokens", type=int, default=24, help="tokens per timed decode")
    calibrate.add_argument("--repeats", type=int, default=3)
    calibrate.add_argument("--threads", type=int)
    calibrate.add_argument("--device")
    calibrate.add_argument("--dtype", choices=common.DTYPE_CHOICES, default="auto")
    calibrate.add_argument("--out", type=Path, required=True)
    calibrate.set_defaults(func=_calibrate)


def _calibrate(args: argparse.Namespace) -> None:
    import torch

    from clover2.atomic import atomic_write_text
    from clover2.heads.directory import load_head
    from clover2.planning.costs import CostModel, Probes, draft_cost, plain_step_ms, verify_curve
    from clover2.provenance import provenance

    if args.threads:
        torch.set_num_threads(args.threads)
    heads = key_values(args.head, "--head")
    methods = key_values(args.method, "--method")
    drafting = {name: drafting_options(args.draft_option, name) for name in heads}
    target = common.target_from(args)
    model = target.model
    probes = Probes(new_tokens=args.new_tokens, repeats=args.repeats)
    costs = CostModel(verify_curve(model, args.prompt_tokens, range(1, args.max_tokens + 1), 2 * args.repeats),
                      plain_step_ms(model, args.prompt_tokens, args.new_tokens, args.repeats), prompt_tokens=args.prompt_tokens)
    for name, directory in heads.items():
        head = load_head(Path(directory), model, methods.get(name), drafting[name]).eval().to(model.device, model.dtype)
        costs.heads[name] = draft_cost(model, head, args.prompt_tokens, probes, desc=f"calibrate {name}")
    document = {**costs.to_json(), "provenance": provenance(common.settings_of(args), model.device, 0)}
    atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")
    print(f"verify ms: n=1 {costs.verify(1):.1f}, n=9 {costs.verify(min(9, args.max_tokens)):.1f}, "
          f"n={args.max_tokens} {costs.verify(args.max_tokens):.1f}; plain step {costs.plain_ms:.1f} ms")


def _add_choose_tree(verbs: argparse._SubParsersAction) -> None:
    choose = verbs.add_parser("choose-tree", help="the static tree with the most predicted tokens/s for a head on this "
                              "machine (or no drafting), from its acceptance profile and the cost model")
    choose.add_argument("--costs", type=Path, required=True, help="from clover2 calibrate")
    choose.add_argument("--head-name", required=True, help="the head's name in the cost model")
    choose.add_argument("--acceptance", type=Path, required=True, help="the head's acceptance.json")
    choose.add_argument("--max-nodes", type=int)
    choose.add_argument("--max-depth", type=int)
    choose.add_argument("--out", type=Path, required=True, help="the tree file (a head's tree option takes its path)")
    choose.set_defaults(func=_choose_tree)


def _choose_tree(args: argparse.Namespace) -> None:
    from clover2.atomic import atomic_write_text
    from clover2.heads.acceptance import load_acceptance
    from clover2.planning.costs import CostModel
    from clover2.planning.optimiser import choose

    try:
        costs = CostModel.from_json(json.loads(args.costs.read_text(encoding="utf-8")), str(args.costs))
    except (OSError, ValueError) as error:
        raise Clover2Error(f"{args.costs}: cannot read a cost model ({error})") from None
    choice, needed = choose(load_acceptance(args.acceptance), costs, args.head_name, args.max_nodes, args.max_depth)
    # A static tree's file gives its rank paths (the head's `tree` option reads them), a dynamic tree's its
    # settings (the head's planned options read theirs from `drafting`).
    tree = {"paths": choice.paths} if choice.paths is not None else {"drafting": choice.drafting}
    document = {**tree, "predicted": choice.to_json(), "needed_acceptance": needed,
                "inputs": {"costs": str(args.costs), "acceptance": str(args.acceptance), "head": args.head_name}}
    atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")
    verdict = "no drafting" if not choice.nodes else f"{choice.nodes} nodes, depth {choice.depth}"
    print(f"{args.head_name}: {verdict}; predicted τ {choice.tau:.2f}, {choice.tokens_per_second:.1f} tok/s, "
          f"{choice.speedup:.2f}× plain")
