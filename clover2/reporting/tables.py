"""Every table of the paper, one entry each in `TABLES`: its name, caption, section and builder.

A builder reads what it needs from a run's `Records` and returns its table, or None when the
records cannot fill it (no sweep ran, no head directory was given); `build_tables` builds them in
the order of `TABLES`, which is the order the LaTeX file, the Markdown file and each paper section
list them in. Tasks come in as the task registry (`clover2.tasks.TASKS`): each task's column label
and answer scorer are the task's own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from clover2.errors import Clover2Error
from clover2.heads.acceptance import AcceptanceProfile
from clover2.heads.clover2 import PAPER_CHOICES
from clover2.heads.directory import (
    head_config,
    last_heldout,
    read_json,
    stored_parameters,
    training_log,
    training_run,
)
from clover2.planning.optimiser import predicted_tau
from clover2.reporting.metrics import (
    AA_TOLERANCE,
    aa_ratio,
    between,
    paired,
    read_bench,
    speedups,
    summary,
    tau,
    tree_size_curve,
    verify_cost,
)


class TaskColumns(Protocol):
    """What the tables read of a task (`clover2.tasks.TaskSpec`)."""

    label: str | None  # its column head in the paper's tables, which list labelled tasks first, in registry order
    quality: str | None  # what its scorer measures (the quality table's column), None when it has none
    scorer: Callable[[str, Any], bool] | None  # answer, reference -> correct


@dataclass(frozen=True)
class Records:
    """What a run gives the report; each table uses what it needs."""

    frame: pd.DataFrame  # one row per bench record (metrics.read_bench)
    stats: pd.DataFrame  # per (method, task, T) (metrics.summary)
    baseline: str
    tasks: Mapping[str, TaskColumns] = field(default_factory=dict)
    lossless: Sequence[Path] = ()
    heads: Sequence[Path] = ()
    questions: Sequence = ()  # Question records (task, question_id, reference): the quality scores' references
    published: Path | None = None
    target: str = ""
    swept: pd.DataFrame | None = None  # the tree-size sweep's bench rows
    step_cost: Sequence[Path] = ()
    ablation: tuple[dict[str, Path], dict[str, Path]] | None = None  # variant -> bench file, variant -> head
    trees: Sequence[Path] = ()  # clover2 choose-tree files: the trees chosen for this machine, with their predictions
    aa: pd.DataFrame | None = None  # the baseline's second decodes of a few questions (metrics.aa_ratio)

    def label(self, task: str) -> str:
        spec = self.tasks.get(task)
        return spec.label if spec is not None and spec.label else task

    def task_order(self, tasks: pd.Series) -> list[str]:
        """The paper's task order (the labelled tasks, as registered), then any other task alphabetically."""
        present = set(tasks)
        paper = [name for name, spec in self.tasks.items() if spec.label and name in present]
        return paper + sorted(present - set(paper))

    def by_task(self, stats: pd.DataFrame, column: str) -> pd.DataFrame:
        table = stats.pivot_table(index=["temperature", "method"], columns="task", values=column, aggfunc="first")
        table = table[self.task_order(stats["task"])].rename(columns=self.label)
        table.columns.name = None
        return table


Built = pd.DataFrame | dict[str, pd.DataFrame] | None


@dataclass(frozen=True)
class Table:
    name: str  # a family (one table per temperature) is named by its prefix: speedup_T -> speedup_T0, speedup_T1
    caption: str  # a family's caption has a {temperature} field
    section: str
    build: Callable[[Records], Built]
    in_run_dtype: bool = False  # a speed against plain decoding in the job's own dtype: the caption names the dtype
    family: bool = False
    noise_checked: bool = False  # speedups of the main benches: the caption warns when their A/A check came out noisy


def speedup_tables(records: Records) -> dict[str, pd.DataFrame]:
    """The paper's main table, one per temperature: per method and task, the speedup and τ."""
    stats, tables = records.stats, {}
    for temperature, group in stats[stats["speedup"].notna()].groupby("temperature"):
        cells = group.set_index(["method", "task"])
        table = pd.DataFrame({(records.label(task), symbol): cells[metric].xs(task, level="task")
                              for task in records.task_order(group["task"]) for symbol, metric in (("×", "speedup"), ("τ", "tau"))})
        table.index.name = "method"
        tables[f"speedup_T{temperature:g}".replace(".", "p")] = table
    return tables


