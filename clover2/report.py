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
from clover2.metrics import read_bench, summary, tree_size_curve
from clover2.quality import gsm8k_correct, humaneval_passed
from clover2.tasks import read_questions

TITLES = {
    "speed": "Tokens/s and speedup over plain decoding (ratio of means; 95 % bootstrap CI over questions)",
    "tau": "Mean accepted tokens per step, τ (extra tokens per step = τ − 1)",
    "depth": "Per-depth acceptance on the tree actually used (share of steps reaching depth k that accepted there)",
    "time_split": "Share of wall time per phase",
    "lossless": "Losslessness against plain decoding",
    "training": "Training cost of each head",
    "quality": "Answer quality at T = 0 (GSM8K exact match, HumanEval pass@1; sandboxed execution)",
    "published": "Published (Clover-2 paper) and reproduced numbers",
    "tree_size": "τ against tree size (drafted nodes per step) in the tree-size sweep, T = 0",
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


def quality_table(frame: pd.DataFrame, questions: Sequence[Path]) -> pd.DataFrame | None:
    """GSM8K accuracy and HumanEval pass@1 per method, from the T = 0 answers of the first repeat."""
    references = {(q.task, q.question_id): q.reference for path in questions for q in read_questions(path)}
    greedy = frame[(frame["temperature"] == 0) & (frame["repeat"] == 0)].drop_duplicates(["method", "task", "question_id"])
    rows = []
    for (method, task), group in greedy.groupby(["method", "task"]):
        scorer = SCORERS.get(QUALITY_TASKS.get(task, ""))
        if scorer is None:
            continue
        scores = [scorer(answers[0], references[task, qid]) for answers, qid in zip(group["answers"], group["question_id"])]
        rows.append({"method": method, "column": f"{QUALITY_TASKS[task]} ({task})", "score": f"{sum(scores)}/{len(scores)}"})
    if not rows:
        return None
    table = pd.DataFrame(rows).pivot_table(index="method", columns="column", values="score", aggfunc="first")
    table.columns.name = None
    return table


QUALITY_TASKS = {"gsm8k": "GSM8K accuracy", "gsm8k_full": "GSM8K accuracy", "math_reasoning": "GSM8K accuracy",
                 "humaneval": "HumanEval pass@1", "humaneval_full": "HumanEval pass@1"}  # fmt: skip
SCORERS = {
    "GSM8K accuracy": lambda answer, reference: gsm8k_correct(answer, _solution(reference)),
    "HumanEval pass@1": lambda answer, reference: humaneval_passed(answer, reference).passed,
}


def _solution(reference) -> str:
    """GSM8K references are the solution text; Spec-Bench's math_reasoning keeps it as a one-item list."""
    return reference[0] if isinstance(reference, list | tuple) else reference


def published_table(stats: pd.DataFrame, published: Path, target: str) -> pd.DataFrame:
    """The paper's cells beside ours: cell by cell with the difference for the paper's own targets,
    otherwise the paper's numbers (per published target) next to ours, each column naming its target."""
    paper = pd.read_csv(published).astype({"temperature": float})
    ours = stats[stats["method"].isin(paper["method"]) & stats["task"].isin(paper["task"])].set_index(["temperature", "method", "task"])
    keys = ["temperature", "method", "task"]
    metrics = ["tokens_per_s", "speedup", "extra_tokens_per_step"]
    if target in set(paper["target"]):
        mine = paper[paper["target"] == target].set_index(keys)[metrics]
        table = mine.join(ours[metrics].add_suffix(" (ours)"), how="left")
        for metric in metrics:
            table[f"{metric} diff"] = table[f"{metric} (ours)"] - table[metric]
        return table.round(2)
    columns = {f"{metric} [{name}, paper]": group.set_index(keys)[metric] for name, group in paper.groupby("target") for metric in metrics}
    columns |= {f"{metric} [{target}, ours]": ours[metric] for metric in metrics if metric in ours}
    return pd.DataFrame(columns).round(2)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise Clover2Error(f"{path}: cannot read ({error})") from None


def build_tables(
    bench: Sequence[Path],
    lossless: Sequence[Path] = (),
    heads: Sequence[Path] = (),
    baseline: str = "vanilla",
    questions: Sequence[Path] = (),
    published: Path | None = None,
    target: str = "",
    sweep: Sequence[Path] = (),
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Every table that the records given can fill, and the per-(method, task, T) summary behind them."""
    frame = read_bench(bench)
    stats = summary(frame, baseline)
    tables = {"speed": speed_table(stats), "tau": tau_table(stats), "depth": depth_table(stats), "time_split": time_split_table(stats)}
    if lossless:
        tables["lossless"] = lossless_table(lossless)
    if heads:
        tables["training"] = training_table(heads)
    quality = quality_table(frame, questions) if questions else None
    if quality is not None:
        tables["quality"] = quality
    if published is not None:
        tables["published"] = published_table(stats, published, target)
    if sweep:
        tables["tree_size"] = tree_size_curve(read_bench(sweep)).set_index(["method", "drafting"])
    return tables, stats


def _latex_text(text: str) -> str:
    return text.replace("%", r"\%").replace("τ", r"$\tau$").replace("−", "$-$")


def _labelled(table: pd.DataFrame) -> pd.DataFrame:
    """Index values as written: temperatures as 0 and 1, not 0.000000."""
    return table.rename(index=lambda value: f"{value:g}" if isinstance(value, float) else value)


def to_latex(name: str, table: pd.DataFrame) -> str:
    # A cell the run did not fill (say, a task the paper reports and this run skipped) shows a dash.
    body = _labelled(table).style.format(escape="latex", precision=2, na_rep="--")
    body = body.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    latex = body.to_latex(hrules=True, caption=_latex_text(TITLES[name]), label=f"tab:{name}", position="htbp")
    latex = latex.replace(r"\begin{tabular}", r"\resizebox{\linewidth}{!}{\begin{tabular}").replace(r"\end{tabular}", r"\end{tabular}}")
    return f"% {name}: regenerated by clover2 report from raw run records; do not edit\n{latex}"


def write_tables(tables: dict[str, pd.DataFrame], latex: Path, markdown: Path | None = None) -> None:
    """All tables into `latex` (booktabs) and `markdown`."""
    atomic_write_text(latex, "\n".join(to_latex(name, table) for name, table in tables.items()))
    if markdown:
        atomic_write_text(markdown, markdown_text(tables))


def markdown_text(tables: dict[str, pd.DataFrame]) -> str:
    return "\n\n".join(f"### {TITLES[name]}\n\n{_markdown(table)}" for name, table in tables.items()) + "\n"


def _markdown(table: pd.DataFrame) -> str:
    flat = _labelled(table).reset_index()
    labels = list(range(table.index.nlevels))  # written as labelled, not re-read as numbers by tabulate
    return flat.astype(object).where(flat.notna(), None).to_markdown(
        index=False, floatfmt=".2f", missingval="–", disable_numparse=labels
    )


PAPER_PREAMBLE = r"""\documentclass{article}
\usepackage[margin=2cm]{geometry}
\usepackage{booktabs,multirow,graphicx}
\title{clover2-bench: the Clover-2 paper's tables and figures, regenerated}
\date{}
\begin{document}
\maketitle
Every table and figure below is regenerated by \texttt{clover2 report} from the raw run records of
\texttt{%s}; nothing here is typed by hand.
"""


def write_paper(tables: dict[str, pd.DataFrame], stats: pd.DataFrame, directory: Path, source: str) -> Path:
    """paper/: tables/NAME.tex, tables.md (every table, for reading on the web), figures/NAME.{pdf,png}
    and a main.tex that includes them all."""
    from clover2.figures import write_figures

    directory = Path(directory)
    for name, table in tables.items():
        atomic_write_text(directory / "tables" / f"{name}.tex", to_latex(name, table))
    atomic_write_text(directory / "tables.md", markdown_text(tables))
    figures = write_figures(stats, directory / "figures", tables.get("tree_size"))
    body = [PAPER_PREAMBLE % source.replace("_", r"\_")]
    body += [f"\\input{{tables/{name}}}\n" for name in tables]
    body += [f"\\begin{{figure}}[htbp]\\centering\\includegraphics[width=\\linewidth]{{figures/{f.name}}}"
             f"\\caption{{{f.stem.replace('_', ' ')}}}\\end{{figure}}\n" for f in figures]  # fmt: skip
    body.append("\\end{document}\n")
    return atomic_write_text(directory / "main.tex", "\n".join(body))
