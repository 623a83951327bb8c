"""`clover2 <verb>`: the command line every workflow rule calls; usable without Snakemake.

One module per verb group, each verb's parser beside its handler: `data` (prepare-target,
questions, tasks), `decode` (bench, check-lossless), `train` (train, cache-teacher), `measure`
(kernels-bench, step-cost), `plan` (acceptance,
calibrate, choose-tree), `report` (report, paper-pdf, stage-times).
"""

from __future__ import annotations

import argparse
import sys

from clover2.cli import data, decode, measure, plan, report, train
from clover2.errors import Clover2Error

GROUPS = (data, decode, train, measure, plan, report)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clover2", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    for group in GROUPS:
        group.add_verbs(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except Clover2Error as error:
        print(f"clover2: error: {error}", file=sys.stderr)
        return 2
