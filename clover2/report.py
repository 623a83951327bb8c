"""Tables from raw run records: bench files, losslessness reports and trained head directories.

Each table is a DataFrame; `write_tables` renders all of them as booktabs LaTeX (one file, and one
file per table when asked) and as Markdown for the README.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from safetensors import safe_open

from clover2.atomic import atomic_write_bytes, atomic_write_text
from clover2.clover2_head import PAPER_CHOICES
from clover2.draft_vocab import IDS
from clover2.errors import Clover2Error
from clover2.metrics import paired, read_bench, speedups, summary, tau, tree_size_curve, verify_cost
from clover2.quality import gsm8k_correct, humaneval_passed
from clover2.tasks import read_questions

TITLES = {
    "speedup_ci": "95 % bootstrap confidence interval of each speedup (resampling questions)",
    "throughput": "Tokens/s of each method, plain decoding included (mean over questions)",
    "depth": "Per-depth acceptance on the tree actually used (share of steps reaching depth k that accepted there)",
    "time_split": "Share of wall time per phase",
    "lossless": "Losslessness against plain decoding",
    "training": "Training cost of each head",
    "learning_curve": "Learning curves: held-out top-1 (the head's first choice is the target's) per head depth, "
    "against training minutes; depth 1 is the acceptance of a chain's first drafted token at T = 0",
    "quality": "Answer quality at T = 0 (GSM8K exact match, HumanEval pass@1; sandboxed execution)",
    "published": "Published (Clover-2 paper) and reproduced numbers (extra = extra tokens per step, τ − 1)",
    "tree_size": "τ against tree size (drafted nodes per step) in the tree-size sweep, T = 0",
    "verify_cost": "Milliseconds per verification (the target's forward over the tree) against the tokens it verifies "
    "(drafted nodes + root; 1 token: a plain decoding step), over every step of the bench and sweep runs, "
    "and that time over a one-token step's",
    "ablation": "Ablations of Clover-2's four changes over Clover, each variant named by the change it removes, trained "
    "at the main head's budget from the same teacher pass and benched at T = 0: τ per task and over all, and the speedup "
    "over all its questions with its 95 % bootstrap CI",
    "ablation_training": "The ablation variants' choices (order: token fused before or after the Augmenting Block; "
    "projector: the Attention Decoder output projector or per-head MLPs; AB layers; loss: kd = soft CE + hidden-state "
    "regression, kd_no_regression, hard_ce = CE on the data tokens), training cost, and held-out top-1 per head depth",
    "step_cost": "The engine's cost model (clover2 step-cost): ms per step after the prefill, split into draft, verify "
    "and bookkeeping (book.), for untrained heads on random-weight targets of each shape (only the costs mean anything: "
    "a random target often repeats itself, so an untrained head's τ says nothing about a trained one's); plain = plain "
    "decoding's ms per token; synced = the step with a device sync around every phase over the step timed whole; "
    "projected = the paper's τ × plain / ms per step",
}
# Column heads short enough for the paper's page: the main table gives each task two columns.
TASK_LABELS = {"mt_bench": "MT-Bench", "translation": "Transl.", "summarization": "Summ.", "qa": "QA",
               "math_reasoning": "Math", "rag": "RAG", "humaneval": "HumanEval", "gsm8k": "GSM8K"}  # fmt: skip


def title(name: str, table: pd.DataFrame | None = None) -> str:
    """A table's caption, with the dtype its runs decoded in when the table carries one (`attrs["dtype"]`)."""
    if name.startswith("speedup_T"):
        temperature = name.removeprefix("speedup_T").replace("p", ".")
        text = f"Speedup over plain decoding (ratio of mean tokens/s over questions) and τ at T = {temperature}"
    else:
        text = TITLES[name]
    dtype = table.attrs.get("dtype") if table is not None else None
    return f"{text}; the target in {dtype}" if dtype else text


