"""The paper's figures, regenerated from the per-(method, task, temperature) summary (seaborn; PDF and PNG)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on the machines that run the workflow

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from clover2.atomic import atomic_write_bytes  # noqa: E402


def legend_beside(axes) -> None:
    """The legend right of the axes, out of the data's way: these figures have up to ten series and
    no corner free of points."""
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")


def extra_tokens_figure(stats: pd.DataFrame):
    """The Clover-2 paper's bar chart: extra tokens per step (τ − 1) per task and method, T = 0."""
    data = stats[(stats["temperature"] == 0) & stats["speedup"].notna()]  # the baseline has no speedup
    axes = sns.barplot(data=data, x="task", y="extra_tokens_per_step", hue="method", order=sorted(data["task"].unique()))
    axes.set(xlabel="", ylabel="extra tokens per step (τ − 1)", title="Extra tokens per step, T = 0")
    return axes.figure


def speedup_figure(stats: pd.DataFrame):
    """Speedup over plain decoding per task, with the 95 % bootstrap interval over questions."""
    data = stats.dropna(subset=["speedup"])
    temperatures, tasks, methods = (sorted(data[c].unique()) for c in ("temperature", "task", "method"))
    figure, panels = plt.subplots(1, len(temperatures), sharey=True, squeeze=False)
    width = 0.8 / len(methods)
    for axes, temperature in zip(panels[0], temperatures):
        for index, method in enumerate(methods):
            part = data[(data["temperature"] == temperature) & (data["method"] == method)].set_index("task").reindex(tasks)
            x = np.arange(len(tasks)) + (index - (len(methods) - 1) / 2) * width
            spread = [(part["speedup"] - part["speedup_ci_low"]).fillna(0), (part["speedup_ci_high"] - part["speedup"]).fillna(0)]
            axes.errorbar(x, part["speedup"], yerr=spread, fmt="o", capsize=2, label=method)
        axes.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
        axes.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
        axes.set_title(f"T = {temperature:g}")
    panels[0][0].set_ylabel("speedup over plain decoding")
    legend_beside(panels[0][-1])
    return figure


