"""What a verification costs: ms for one target forward over n new tokens, per dtype and thread count.

    python benchmarks/forward_cost.py --target results/smollm2-135m-instruct/target \
        --dtypes float32 bfloat16 --threads 2 1 --tokens 1 2 4 8 16 26

Each forward is the engine's own verification (`verify_forward`) of a chain of n tokens behind a
prefix of `--prefix` tokens held in the KV cache, which is cut back to the prefix after every
forward. The sizes take turns within each round, and the median of `--repeats` rounds (after one
warm-up round) is reported, with its ratio to n = 1 (a plain decoding step): how many plain steps a
tree of n - 1 drafted nodes costs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch
from transformers import DynamicCache

from clover2.engine.decoding import verify_forward
from clover2.engine.tree import DraftTree, TreeShape
from clover2.targets import DTYPES, load_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float32", "bfloat16"])
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    parser.add_argument("--tokens", nargs="+", type=int, default=[1, 2, 4, 8, 16, 26])
    parser.add_argument("--prefix", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for dtype in args.dtypes:
        model = load_target(args.target, dtype=dtype).model
        for threads in args.threads:
            torch.set_num_threads(threads)
            cost = _median_ms(model, args.prefix, args.tokens, args.repeats)
            rows.append({"dtype": dtype, "threads": threads,
                         **{f"n = {n}": f"{ms:.1f} ({ms / cost[args.tokens[0]]:.2f}×)" for n, ms in cost.items()}})
            print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_markdown(index=False))


@torch.inference_mode()
def _median_ms(model, prefix: int, sizes: list[int], repeats: int) -> dict[int, float]:
    """Median ms per forward for each size; the sizes take turns within every repeat, so drift hits all alike."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, model.config.vocab_size, (1, prefix), generator=generator)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    trees = {n: DraftTree(torch.randint(100, model.config.vocab_size, (n,), generator=generator), TreeShape.chain(n - 1), torch.zeros(n))
             for n in sizes}
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(repeats + 1):  # the first round warms up
        for n, tree in trees.items():
            start = time.perf_counter()
            verify_forward(model, cache, tree)
            times[n].append(1000 * (time.perf_counter() - start))
            cache.crop(-n)  # transformers 5.24: a negative count removes that many entries
    return {n: statistics.median(values[1:]) for n, values in times.items()}


if __name__ == "__main__":
    main()