def speedup_ci_table(records: Records) -> pd.DataFrame:
    rows = records.stats[records.stats["speedup"].notna()]
    cells = [f"{low:.2f}–{high:.2f}" if pd.notna(low) else "" for low, high in zip(rows["speedup_ci_low"], rows["speedup_ci_high"])]
    return records.by_task(rows.assign(cell=cells), "cell")


def throughput_table(records: Records) -> pd.DataFrame:
    return records.by_task(records.stats, "tokens_per_s")


def depth_table(records: Records) -> pd.DataFrame:
    rows = records.stats[records.stats["depth_acceptance"].map(len) > 0]
    pooled = rows.groupby(["temperature", "method"])["depth_acceptance"].agg(_mean_curve)
    width = max((len(curve) for curve in pooled), default=0)
    return pd.DataFrame(
        [[f"{v:.2f}" for v in curve] + [""] * (width - len(curve)) for curve in pooled],
        index=pooled.index, columns=[f"depth {k}" for k in range(1, width + 1)],
    )


def _mean_curve(curves: pd.Series) -> list[float]:
    """Task curves averaged depth by depth (over the tasks that reached each depth)."""
    width = max(len(c) for c in curves)
    return [float(pd.Series([c[k] for c in curves if len(c) > k]).mean()) for k in range(width)]


def time_split_table(records: Records) -> pd.DataFrame | None:
    """Shares of wall time per phase, from the records whose phases were timed exactly (None if none were)."""
    stats = records.stats
    shares = [c for c in stats.columns if c.endswith("_share")]
    table = stats.dropna(subset=shares, how="all").groupby(["temperature", "method"])[shares].mean().map("{:.1%}".format)
    table.columns = [c.removesuffix("_share") for c in shares]
    return table if len(table) else None


def lossless_table(records: Records) -> pd.DataFrame | None:
    rows = []
    for path in records.lossless:
        document = read_json(path)
        config = document["provenance"]["config"]
        for method, report in document["reports"].items():
            if "turns_checked" in report:
                check = (f"{report['turns_identical']}/{report['turns_checked']} identical, {len(report['near_ties'])} near-tie, "
                         f"{len(report['mismatches'])} mismatch")
            else:
                check = f"chi2 p = {report['p_value']:.3f} ({report['samples']} samples)"
            rows.append({"method": method, "task": config["task"], "temperature": float(config["temperature"]),
                         "dtype": config["dtype"], "check": check, "result": "pass" if report["passed"] else "FAIL"})
    if not rows:
        return None
    return pd.DataFrame(rows).sort_values(["temperature", "method", "task"]).set_index(["temperature", "method", "task"])


def training_table(records: Records) -> pd.DataFrame | None:
    rows = []
    for directory in records.heads:
        run, top1 = training_run(directory), last_heldout(directory)["top1"]
        rows.append({"head": head_config(directory)["method"], "steps": run["steps"], "minutes": round(run["seconds"] / 60, 1),
                     "trainable_params": stored_parameters(directory),
                     "heldout_top1": " / ".join(f"{v:.2f}" for v in top1)})
    return pd.DataFrame(rows).set_index("head") if rows else None


