"""What a verification costs: ms for one target forward over n new tokens, per dtype and thread count.

    python benchmarks/forward_cost.py --target results/smollm2-135m-instruct/target \
        --dtypes float32 bfloat16 --threads 2 1 --tokens 1 2 4 8 16 26

Each forward is the engine's own verification (`verify_forward`) of a chain of n tokens behind a
prefix of `--prefix` tokens held in the KV cache, timed as `clover2 calibrate` times it
(`clover2.planning.costs.verify_curve`: the sizes take turns within each round, the median of
`--repeats` rounds after one warm-up round), with its ratio to n = 1 (a plain decoding step): how
many plain steps a tree of n - 1 drafted nodes costs.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from clover2.planning.costs import verify_curve
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
            cost = verify_curve(model, args.prefix, args.tokens, args.repeats)
            rows.append({"dtype": dtype, "threads": threads,
                         **{f"n = {n}": f"{ms:.1f} ({ms / cost[args.tokens[0]]:.2f}×)" for n, ms in cost.items()}})
            print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
