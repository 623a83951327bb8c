"""Tables from raw run records: bench files, losslessness reports and trained head directories.

Each table is a DataFrame; `write_tables` renders all of them as booktabs LaTeX (one file, and one
file per table when asked) and as Markdown for the README.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from safetensors import safe_open

from clover2.atomic import atomic_write_text
from clover2.errors import Clover2Error
from clover2.metrics import read_bench, summary

TITLES = {
    "speed": "Tokens/s and speedup over plain decoding (ratio of means; 95 % bootstrap CI over questions)",
    "tau": "Mean accepted tokens per step, τ (extra tokens per step = τ − 1)",
    "depth": "Per-depth acceptance on the tree actually used (share of steps reaching depth k that accepted there)",
    "time_split": "Share of wall time per phase",
    "lossless": "Losslessness against plain decoding",
    "training": "Training cost of each head",
}


def speed_table(stats: pd.DataFrame) -> pd.DataFrame:
    cells = stats.apply(_speed_cell, axis=1)
    return _by_task(stats.assign(cell=cells), "cell")


def _speed_cell(row: pd.Series) -> str:
    if pd.isna(row.get("speedup")):
        return f"{row['tokens_per_s']:.1f}"
    ci = "" if pd.isna(row["speedup_ci_low"]) else f" [{row['speedup_ci_low']:.2f}, {row['speedup_ci_high']:.2f}]"
    return f"{row['tokens_per_s']:.1f} ({row['speedup']:.2f}x{ci})"


def tau_table(stats: pd.DataFrame) -> pd.DataFrame:
    return _by_task(stats.assign(cell=stats["tau"].map("{:.2f}".format)), "cell")


def _by_task(stats: pd.DataFrame, column: str) -> pd.DataFrame:
    table = stats.pivot_table(index=["temperature", "method"], columns="task", values=column, aggfunc="first")
    table.columns.name = None
    return table


def depth_table(stats: pd.DataFrame) -> pd.DataFrame:
    rows = stats[stats["depth_acceptance"].map(len) > 0]
    pooled = rows.groupby(["temperature", "method"])["depth_acceptance"].agg(_mean_curve)
    width = max((len(curve) for curve in pooled), default=0)
    return pd.DataFrame(
        [[f"{v:.2f}" for v in curve] + [""] * (width - len(curve)) for curve in pooled],
        index=pooled.index, columns=[f"depth {k}" for k in range(1, width + 1)],
    )  # fmt: skip


def _mean_curve(curves: pd.Series) -> list[float]:
    """Task curves averaged depth by depth (over the tasks that reached each depth)."""
    width = max(len(c) for c in curves)
    return [float(pd.Series([c[k] for c in curves if len(c) > k]).mean()) for k in range(width)]


def time_split_table(stats: pd.DataFrame) -> pd.DataFrame:
    shares = [c for c in stats.columns if c.endswith("_share")]
    table = stats.groupby(["temperature", "method"])[shares].mean().map("{:.1%}".format)
    table.columns = [c.removesuffix("_share") for c in shares]
    return table


def lossless_table(paths: Sequence[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        document = _read_json(path)
        report, config = document["report"], document["provenance"]["config"]
        if "turns_checked" in report:
            check = f"{report['turns_identical']}/{report['turns_checked']} turns identical"
        else:
            check = f"chi2 p = {report['p_value']:.3f} ({report['samples']} samples)"
        rows.append({"method": config["method"], "task": config["task"], "temperature": float(config["temperature"]),
                     "check": check, "result": "pass" if report["passed"] else "FAIL"})  # fmt: skip
    return pd.DataFrame(rows).sort_values(["temperature", "method", "task"]).set_index(["temperature", "method", "task"])


def training_table(head_dirs: Sequence[Path]) -> pd.DataFrame:
    rows = []
    for directory in head_dirs:
        directory = Path(directory)
        training, head = _read_json(directory / "training.json"), _read_json(directory / "head.json")
        log = [json.loads(line) for line in (directory / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
        last = next(r["heldout"] for r in reversed(log) if "heldout" in r)
        rows.append({"head": head["method"], "steps": training["steps"], "minutes": round(training["seconds"] / 60, 1),
                     "trainable_params": _parameter_count(directory / "head.safetensors"),
                     "heldout_top1": " / ".join(f"{v:.2f}" for v in last["top1"])})  # fmt: skip
    return pd.DataFrame(rows).set_index("head")


def _parameter_count(path: Path) -> int:
    with safe_open(str(path), "pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise Clover2Error(f"{path}: cannot read ({error})") from None


def build_tables(bench: Sequence[Path], lossless: Sequence[Path] = (), heads: Sequence[Path] = (), baseline: str = "vanilla") -> dict[str, pd.DataFrame]:
    stats = summary(read_bench(bench), baseline)
    tables = {"speed": speed_table(stats), "tau": tau_table(stats), "depth": depth_table(stats), "time_split": time_split_table(stats)}
    if lossless:
        tables["lossless"] = lossless_table(lossless)
    if heads:
        tables["training"] = training_table(heads)
    return tables


def to_latex(name: str, table: pd.DataFrame) -> str:
    body = table.style.format(escape="latex").format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    latex = body.to_latex(hrules=True, caption=TITLES[name].replace("%", r"\%"), label=f"tab:{name}", position="htbp")
    return f"% {name}: regenerated by clover2 report from raw run records; do not edit\n{latex}"


def write_tables(tables: dict[str, pd.DataFrame], latex: Path, markdown: Path | None = None, per_table: Path | None = None) -> None:
    """All tables into `latex` (and `markdown`); with `per_table`, also one NAME.tex each there."""
    atomic_write_text(latex, "\n".join(to_latex(name, table) for name, table in tables.items()))
    if markdown:
        atomic_write_text(markdown, "\n\n".join(f"### {TITLES[name]}\n\n{table.to_markdown()}" for name, table in tables.items()) + "\n")
    if per_table:
        for name, table in tables.items():
            atomic_write_text(Path(per_table) / f"{name}.tex", to_latex(name, table))