def learning_curve_table(records: Records) -> pd.DataFrame | None:
    """Held-out top-1 per head depth at every evaluation of each head's training, against its minutes, and
    the τ its chosen tree would have had then (its acceptance profile at that step; for heads with one)."""
    rows, chosen = [], _chosen_paths(records.trees)
    for directory in records.heads:
        method, log = head_config(directory)["method"], training_log(directory)
        seconds = {r["step"]: r["seconds"] for r in log if "seconds" in r}
        paths = chosen.get(Path(directory).resolve())
        for record in (r for r in log if "heldout" in r):
            top1 = {f"depth {k}": value for k, value in enumerate(record["heldout"]["top1"], start=1)}
            profile = record["heldout"].get("acceptance")
            tree_tau = {} if paths is None or profile is None else {
                "τ chosen tree": predicted_tau(AcceptanceProfile.from_json(profile).probabilities(), paths)}
            rows.append({"head": method, "step": record["step"], "minutes": round(seconds.get(record["step"], 0.0) / 60, 1),
                         **top1, **tree_tau})
    if not records.heads:
        return None
    table = pd.DataFrame(rows).set_index(["head", "step"])
    return table[[c for c in table if c != "τ chosen tree"] + [c for c in table if c == "τ chosen tree"]]  # after every depth


def _chosen_paths(trees: Sequence[Path]) -> dict[Path, list[list[int]]]:
    """Head directory -> the rank paths chosen for it (clover2 choose-tree files name the profile they used)."""
    chosen = {}
    for path in trees:
        document = read_tree_choice(Path(path))
        if "paths" in document:  # a dynamic tree's table is not the head's own profile
            chosen[Path(document["inputs"]["acceptance"]).parent.resolve()] = document["paths"]
    return chosen


def quality_table(records: Records) -> pd.DataFrame | None:
    """Each scored task's quality per method (GSM8K accuracy, HumanEval pass@1), from the T = 0 answers of the first repeat."""
    if not records.questions:
        return None
    references = {(q.task, q.question_id): q.reference for q in records.questions}
    frame = records.frame
    greedy = frame[(frame["temperature"] == 0) & (frame["repeat"] == 0)].drop_duplicates(["method", "task", "question_id"])
    rows = []
    for (method, task), group in greedy.groupby(["method", "task"]):
        spec = records.tasks.get(task)
        if spec is None or spec.scorer is None:
            continue
        scores = [spec.scorer(answers[0], references[task, qid]) for answers, qid in zip(group["answers"], group["question_id"])]
        rows.append({"method": method, "column": f"{spec.quality} ({task})", "score": f"{sum(scores)}/{len(scores)}"})
    if not rows:
        return None
    table = pd.DataFrame(rows).pivot_table(index="method", columns="column", values="score", aggfunc="first")
    table.columns.name = None
    return table


PUBLISHED_METRICS = {"tokens_per_s": "tok/s", "speedup": "speedup", "extra_tokens_per_step": "extra"}


def published_table(records: Records) -> pd.DataFrame | None:
    """The paper's cells beside ours, in two-level columns (source, metric): cell by cell with the
    difference for the paper's own targets, otherwise the paper's numbers per published target next to ours."""
    if records.published is None:
        return None
    stats, target = records.stats, records.target
    paper = pd.read_csv(records.published).astype({"temperature": float})
    ours = stats[stats["method"].isin(paper["method"]) & stats["task"].isin(paper["task"])].set_index(["temperature", "method", "task"])
    keys = ["temperature", "method", "task"]
    metrics = list(PUBLISHED_METRICS)
    if target in set(paper["target"]):
        mine = paper[paper["target"] == target].set_index(keys)[metrics]
        columns = {"paper": mine, "ours": ours[metrics].reindex(mine.index)}
        columns["diff"] = columns["ours"] - columns["paper"]
    else:
        columns = {f"{name} (paper)": group.set_index(keys)[metrics] for name, group in paper.groupby("target")}
        columns[f"{target} (ours)"] = ours[[m for m in metrics if m in ours]]
    table = pd.concat(columns, axis=1).rename(columns=PUBLISHED_METRICS, level=1)
    return table.rename(index=records.label, level="task").round(2)


def tree_size_table(records: Records) -> pd.DataFrame | None:
    return tree_size_curve(records.swept).set_index(["method", "drafting"]) if records.swept is not None else None


def verify_cost_table(records: Records) -> pd.DataFrame | None:
    cost = verify_cost(pd.concat([records.frame, records.swept], ignore_index=True))  # concat drops a None
    return cost.set_index(["method", "drafting"]) if len(cost) else None