def depth_figure(stats: pd.DataFrame):
    """Per-depth acceptance: of the steps whose path reached depth k, the share accepted there (T = 0)."""
    rows = [{"method": r["method"], "task": r["task"], "depth": k + 1, "acceptance": v}
            for _, r in stats[stats["temperature"] == 0].iterrows() for k, v in enumerate(r["depth_acceptance"])]
    data = pd.DataFrame(rows, columns=["method", "task", "depth", "acceptance"])
    axes = sns.lineplot(data=data, x="depth", y="acceptance", hue="method", marker="o", seed=0)  # seeded CI band
    axes.set(ylim=(0, 1), title="Per-depth acceptance, T = 0 (mean over tasks)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # depths are whole levels
    return axes.figure


def time_split_figure(stats: pd.DataFrame):
    """Where the wall time goes, per method (T = 0, mean over tasks); None without exact phase times."""
    shares = [c for c in stats.columns if c.endswith("_share")]
    exact = stats[stats["temperature"] == 0].dropna(subset=shares, how="all")
    if exact.empty:  # no phase was timed exactly (timing "turn" on a GPU)
        return None
    table = exact.groupby("method")[shares].mean().rename(columns=lambda c: c.removesuffix("_share"))
    axes = table.plot.barh(stacked=True)
    axes.set(xlabel="share of wall time", ylabel="", title="Time per phase, T = 0")
    legend_beside(axes)
    return axes.figure


def tree_size_figure(curve: pd.DataFrame):
    """τ against tree size, one line per method, from the tree-size sweep."""
    axes = sns.lineplot(data=curve.reset_index(), x="tree_size", y="tau", hue="method", marker="o")
    axes.set(xlabel="drafted nodes per step (tree size)", ylabel="τ", title="τ against tree size, T = 0")
    return axes.figure


def verify_cost_figure(cost: pd.DataFrame):
    """Milliseconds per verification against the tokens verified, one line per method, beside a plain step."""
    data = cost.reset_index()
    axes = sns.lineplot(data=data, x="tokens", y="ms_per_verify", hue="method", marker="o", estimator=None)  # every run a point
    plain = data.loc[data["tokens"] == 1, "ms_per_verify"]
    if len(plain):  # the runs that verify the root alone: plain decoding
        axes.axhline(plain.mean(), color="black", linewidth=0.8, linestyle=":", label="one-token step")
    legend_beside(axes)
    axes.set(xlabel="tokens per verification (drafted nodes + root)", ylabel="ms per verification", ylim=(0, None),
             title="Verification cost against tree size")
    return axes.figure


def learning_curve_figure(curve: pd.DataFrame):
    """Held-out top-1 of each head's first prediction against training minutes, one line per head, and
    beside it the predicted τ of each head's chosen tree where the run chose trees."""
    data = curve.reset_index()
    tree_tau = "τ chosen tree" in data and data["τ chosen tree"].notna().any()
    figure, panels = plt.subplots(1, 2 if tree_tau else 1, squeeze=False)
    sns.lineplot(data=data, x="minutes", y="depth 1", hue="head", marker="o", ax=panels[0][0])
    panels[0][0].set(xlabel="training minutes", ylabel="held-out top-1, depth 1", ylim=(0, 1), title="Learning curves")
    if tree_tau:
        sns.lineplot(data=data, x="minutes", y="τ chosen tree", hue="head", marker="o", ax=panels[0][1])
        panels[0][1].set(xlabel="training minutes", ylabel="predicted τ", title="τ of the chosen tree, predicted")
    return figure


FIGURES = {
    "extra_tokens_per_step": extra_tokens_figure,
    "speedup": speedup_figure,
    "depth_acceptance": depth_figure,
    "time_split": time_split_figure,
}


def ablation_figure(table: pd.DataFrame):
    """Per ablation variant: τ over all tasks, and the speedup with its 95 % CI, the full method on top."""
    figure, (left, right) = plt.subplots(1, 2, sharey=True)
    rows = table.iloc[::-1]  # the table's changes column says what each variant changes
    labels = list(rows.index)
    left.barh(labels, rows["τ"], color="tab:blue")
    left.set(xlabel="τ", title="τ at T = 0")
    errors = [(rows["speedup"] - rows["CI low"]).fillna(0), (rows["CI high"] - rows["speedup"]).fillna(0)]
    right.barh(labels, rows["speedup"], xerr=errors, color="tab:orange", capsize=3)
    right.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    right.set(xlabel="× plain decoding", title="speedup at T = 0 (95 % CI)")
    return figure


# Figures of a table that only some records give (a sweep ran; steps with tree sizes): table -> (figure, drawing).
TABLE_FIGURES = {
    "tree_size": ("tau_vs_tree_size", tree_size_figure),
    "verify_cost": ("verify_cost_vs_tree_size", verify_cost_figure),
    "learning_curve": ("learning_curve", learning_curve_figure),
    "ablation": ("ablation", ablation_figure),
}


# What each figure shows, for its caption in the paper (which adds the dtype and machine of the runs).
CAPTIONS = {
    "extra_tokens_per_step": "Extra tokens per step (τ − 1) per task and method at T = 0, as the Clover-2 paper plots them",
    "speedup": "Speedup over plain decoding per task and method, with its 95 % bootstrap interval over questions, per temperature",
    "depth_acceptance": "Per-depth acceptance at T = 0: of the steps whose path reached depth k, the share accepted there "
                        "(mean over tasks, with its 95 % interval)",
    "time_split": "Share of the wall time per phase (prefill, draft, verify, bookkeeping) per method at T = 0, mean over tasks",
    "tau_vs_tree_size": "τ against the drafted tree's size (nodes per step) in the tree-size sweep, T = 0",
    "verify_cost_vs_tree_size": "Milliseconds per verification against the tokens verified, beside a one-token step",
    "learning_curve": "Held-out top-1 of each head's first prediction against training minutes and, where the run chose "
                      "trees, the predicted τ of the head's chosen tree at each evaluation",
    "ablation": "Clover-2's ablation: τ over the ablation tasks and the speedup with its 95 % CI per variant, the full method on top",
}


def laid_out(figure):
    """The figure at the paper's size, its axes and their legends fitted inside it."""
    figure.set_size_inches(8, 4)
    figure.tight_layout()
    return figure


def write_figures(stats: pd.DataFrame, directory: Path, tables: dict[str, pd.DataFrame] | None = None) -> list[Path]:
    """Every figure as NAME.pdf and NAME.png in `directory` (those of TABLE_FIGURES when `tables` has
    their table); returns the PDF paths (CAPTIONS says what each shows)."""
    written = []
    sns.set_theme(style="whitegrid", context="paper")
    drawings = {name: partial(draw, stats) for name, draw in FIGURES.items()}
    tables = tables or {}
    drawings |= {figure: partial(draw, tables[table]) for table, (figure, draw) in TABLE_FIGURES.items() if table in tables}
    for name, draw in drawings.items():
        figure = draw()
        if figure is None:  # the records cannot fill it
            continue
        laid_out(figure)
        for suffix in ("pdf", "png"):
            tmp = Path(directory) / f".{name}.{suffix}.tmp"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            # No creation date in PDFs: the same records give byte-identical figures (clean diffs in paper/).
            figure.savefig(tmp, format=suffix, dpi=150, metadata={"CreationDate": None} if suffix == "pdf" else None)
            atomic_write_bytes(Path(directory) / f"{name}.{suffix}", tmp.read_bytes())
            tmp.unlink()
        plt.close(figure)
        written.append(Path(directory) / f"{name}.pdf")
    return written