def speedup_tables(stats: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The paper's main table, one per temperature: per method and task, the speedup and τ."""
    tables = {}
    for temperature, group in stats[stats["speedup"].notna()].groupby("temperature"):
        cells = group.set_index(["method", "task"])
        table = pd.DataFrame({(_task_label(task), symbol): cells[metric].xs(task, level="task")
                              for task in _task_order(group["task"]) for symbol, metric in (("×", "speedup"), ("τ", "tau"))})  # fmt: skip
        table.index.name = "method"
        tables[f"speedup_T{temperature:g}".replace(".", "p")] = table
    return tables


def speedup_ci_table(stats: pd.DataFrame) -> pd.DataFrame:
    rows = stats[stats["speedup"].notna()]
    cells = [f"{low:.2f}–{high:.2f}" if pd.notna(low) else "" for low, high in zip(rows["speedup_ci_low"], rows["speedup_ci_high"])]
    return _by_task(rows.assign(cell=cells), "cell")


def throughput_table(stats: pd.DataFrame) -> pd.DataFrame:
    return _by_task(stats, "tokens_per_s")


def _task_order(tasks: pd.Series) -> list[str]:
    """The paper's task order, then any other task alphabetically."""
    present = set(tasks)
    return [t for t in TASK_LABELS if t in present] + sorted(present - set(TASK_LABELS))


def _task_label(task: str) -> str:
    return TASK_LABELS.get(task, task)


def _by_task(stats: pd.DataFrame, column: str) -> pd.DataFrame:
    table = stats.pivot_table(index=["temperature", "method"], columns="task", values=column, aggfunc="first")
    table = table[_task_order(stats["task"])].rename(columns=_task_label)
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
    """Shares of wall time per phase, from the records whose phases were timed exactly (empty if none)."""
    shares = [c for c in stats.columns if c.endswith("_share")]
    table = stats.dropna(subset=shares, how="all").groupby(["temperature", "method"])[shares].mean().map("{:.1%}".format)
    table.columns = [c.removesuffix("_share") for c in shares]
    return table


STEP_COST_COLUMNS = {"tree_size": "tree", "plain_ms_per_token": "plain", "ms_per_step": "ms/step",
                     "draft_ms": "draft", "verify_ms": "verify", "bookkeeping_ms": "book.",
                     "sync_overhead": "synced", "paper_tau": "paper τ", "projected_speedup": "projected"}  # fmt: skip


def step_cost_table(paths: Sequence[Path]) -> pd.DataFrame:
    """The rows of `clover2 step-cost` files, one per (target, backend, method)."""
    rows = []
    for path in paths:
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


ABLATION_LABELS = {"extraction_order": "order", "output_projector": "projector", "augmenting_layers": "AB layers",
                   "distillation": "loss"}  # fmt: skip


def ablation_tables(
    bench: dict[str, Path], heads: dict[str, Path], baseline: str = "vanilla"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per variant, in the order given (the full method first): (speed, training). `bench` and `heads`
    map each variant to its bench file (T = 0, the baseline interleaved) and its head directory."""
    speed = [{"variant": variant, **_ablation_speed(path, baseline)} for variant, path in bench.items()]
    training = [{"variant": variant, **_ablation_training(Path(head))} for variant, head in heads.items()]
    return pd.DataFrame(speed).set_index("variant"), pd.DataFrame(training).set_index("variant")


def _ablation_speed(path: Path, baseline: str) -> dict:
    """τ per task and over all, and the speedup over all the file's questions with its 95 % CI."""
    frame = read_bench([path])
    frame = frame[frame["temperature"] == 0]
    ours = frame[frame["method"] != baseline]
    row = {TASK_LABELS.get(task, task): tau(g["new_tokens"], g["steps"]) for task, g in ours.groupby("task", sort=False)}
    pooled = speedups(paired(frame, baseline))
    return row | {"τ": tau(ours["new_tokens"], ours["steps"]), "speedup": pooled["speedup"],
                  "CI low": pooled["speedup_ci_low"], "CI high": pooled["speedup_ci_high"]}  # fmt: skip


def _ablation_training(head: Path) -> dict:
    """The head's value of each of the paper's four choices, its training minutes and steps, and held-out top-1 per depth."""
    options, run = _read_json(head / "head.json").get("options", {}), _read_json(head / "training.json")
    choices = {label: options.get(key, PAPER_CHOICES[key]) for key, label in ABLATION_LABELS.items()}
    top1 = _last_heldout(_training_log(head))["top1"]
    return choices | {"minutes": round(run["seconds"] / 60, 1), "steps": run["steps"],
                      "held-out top-1 (%)": "/".join(f"{100 * v:.0f}" for v in top1)}  # fmt: skip


def lossless_table(paths: Sequence[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        document = _read_json(path)
        config = document["provenance"]["config"]
        for method, report in document["reports"].items():
            if "turns_checked" in report:
                check = (f"{report['turns_identical']}/{report['turns_checked']} identical, {len(report['near_ties'])} near-tie, "
                         f"{len(report['mismatches'])} mismatch")  # fmt: skip
            else:
                check = f"chi2 p = {report['p_value']:.3f} ({report['samples']} samples)"
            rows.append({"method": method, "task": config["task"], "temperature": float(config["temperature"]),
                         "dtype": config["dtype"], "check": check, "result": "pass" if report["passed"] else "FAIL"})  # fmt: skip
    return pd.DataFrame(rows).sort_values(["temperature", "method", "task"]).set_index(["temperature", "method", "task"])


def training_table(head_dirs: Sequence[Path]) -> pd.DataFrame:
    rows = []
    for directory in head_dirs:
        directory = Path(directory)
        training, head = _read_json(directory / "training.json"), _read_json(directory / "head.json")
        last = _last_heldout(_training_log(directory))
        rows.append({"head": head["method"], "steps": training["steps"], "minutes": round(training["seconds"] / 60, 1),
                     "trainable_params": _parameter_count(directory / "head.safetensors"),
                     "heldout_top1": " / ".join(f"{v:.2f}" for v in last["top1"])})  # fmt: skip
    return pd.DataFrame(rows).set_index("head")


def learning_curve_table(head_dirs: Sequence[Path]) -> pd.DataFrame:
    """Held-out top-1 per head depth at every evaluation of each head's training, against its minutes."""
    rows = []
    for directory in head_dirs:
        method = _read_json(Path(directory) / "head.json")["method"]
        log = _training_log(Path(directory))
        seconds = {r["step"]: r["seconds"] for r in log if "seconds" in r}
        for record in (r for r in log if "heldout" in r):
            top1 = {f"depth {k}": value for k, value in enumerate(record["heldout"]["top1"], start=1)}
            rows.append({"head": method, "step": record["step"], "minutes": round(seconds.get(record["step"], 0.0) / 60, 1), **top1})
    return pd.DataFrame(rows).set_index(["head", "step"])


def _training_log(head: Path) -> list[dict]:
    """A head directory's training log, one record per line."""
    return [json.loads(line) for line in (head / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]


def _last_heldout(log: list[dict]) -> dict:
    """The last held-out evaluation in a training log."""
    return next(r["heldout"] for r in reversed(log) if "heldout" in r)


def _parameter_count(path: Path) -> int:
    """Trainable weights in a head file (a draft vocabulary's stored token ids are not weights)."""
    with safe_open(str(path), "pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys() if name != IDS)


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


PUBLISHED_METRICS = {"tokens_per_s": "tok/s", "speedup": "speedup", "extra_tokens_per_step": "extra"}


def published_table(stats: pd.DataFrame, published: Path, target: str) -> pd.DataFrame:
    """The paper's cells beside ours, in two-level columns (source, metric): cell by cell with the
    difference for the paper's own targets, otherwise the paper's numbers per published target next to ours."""
    paper = pd.read_csv(published).astype({"temperature": float})
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
    return table.rename(index=_task_label, level="task").round(2)


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
    step_cost: Sequence[Path] = (),
    ablation: tuple[dict[str, Path], dict[str, Path]] | None = None,
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Every table that the records given can fill, and the per-(method, task, T) summary behind them."""
    frame = read_bench(bench)
    stats = summary(frame, baseline)
    tables = {**speedup_tables(stats), "speedup_ci": speedup_ci_table(stats), "throughput": throughput_table(stats),
              "depth": depth_table(stats)}  # fmt: skip
    split = time_split_table(stats)
    if len(split):
        tables["time_split"] = split
    if lossless:
        tables["lossless"] = lossless_table(lossless)
    if heads:
        tables["training"] = training_table(heads)
        tables["learning_curve"] = learning_curve_table(heads)
    quality = quality_table(frame, questions) if questions else None
    if quality is not None:
        tables["quality"] = quality
    if published is not None:
        tables["published"] = published_table(stats, published, target)
    swept = read_bench(sweep) if sweep else None
    if swept is not None:
        tables["tree_size"] = tree_size_curve(swept).set_index(["method", "drafting"])
    cost = verify_cost(pd.concat([frame, swept], ignore_index=True))  # concat drops a None
    if len(cost):
        tables["verify_cost"] = cost.set_index(["method", "drafting"])
    if step_cost:
        tables["step_cost"] = step_cost_table(step_cost)
    if ablation:
        tables["ablation"], tables["ablation_training"] = ablation_tables(*ablation, baseline)
    dtypes = ", ".join(sorted(set(frame["dtype"]) | (set(swept["dtype"]) if swept is not None else set())))
    speed = ("speedup_T", "speedup_ci", "throughput", "depth", "time_split", "tree_size", "verify_cost", "ablation")
    for name in tables:
        if name.startswith(speed):
            tables[name].attrs["dtype"] = dtypes  # every speed is measured against plain decoding in its own job's dtype
    return tables, stats


def _latex_text(text: str) -> str:
    """Caption text: % and _ escaped (a device such as x86_64 lands in a caption), symbols as math."""
    return _latex_symbols(text.replace("%", r"\%").replace("_", r"\_"))


def _latex_symbols(text: str) -> str:
    """Symbols that pdfLaTeX's text mode lacks, as math."""
    return text.replace("τ", r"$\tau$").replace("−", "$-$").replace("×", r"$\times$")


def _labelled(table: pd.DataFrame) -> pd.DataFrame:
    """Index values as written: temperatures as 0 and 1, not 0.000000."""
    return table.rename(index=lambda value: f"{value:g}" if isinstance(value, float) else value)


def to_latex(name: str, table: pd.DataFrame) -> str:
    # A cell the run did not fill (say, a task the paper reports and this run skipped) shows a dash.
    body = _labelled(table).style.format(escape="latex", precision=2, na_rep="--")
    body = body.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    latex = body.to_latex(hrules=True, caption=_latex_text(title(name, table)), label=f"tab:{name}", position="H",
                          position_float="centering", multicol_align="c")  # fmt: skip
    # Placed where written ([H]): a table reads in its section, not on a page of floats. One font
    # size for every table, small enough that the widest (two columns per task) fits the page.
    latex = _latex_symbols(latex.replace("\\centering\n", "\\centering\n\\footnotesize\n", 1))
    return f"% {name}: regenerated by clover2 report from raw run records; do not edit\n{latex}"


def write_tables(tables: dict[str, pd.DataFrame], latex: Path, markdown: Path | None = None) -> None:
    """All tables into `latex` (booktabs) and `markdown`."""
    atomic_write_text(latex, "\n".join(to_latex(name, table) for name, table in tables.items()))
    if markdown:
        atomic_write_text(markdown, markdown_text(tables))


def markdown_text(tables: dict[str, pd.DataFrame]) -> str:
    return "\n\n".join(f"### {title(name, table)}\n\n{_markdown(table)}" for name, table in tables.items()) + "\n"


def _markdown(table: pd.DataFrame) -> str:
    flat = _labelled(table).reset_index()
    if isinstance(flat.columns, pd.MultiIndex):
        flat.columns = [" ".join(str(part) for part in column if part != "") for column in flat.columns]
    labels = list(range(table.index.nlevels))  # written as labelled, not re-read as numbers by tabulate
    return flat.astype(object).where(flat.notna(), None).to_markdown(
        index=False, floatfmt=".2f", missingval="–", disable_numparse=labels
    )


PAPER_PREAMBLE = r"""\documentclass{article}
\usepackage[a4paper,margin=2cm]{geometry}
\usepackage{booktabs,multirow,graphicx,float}
\pdfinfoomitdate=1 \pdftrailerid{}  %% the same sources give the same PDF, byte for byte
\setlength{\tabcolsep}{4pt}
\setlength{\emergencystretch}{3em}  %% long names in typewriter type break the line, not the margin
\title{clover2-bench: the Clover-2 paper's tables and figures, regenerated}
\date{}
\begin{document}
\maketitle
Target: \texttt{%s}. Every table and figure below is regenerated by \texttt{clover2 report} from
the raw run records; nothing here is typed by hand. Speedups are ratios of mean tokens per second over
questions, each method against plain decoding of the same questions, interleaved in the same process;
$\tau$ is the mean number of tokens accepted per target forward, the bonus token included.
"""
# Each table's section, in the order of the paper: speed, acceptance, correctness, cost, the paper itself.
SECTIONS = {"Speed": ("speedup_T", "speedup_ci", "throughput", "time_split", "verify_cost", "step_cost"), "Acceptance": ("depth", "tree_size"),
            "Losslessness and answer quality": ("lossless", "quality"), "Training": ("training", "learning_curve"),
            "Ablations": ("ablation",),
            "Published and reproduced": ("published",)}  # fmt: skip


def write_paper(tables: dict[str, pd.DataFrame], stats: pd.DataFrame, directory: Path, source: str) -> Path:
    """paper/: tables/NAME.tex, tables.md (every table, for reading on the web), figures/NAME.{pdf,png}
    and a main.tex that includes them all, section by section."""
    from clover2.figures import write_figures

    directory = Path(directory)
    for name, table in tables.items():
        atomic_write_text(directory / "tables" / f"{name}.tex", to_latex(name, table))
    atomic_write_text(directory / "tables.md", markdown_text(tables))
    figures = write_figures(stats, directory / "figures", tables)
    body = [PAPER_PREAMBLE % source.replace("_", r"\_")]
    for section, prefixes in SECTIONS.items():
        names = [name for name in tables if name.startswith(prefixes)]
        if names:
            body += [f"\\section{{{section}}}\n"] + [f"\\input{{tables/{name}}}\n" for name in names]
    body += ["\\clearpage\n\\section{Figures}\n"]
    body += [f"\\begin{{figure}}[H]\\centering\\includegraphics[width=0.8\\linewidth]{{figures/{f.name}}}"
             f"\\caption{{{f.stem.replace('_', ' ')}}}\\end{{figure}}\n" for f in figures]  # fmt: skip
    body.append("\\end{document}\n")
    return atomic_write_text(directory / "main.tex", "\n".join(body))


# What a clean build's log must not hold: a LaTeX error, a missing file (a figure), an undefined
# reference, or a table or line wider than the page (more than a hair: 1 pt).
LOG_PROBLEMS = re.compile(
    r"^! .*|^LaTeX Warning: (?:Reference|Citation) .* undefined.*|^LaTeX Warning: File .* not found.*"
    r"|^Overfull \\hbox \((?:[1-9]\d*\.\d+|[1-9]\d*)pt too wide\).*",
    re.MULTILINE,
)


def compile_pdf(directory: Path) -> Path:
    """Build DIR/main.pdf from DIR/main.tex with latexmk (pdfLaTeX) and check the log; the build's own
    files stay in a scratch directory, and the PDF appears atomically."""
    directory = Path(directory).resolve()
    if shutil.which("latexmk") is None:
        raise Clover2Error("latexmk not found: install TeX Live (apt-get install texlive-latex-recommended texlive-latex-extra latexmk)")
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "SOURCE_DATE_EPOCH": "0", "FORCE_SOURCE_DATE": "1"}
        command = ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", f"-outdir={scratch}", "main.tex"]
        result = subprocess.run(command, cwd=directory, capture_output=True, text=True, env=env)
        log = Path(scratch, "main.log").read_text(encoding="utf-8", errors="replace") if Path(scratch, "main.log").is_file() else ""
        problems = LOG_PROBLEMS.findall(log)
        if result.returncode != 0 or problems:
            detail = "\n  ".join(problems) or (result.stdout + result.stderr)[-2000:]
            raise Clover2Error(f"{directory / 'main.tex'}: the PDF build failed or is not clean:\n  {detail}")
        return atomic_write_bytes(directory / "main.pdf", Path(scratch, "main.pdf").read_bytes())