STEP_COST_COLUMNS = {"tree_size": "tree", "plain_ms_per_token": "plain", "ms_per_step": "ms/step",
                     "draft_ms": "draft", "verify_ms": "verify", "bookkeeping_ms": "book.",
                     "sync_overhead": "synced", "paper_tau": "paper τ", "projected_speedup": "projected"}


def step_cost_table(records: Records) -> pd.DataFrame | None:
    """The rows of `clover2 step-cost` files, one per (target, backend, method)."""
    if not records.step_cost:
        return None
    rows = []
    for path in records.step_cost:
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
            config = document["provenance"]["config"]
            rows += [{**row, "run": f"{config['dtype']} on {document['provenance']['device']}"} for row in document["rows"]]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise Clover2Error(f"{path}: not a step-cost file ({error!r})") from None
    frame = pd.DataFrame(rows).set_index(["target", "kernels", "method"])
    table = frame[list(STEP_COST_COLUMNS)].rename(columns=STEP_COST_COLUMNS)
    table.attrs["dtype"] = ", ".join(sorted(set(frame["run"])))  # the caption names dtype and device
    return table


def tree_choice_table(records: Records) -> pd.DataFrame | None:
    """Per method that drafted a chosen tree: the tree, and the prediction beside the benches' T = 0 measurement.

    τ is tokens per speculative step (the prefill's token apart), as predicted; the speedup after the
    prefill compares tokens/s over the steps alone, as the prediction does; the whole-turn speedup is
    the main table's, over all the method's T = 0 questions.
    """
    rows = []
    for path in records.trees:
        chosen = read_tree_choice(Path(path))
        method, predicted = chosen["inputs"]["head"], chosen["predicted"]
        frame = records.frame[(records.frame["temperature"] == 0)
                              & records.frame["method"].isin([method, records.baseline])]
        ours = frame[frame["method"] == method]
        if ours.empty:
            continue
        stepped = [n for lengths in ours["step_lengths"] for n in lengths]
        rows.append({"method": method, "nodes": predicted["nodes"], "depth": predicted["depth"],
                     "τ predicted": predicted["tau"], "τ measured": sum(stepped) / len(stepped) if stepped else 1.0,
                     "speedup predicted": predicted["speedup"], "after prefill": _decode_speedup(frame, method, records.baseline),
                     "whole turns": speedups(paired(frame, records.baseline))["speedup"],
                     "acceptance needed": _needed(chosen) if not predicted["nodes"] else ""})
    return pd.DataFrame(rows).set_index("method").round(2) if rows else None


def read_tree_choice(path: Path) -> dict:
    """A clover2 choose-tree file, checked for what the tables read of it."""
    chosen = read_json(path)
    try:
        chosen["inputs"]["head"], chosen["inputs"]["acceptance"], chosen["predicted"]["nodes"], chosen["predicted"]["depth"]
    except (KeyError, TypeError) as error:
        raise Clover2Error(f"{path}: not a clover2 choose-tree file (no {error})") from None
    return chosen


def _needed(chosen: dict) -> str:
    """How much more acceptance a tree would need to pay: never (inf) when the head accepts nothing at all."""
    factor = float(chosen["needed_acceptance"])
    return f"{factor:.2f}×" if factor != float("inf") else "none accepted"


def _decode_speedup(frame: pd.DataFrame, method: str, baseline: str) -> float:
    """Tokens/s after each turn's prefill (which emits a turn's first token), the method's over the baseline's."""
    def speed(rows: pd.DataFrame) -> float:
        tokens = rows["new_tokens"].sum() - rows["answers"].map(len).sum()
        return tokens / (rows["wall_seconds"].sum() - rows["prefill_seconds"].sum())
    return float(speed(frame[frame["method"] == method]) / speed(frame[frame["method"] == baseline]))


