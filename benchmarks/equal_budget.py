"""Heads trained for the same minutes, told apart by one choice (training text, draft vocabulary, ...).

    python benchmarks/equal_budget.py --target results/smollm2-135m-instruct/target --minutes 5 \
        --variant sharegpt-8k results/smollm2-135m-instruct/teacher draft_vocab=8192 \
        --variant target-8k  /tmp/target-teacher                     draft_vocab=8192 \
        --work /tmp/equal-budget

Each variant is a label, a teacher cache (`clover2 cache-teacher`) and head options KEY=VALUE, or
training settings train.KEY=VALUE (`train.decay_steps=100000`: `clover2 train --decay-steps 100000`,
after the shared `--train-flags`). Every head is
trained by `clover2 train` for `--minutes` of wall time from its cache, then benched by `clover2 bench`
at T = 0 on the same Spec-Bench questions with plain decoding interleaved. The work directory keeps
heads and records, so an interrupted run resumes where it stopped. Prints a Markdown table: steps,
held-out loss and top-1 per depth (and the depth-1 positions they count), per task τ and speedup (ratio of mean tokens/s) with
their means, and each variant's mean per-question τ over the first variant's with a paired bootstrap CI.

A second training seed can move τ more than the choice a variant makes, and the CI covers the
questions only. `--seeds 0 1 2` trains every variant once per seed (train.seed, runs LABEL_seedS),
compares each run with the first variant's run of the same seed, and adds a row per variant over its
seeds: per-question τ averaged over the seeds, its ratio to the first variant's with the CI over
questions, and the lowest and highest ratio of a single seed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from clover2.reporting.metrics import bootstrap_ci, read_bench, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar="LABEL CACHE [KEY=VALUE | train.KEY=VALUE]")
    parser.add_argument("--method", default="clover2")
    parser.add_argument("--option", action="append", default=[], help="a head option KEY=VALUE for every variant")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--train-flags", default="--conversations 600 --heldout 16 --max-length 256 --batch-size 2 "
                        "--lr 1e-3 --warmup-steps 20 --schedule constant_with_warmup --eval-every 50")
    parser.add_argument("--tasks", nargs="+", default=["mt_bench", "qa", "summarization", "humaneval", "gsm8k"])
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", help="train every variant once per seed (default: once, at the train flags' seed)")
    args = parser.parse_args()
    rows, runs = [], {}  # runs: variant -> per seed, its per-question τ and its row
    for seed in args.seeds or [None]:  # seed by seed: an interrupted run has whole pairs to compare
        for label, cache, *options in args.variant:
            run = label if seed is None else f"{label}_seed{seed}"
            head = _train(args, run, cache, args.option + options + ([] if seed is None else [f"train.seed={seed}"]))
            frame = read_bench([_bench(args, run, head, task) for task in args.tasks])
            tau = _question_tau(frame.query("method == @args.method"))
            first = tau if label == args.variant[0][0] else runs[args.variant[0][0]][-1][0]  # its run of this seed
            rows.append({"variant": run, **_training(head), **_speed(frame, args.method), **_against(tau, first)})
            runs.setdefault(label, []).append((tau, rows[-1]))
            print(json.dumps(rows[-1]), flush=True)
    if args.seeds:
        rows += [_over_seeds(label, seeded, runs[args.variant[0][0]]) for label, seeded in runs.items()]
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".2f"))
    (args.work / "equal_budget.json").write_text(json.dumps({"rows": rows, "settings": vars(args) | {"work": str(args.work)}}, indent=2) + "\n")


def _train(args: argparse.Namespace, label: str, cache: str, options: list[str]) -> Path:
    out = args.work / "heads" / label
    if not out.is_dir():
        flags = [_train_flag(option) if option.startswith("train.") else f"--option={option}" for option in options]
        _run(["clover2", "train", "--target", args.target, "--method", args.method, "--out", str(out), "--teacher-cache", cache,
              "--minutes", str(args.minutes), "--threads", str(args.threads), *args.train_flags.split(), *flags])
    return out


def _train_flag(setting: str) -> str:
    """train.KEY=VALUE as clover2 train's --KEY=VALUE (underscores as dashes)."""
    key, _, value = setting.removeprefix("train.").partition("=")
    return f"--{key.replace('_', '-')}={value}"


def _bench(args: argparse.Namespace, label: str, head: Path, task: str) -> Path:
    out = args.work / "bench" / label / f"{task}.jsonl"
    if not out.is_file():
        _run(["clover2", "bench", "--target", args.target, "--method", args.method, "--head", f"{args.method}={head}",
              "--task", task, "--limit", str(args.questions), "--max-new-tokens", str(args.max_new_tokens),
              "--temperature", "0", "--baseline", "vanilla", "--warmup", "1", "--threads", str(args.threads), "--out", str(out)])
    return out


def _training(head: Path) -> dict:
    training = json.loads((head / "training.json").read_text())
    evals = [e for e in map(json.loads, (head / "train_log.jsonl").read_text().splitlines()) if "heldout" in e]
    last = evals[-1]["heldout"] if evals else {"loss": float("nan"), "positions": [0], "top1": []}
    depths = {f"top1 d{d}": value for d, value in enumerate(last["top1"][:3], start=1)}
    return {"steps": training["steps"], "held-out positions": last["positions"][0], "held-out loss": last["loss"], **depths}


def _speed(frame: pd.DataFrame, method: str) -> dict:
    rows = summary(frame).query("method == @method").set_index("task")
    speed = {f"{task} τ": rows.at[task, "tau"] for task in rows.index} | {f"{task} ×": rows.at[task, "speedup"] for task in rows.index}
    return speed | {"mean τ": float(rows["tau"].mean()), "mean ×": float(rows["speedup"].mean())}


def _question_tau(questions: pd.DataFrame) -> pd.Series:
    """τ of each question (its tokens over its steps), indexed by task and question."""
    return (questions["new_tokens"] / questions["steps"]).set_axis(pd.MultiIndex.from_frame(questions[["task", "question_id"]]))


def _against(mine: pd.Series, theirs: pd.Series) -> dict:
    """Mean per-question τ over the first variant's on the same questions, with its paired bootstrap CI:
    T = 0 decoding is deterministic, so only the choice of questions makes τ uncertain."""
    mine, theirs = mine.align(theirs, join="inner")
    low, high = bootstrap_ci(mine.to_numpy(), theirs.to_numpy())
    return {"questions": len(mine), "τ / first": float(mine.mean() / theirs.mean()), "CI low": low, "CI high": high}


def _over_seeds(label: str, seeded: list[tuple[pd.Series, dict]], firsts: list[tuple[pd.Series, dict]]) -> dict:
    """A variant over its seeds (per seed its per-question τ and row): per-question τ averaged over them
    against the first variant's, and the range of the single seeds' ratios (what the CI over questions
    does not cover)."""
    ratios = [row["τ / first"] for _, row in seeded]
    mean, first = (pd.concat([tau for tau, _ in runs], axis=1).mean(axis=1) for runs in (seeded, firsts))
    return {"variant": f"{label} (mean of {len(seeded)} seeds)", "mean τ": float(np.mean([row["mean τ"] for _, row in seeded])),
            **_against(mean, first), "seed low": float(np.min(ratios)), "seed high": float(np.max(ratios))}


def _run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
