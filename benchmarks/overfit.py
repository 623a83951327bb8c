"""Can a head learn at all? Each head overfits a dozen conversations, from each layer initialisation.

    python benchmarks/overfit.py --target results/targets/smollm2-135m-instruct --threads 2

The conversations are the target's own greedy answers to the first user turns of ShareGPT, so a
head that can learn should come to predict them: the teacher signals are computed once, every head
trains with AdamW (lr 1e-3, batches of 2 conversations, cycling) on exactly this text, and top-1
(the head's first prediction against the target's argmax) is measured on the same text. Prints a
Markdown table (top-1 at each checkpoint step, loss at the last) and writes it as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from clover2.heads.draft_vocab import frequent_tokens
from clover2.heads.protocol import head_class
from clover2.options import key_values
from clover2.sources import data_file
from clover2.targets import load_target
from clover2.training.sharegpt import SHAREGPT_FILE, Example, collate
from clover2.training.target_answers import first_user_turns, target_answers
from clover2.training.teacher import pad_id, teacher_batch

LAYERED = {"clover2", "clover", "eagle"}  # heads with decoder layers, so with a layer initialisation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--methods", nargs="+", default=["clover2", "clover", "eagle", "medusa"])
    parser.add_argument("--inits", nargs="+", default=["copy", "random"], help="layer_init values to compare")
    parser.add_argument("--option", action="append", help="a head option KEY=VALUE for every head (e.g. draft_vocab=8192)")
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 100, 150], help="measure top-1 at these steps")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target = load_target(args.target)
    examples = target_answers(target, first_user_turns(data_file(SHAREGPT_FILE), args.conversations), args.max_new_tokens, 512)
    batches = [_teacher(target, examples[i : i + args.batch_size]) for i in range(0, len(examples), args.batch_size)]
    options = key_values(args.option)
    rows = []
    for method in args.methods:
        for init in args.inits if method in LAYERED else ["none"]:
            extra = {} if init == "none" else {"layer_init": init}
            rows.append({"method": method, "layer_init": init, **_overfit(target.model, method, options | extra, batches, args)})
            print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".2f"))
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "settings": vars(args) | {"out": str(args.out)}}, indent=2) + "\n")


def _teacher(target, items):
    ids, loss_mask, attention = collate(items, pad_id(target))
    return teacher_batch(target.model, ids, loss_mask, attention)


def _overfit(model, method: str, options: dict, batches: list, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    size = options.get("draft_vocab")
    vocab_ids = None if size is None else frequent_tokens(_examples_of(batches), size, model.config.vocab_size, [])
    head = head_class(method)(model, vocab_ids=vocab_ids, **options).float()
    optimiser = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=args.lr)
    result, started = {}, time.monotonic()
    for step in range(1, max(args.steps) + 1):
        loss = head(batches[(step - 1) % len(batches)])
        optimiser.zero_grad()
        loss.total.backward()
        optimiser.step()
        if step in args.steps:
            result[f"top1@{step}"] = _top1(head, batches)
    result["loss"] = float(loss.total)
    result["s_per_step"] = round((time.monotonic() - started) / max(args.steps), 2)
    return result


def _examples_of(batches: list) -> list[Example]:
    return [Example(ids.tolist(), mask.tolist()) for b in batches for ids, mask in zip(b.input_ids, b.loss_mask)]


@torch.no_grad()
def _top1(head, batches) -> float:
    head.eval()
    results = [head(batch) for batch in batches]
    head.train()
    return sum(r.top1[0] for r in results) / max(sum(r.counted[0] for r in results), 1)


if __name__ == "__main__":
    main()