def chosen_vs_fixed_table(records: Records) -> pd.DataFrame | None:
    """Each method that drafted a chosen tree against every other method drafting with the same head
    in the same bench jobs (a fixed tree, or EAGLE-2's dynamic one): the chosen tree's speedup over it,
    per temperature, with its 95 % CI, paired by question."""
    rows = []
    frame = records.frame
    for path in records.trees:
        method = read_tree_choice(Path(path))["inputs"]["head"]
        heads = set(frame.loc[frame["method"] == method, "head"])
        others = sorted(set(frame.loc[frame["head"].isin(heads - {None}) & (frame["method"] != method), "method"]))
        for other in others:
            drafting = frame.loc[frame["method"] == other, "drafting"].iloc[0]
            for temperature, group in frame.groupby("temperature"):
                if {method, other} <= set(group["method"]):
                    rows.append({"method": method, "T": temperature, "against": other, "its drafting": drafting or "its own",
                                 **between(group, method, other)})
    if not rows:
        return None
    table = pd.DataFrame(rows).set_index(["method", "T", "against"])
    return table.rename(columns={"speedup": "× over it", "ci_low": "CI low", "ci_high": "CI high"})


def aa_table(records: Records) -> pd.DataFrame | None:
    """The A/A check per temperature: plain decoding's second decode of a few questions of every bench job
    over its first (metrics.aa_ratio)."""
    if records.aa is None or records.aa.empty:
        return None
    table = records.aa.set_index("temperature").rename(columns={"ratio": "A/A", "ci_low": "CI low", "ci_high": "CI high"})
    table["noisy"] = table["noisy"].map({True: f"|A/A − 1| > {AA_TOLERANCE:.0%}", False: ""})
    return table


def aa_note(aa: pd.DataFrame | None, temperature: float | None = None) -> str:
    """The caption's warning where the A/A check of a temperature (every one, when None) came out noisy."""
    if aa is None or aa.empty:
        return ""
    noisy = aa[aa["noisy"] & ((aa["temperature"] == temperature) if temperature is not None else True)]
    return "; ".join(f"A/A check at T = {row.temperature:g}: plain decoding against itself {row.ratio:.2f}× "
                     f"({row.ci_low:.2f}–{row.ci_high:.2f}), beyond ±{AA_TOLERANCE:.0%}: differences of that size are noise"
                     for row in noisy.itertuples())


ABLATION_LABELS = {"extraction_order": "order", "output_projector": "projector", "augmenting_layers": "AB layers",
                   "distillation": "loss"}


def ablation_table(records: Records) -> pd.DataFrame | None:
    """Per variant, in the order given (the full method first): τ per task and over all, and the speedup
    over all the variant's questions with its 95 % CI (its bench file: T = 0, the baseline interleaved)."""
    if not records.ablation:
        return None
    rows = []
    for variant, path in records.ablation[0].items():
        frame = read_bench([path])
        frame = frame[frame["temperature"] == 0]
        ours = frame[frame["method"] != records.baseline]
        row = {records.label(task): tau(g["new_tokens"], g["steps"]) for task, g in ours.groupby("task", sort=False)}
        pooled = speedups(paired(frame, records.baseline))
        rows.append({"variant": variant, **row, "τ": tau(ours["new_tokens"], ours["steps"]), "speedup": pooled["speedup"],
                     "CI low": pooled["speedup_ci_low"], "CI high": pooled["speedup_ci_high"], "drafting": ours["drafting"].iloc[0]})
    table = pd.DataFrame(rows).set_index("variant")
    drafting = sorted(set(table.pop("drafting")) - {""})
    if drafting:
        table.attrs["note"] = f"every variant drafting {', '.join(drafting)}"
    return table


def ablation_training_table(records: Records) -> pd.DataFrame | None:
    """Per variant: its value of each of the paper's four choices, training minutes and steps, held-out top-1 per depth."""
    if not records.ablation:
        return None
    rows = []
    for variant, head in records.ablation[1].items():
        options, run = head_config(head).get("options", {}), training_run(head)
        choices = {label: options.get(key, PAPER_CHOICES[key]) for key, label in ABLATION_LABELS.items()}
        rows.append({"variant": variant, **choices, "minutes": round(run["seconds"] / 60, 1), "steps": run["steps"],
                     "held-out top-1 (%)": "/".join(f"{100 * v:.0f}" for v in last_heldout(head)["top1"])})
    return pd.DataFrame(rows).set_index("variant")


