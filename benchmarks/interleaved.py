"""Several decoding methods on the same questions, interleaved in one run, so their ratios are fair.

    python benchmarks/interleaved.py --target results/targets/smollm2-135m-instruct \
        --methods vanilla hf-generate --tasks mt_bench translation summarization qa math_reasoning rag \
        --per-task 2 --max-new-tokens 128 --threads 2 --rounds 2 [--dtype bfloat16]

Trained heads: `--methods vanilla clover2=results/heads/clover2 eagle2=results/heads/eagle`.

For every question (first turn) and round, every method decodes it once, in an order that rotates
from round to round. Reported per method: median tokens/s, tau, the share of time in prefill /
draft / verify / bookkeeping, tau per task, and the median per-question speed ratio against the
first method, and how many runs did not give identical greedy outputs across methods (all are
lossless, so this should be 0).
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from clover2.chat import prompt_ids
from clover2.engine.decoding import PHASES, DecodeConfig
from clover2.methods import method_factory
from clover2.targets import DTYPES, load_target
from clover2.tasks import load_questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--methods", nargs="+", required=True, help="METHOD, or METHOD=HEAD_DIR for a trained head")
    parser.add_argument("--tasks", nargs="+", default=["mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"])
    parser.add_argument("--per-task", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="the target's (every method's) dtype")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    target = load_target(args.target, dtype=args.dtype)
    decoders = {}
    for entry in args.methods:
        name, _, head = entry.partition("=")
        decoders[name] = method_factory(name, Path(head) if head else None)(target.model)
    questions = [q for task in args.tasks for q in load_questions(task, limit=args.per_task)]
    prompts = [(q.task, prompt_ids(target.tokenizer, q.turns[:1], [])) for q in questions]
    config = DecodeConfig(max_new_tokens=args.max_new_tokens)
    for decode in decoders.values():  # warm-up, excluded
        decode(target.model, prompts[0][1], DecodeConfig(max_new_tokens=16), target.stop_token_ids, None)

    speed: dict[str, list[float]] = defaultdict(list)
    ratio: dict[str, list[float]] = defaultdict(list)
    tokens: dict[str, int] = defaultdict(int)
    steps: dict[str, int] = defaultdict(int)
    seconds: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(PHASES, 0.0))
    task_counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    names = list(decoders)
    differing = 0  # runs whose greedy outputs were not identical across methods (should stay 0)
    for round_index in range(args.rounds):
        for index, (task, prompt) in enumerate(prompts):
            shift = (round_index + index) % len(names)
            outputs = {}
            for name in names[shift:] + names[:shift]:
                record = decoders[name](target.model, prompt, config, target.stop_token_ids, None)
                outputs[name] = record.tokens
                speed[name].append(record.new_tokens / record.wall_seconds)
                tokens[name] += record.new_tokens
                steps[name] += record.steps
                for phase in PHASES:
                    seconds[name][phase] += record.seconds[phase]
                task_counts[name, task][0] += record.new_tokens
                task_counts[name, task][1] += record.steps
            differing += any(out != outputs[names[0]] for out in outputs.values())
            for name in names:
                ratio[name].append(speed[name][-1] / speed[names[0]][-1])

    print(
        f"threads={torch.get_num_threads()} questions={len(prompts)} rounds={args.rounds} "
        f"max_new_tokens={args.max_new_tokens} runs with differing greedy outputs: {differing}"
    )
    print(f"{'method':20s} {'tok/s':>7s} {'tau':>5s} {'vs ' + names[0]:>12s}  " + " ".join(f"{p:>11s}" for p in PHASES))
    for name in names:
        total = sum(seconds[name].values())
        split = " ".join(f"{100 * seconds[name][p] / total:10.1f}%" for p in PHASES)
        print(
            f"{name:20s} {statistics.median(speed[name]):7.2f} {tokens[name] / steps[name]:5.2f} "
            f"{statistics.median(ratio[name]):11.3f}x  {split}"
        )
    print("tau per task: " + ", ".join(args.tasks))
    for name in names:
        taus = [task_counts[name, task][0] / task_counts[name, task][1] for task in args.tasks]
        print(f"{name:20s} " + " ".join(f"{tau:6.2f}" for tau in taus))


if __name__ == "__main__":
    main()