SPEED, ACCEPTANCE, CORRECTNESS = "Speed", "Acceptance", "Losslessness and answer quality"
TRAINING, ABLATIONS, PUBLISHED = "Training", "Ablations", "Published and reproduced"
SECTIONS = (SPEED, ACCEPTANCE, CORRECTNESS, TRAINING, ABLATIONS, PUBLISHED)  # the paper's order
TABLES = (
    Table("speedup_T", "Speedup over plain decoding (ratio of mean tokens/s over questions) and τ at T = {temperature}",
          SPEED, speedup_tables, in_run_dtype=True, family=True, noise_checked=True),
    Table("speedup_ci", "95 % bootstrap confidence interval of each speedup (resampling questions)", SPEED, speedup_ci_table,
          in_run_dtype=True, noise_checked=True),
    Table("aa", "A/A noise check: plain decoding decoding the first questions of every bench job a second time, in the "
          "rotation, against its first decode (ratio of mean tokens/s, 95 % bootstrap CI); a speedup closer to 1 than a "
          "noisy run's |A/A − 1| says nothing", SPEED, aa_table, in_run_dtype=True),
    Table("throughput", "Tokens/s of each method, plain decoding included (mean over questions)", SPEED, throughput_table,
          in_run_dtype=True),
    Table("depth", "Per-depth acceptance on the tree actually used (share of steps reaching depth k that accepted there)",
          ACCEPTANCE, depth_table, in_run_dtype=True),
    Table("time_split", "Share of wall time per phase", SPEED, time_split_table, in_run_dtype=True),
    Table("lossless", "Losslessness against plain decoding", CORRECTNESS, lossless_table),
    Table("training", "Training cost of each head", TRAINING, training_table),
    Table("learning_curve", "Learning curves: held-out top-1 (the head's first choice is the target's) per head depth, "
          "against training minutes; depth 1 is the acceptance of a chain's first drafted token at T = 0; τ chosen tree: the "
          "τ the tree chosen for the head (tree: auto) is predicted to reach with the head as it was at that step", TRAINING,
          learning_curve_table),
    Table("quality", "Answer quality at T = 0 (GSM8K exact match, HumanEval pass@1; sandboxed execution)", CORRECTNESS, quality_table),
    Table("published", "Published (Clover-2 paper) and reproduced numbers (extra = extra tokens per step, τ − 1)", PUBLISHED,
          published_table),
    Table("tree_size", "τ against tree size (drafted nodes per step) in the tree-size sweep, T = 0", ACCEPTANCE, tree_size_table,
          in_run_dtype=True),
    Table("verify_cost", "Milliseconds per verification (the target's forward over the tree) against the tokens it verifies "
          "(drafted nodes + root; 1 token: a plain decoding step), over every step of the bench and sweep runs, "
          "and that time over a one-token step's", SPEED, verify_cost_table, in_run_dtype=True),
    Table("tree_choice", "Trees chosen for this machine (auto): each head's static tree from its held-out acceptance profile, "
          "or EAGLE-2's dynamic tree size (depth bound, kept nodes) from its measured table of sizes, and the calibrate job's "
          "costs; the predicted τ (tokens per speculative step) and speedup beside the T = 0 benches' "
          "(after prefill: tokens/s over the speculative steps, as predicted; whole turns: the main table's speedup over all "
          "tasks); acceptance needed: for a head given no tree, the factor on its acceptance (a dynamic tree: on its "
          "expected accepted tokens) at which one would pay",
          SPEED, tree_choice_table, in_run_dtype=True),
    Table("chosen_vs_fixed", "The chosen tree against the same head's other trees (a fixed one, or another method's "
          "chosen one), decoded in the same bench jobs: the chosen tree's speedup over it (ratio of mean tokens/s over the questions "
          "both decoded) with its 95 % bootstrap CI", SPEED, chosen_vs_fixed_table, in_run_dtype=True),
    Table("step_cost", "The engine's cost model (clover2 step-cost): ms per step after the prefill, split into draft, verify "
          "and bookkeeping (book.), for untrained heads on random-weight targets of each shape (only the costs mean anything: "
          "a random target often repeats itself, so an untrained head's τ says nothing about a trained one's); plain = plain "
          "decoding's ms per token; synced = the step with a device sync around every phase over the step timed whole; "
          "projected = the paper's τ × plain / ms per step", SPEED, step_cost_table),
    Table("ablation", "Ablations of Clover-2's four changes over Clover, each variant named by the change it removes, trained "
          "at the main head's budget from the same teacher pass and benched at T = 0: τ per task and over all, and the speedup "
          "over all its questions with its 95 % bootstrap CI", ABLATIONS, ablation_table, in_run_dtype=True),
    Table("ablation_training", "The ablation variants' choices (order: token fused before or after the Augmenting Block; "
          "projector: the Attention Decoder output projector or per-head MLPs; AB layers; loss: kd = soft CE + hidden-state "
          "regression, kd_no_regression, hard_ce = CE on the data tokens), training cost, and held-out top-1 per head depth",
          ABLATIONS, ablation_training_table, in_run_dtype=True),
)


def entry(name: str) -> Table:
    """The entry of table `name` (a family member by its family's prefix)."""
    for table in TABLES:
        if name == table.name or (table.family and name.startswith(table.name)):
            return table
    raise KeyError(name)


def member_temperature(spec: Table, name: str) -> str:
    """The temperature of a family's member, as its name holds it: speedup_T0p7 -> "0.7"."""
    return name.removeprefix(spec.name).replace("p", ".")


def title(name: str, table: pd.DataFrame | None = None) -> str:
    """A table's caption, with the dtype its runs decoded in when the table carries one (`attrs["dtype"]`) and
    the table's own note (`attrs["note"]`: what every row shares, a noisy A/A check)."""
    spec = entry(name)
    text = spec.caption.format(temperature=member_temperature(spec, name)) if spec.family else spec.caption
    attrs = table.attrs if table is not None else {}
    text = f"{text}; the target in {attrs['dtype']}" if attrs.get("dtype") else text
    return f"{text}. {attrs['note'][0].upper()}{attrs['note'][1:]}" if attrs.get("note") else text


def build_tables(
    bench: Sequence[Path],
    lossless: Sequence[Path] = (),
    heads: Sequence[Path] = (),
    baseline: str = "vanilla",
    questions: Sequence = (),
    published: Path | None = None,
    target: str = "",
    sweep: Sequence[Path] = (),
    step_cost: Sequence[Path] = (),
    ablation: tuple[dict[str, Path], dict[str, Path]] | None = None,
    tasks: Mapping[str, TaskColumns] | None = None,
    trees: Sequence[Path] = (),
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Every table that the records given can fill, and the per-(method, task, T) summary behind them."""
    decoded = read_bench(bench)
    frame = decoded[decoded["replicate"] == 0]  # the A/A check's second decodes are compared only with their first
    swept = read_bench(sweep) if sweep else None
    records = Records(frame, summary(frame, baseline), baseline, tasks or {}, lossless, heads, questions, published, target,
                      swept, step_cost, ablation, trees, aa_ratio(decoded, baseline))
    runs = pd.concat([frame, swept], ignore_index=True)  # concat drops a None
    devices = ", ".join(sorted(set(runs["device"]) - {""}))
    # Every speed is measured against plain decoding in its own job's dtype, on this machine: captions say which.
    machine = ", ".join(sorted(set(runs["dtype"]))) + (f" on {devices}" if devices else "")
    records.stats.attrs["machine"] = machine
    tables = {}
    for spec in TABLES:
        built = spec.build(records)
        for name, table in (built if isinstance(built, dict) else {spec.name: built}).items():
            if table is None:
                continue
            if spec.in_run_dtype:
                table.attrs["dtype"] = machine
            if spec.noise_checked:
                table.attrs["note"] = aa_note(records.aa, float(member_temperature(spec, name)) if spec.family else None)
            tables[name] = table
    return tables, records.stats
