"""What the Snakefile asks of the library: registry checks on a config, the final artefacts, and the
command-line flags each rule passes. The schema (workflow/schemas/config.schema.yaml) checks types
and counts; this module checks names against the registries, which the schema cannot know.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clover2.draft_head import head_class, head_methods
from clover2.errors import Clover2Error
from clover2.methods import METHODS
from clover2.tasks import task_names


def check_config(config: dict) -> None:
    """Fail before any job starts, naming the config key, when a method, head or task is unknown."""
    known_methods = [*METHODS, *head_methods()]
    if config["baseline"] not in METHODS:
        raise Clover2Error(f"config key 'baseline': {config['baseline']!r} is not a method without a head ({', '.join(METHODS)})")
    if config["baseline"] in config["methods"]:
        raise Clover2Error(f"config key 'methods.{config['baseline']}': the baseline runs in every bench job; do not list it")
    for method, settings in config["methods"].items():
        if method not in known_methods:
            raise Clover2Error(f"config key 'methods.{method}': unknown method; known: {', '.join(known_methods)}")
        _check_head(method, (settings or {}).get("head"), config["heads"])
    for head in config["heads"]:
        if head not in head_methods():
            raise Clover2Error(f"config key 'heads.{head}': not a trainable head; known: {', '.join(head_methods())}")
    for section in ("bench", "lossless", "sweep"):
        for task in (config.get(section) or {}).get("tasks", []):
            if task not in task_names():
                raise Clover2Error(f"config key '{section}.tasks': unknown task {task!r}; known: {', '.join(task_names())}")
    if config.get("sweep"):
        _check_sweep(config["sweep"], config["methods"])


def _check_head(method: str, head: str | None, heads: dict) -> None:
    key = f"methods.{method}.head"
    if method in METHODS:
        if head is not None:
            raise Clover2Error(f"config key '{key}': {method} drafts without a trained head")
        return
    if head is None:
        raise Clover2Error(f"config key '{key}': {method} needs a trained head (a key of 'heads')")
    if head not in heads:
        raise Clover2Error(f"config key '{key}': {head!r} is not a key of 'heads'")
    if head != method and head not in head_class(method).shares_weights_with:
        raise Clover2Error(f"config key '{key}': {method} cannot draft with a {head} head")


def _check_sweep(sweep: dict, methods: dict) -> None:
    method = sweep["method"]
    if method not in methods or method in METHODS:
        raise Clover2Error(f"config key 'sweep.method': {method!r} is not a key of 'methods' that drafts with a trained head")
    allowed = head_class(method).drafting_options
    if sweep["option"] not in allowed:
        raise Clover2Error(f"config key 'sweep.option': {method} heads can only change {', '.join(sorted(allowed))} when decoding")


def temperature_label(value: float) -> str:
    """0 -> "0", 1.0 -> "1", 0.7 -> "0.7": the {temperature} wildcard."""
    return f"{float(value):g}"


def train_flags(config: dict, head: str) -> str:
    """`clover2 train` flags: the shared `training` settings overridden by `heads.<head>`."""
    settings = {**config["training"], **(config["heads"][head] or {})}
    options = settings.pop("options", {}) or {}
    flags = [f"--{key.replace('_', '-')} {value}" for key, value in settings.items()]
    flags += [f"--option {key}={value}" for key, value in options.items()]
    return " ".join(flags)


def head_of(config: dict, method: str) -> str | None:
    return (config["methods"][method] or {}).get("head")


def _runs(config: dict, section: str, leaves: list[str]) -> list[str]:
    """results/<target>/<section>/<method>/<task>/T<temperature>/<leaf> for every combination the config asks for."""
    root, settings = f"results/{config['target']['name']}/{section}", config[section]
    return [
        f"{root}/{method}/{task}/T{temperature_label(t)}{leaf}"
        for method in config["methods"]
        for task in settings["tasks"]
        for t in settings["temperatures"]
        for leaf in leaves
    ]


def bench_files(config: dict) -> list[str]:
    return _runs(config, "bench", [f"/r{repeat}.jsonl" for repeat in range(config["bench"]["repeats"])])


def lossless_files(config: dict) -> list[str]:
    return _runs(config, "lossless", [".json"])


def sweep_files(config: dict) -> list[str]:
    """results/<target>/sweep/<method>/<option>/<value>/<task>.jsonl; none without a 'sweep' section."""
    sweep = config.get("sweep")
    if not sweep:
        return []
    root = f"results/{config['target']['name']}/sweep/{sweep['method']}/{sweep['option']}"
    return [f"{root}/{value}/{task}.jsonl" for value in sweep["values"] for task in sweep["tasks"]]


def question_files(config: dict) -> list[str]:
    bench, lossless = config["bench"], config["lossless"]
    sweep_tasks = (config.get("sweep") or {}).get("tasks", [])
    files = [f"results/questions/{task}.{bench['questions']}.jsonl" for task in [*bench["tasks"], *sweep_tasks]]
    return sorted(set(files + [f"results/questions/{task}.{lossless['questions']}.jsonl" for task in lossless["tasks"]]))


def head_dirs(config: dict) -> list[str]:
    return [f"results/{config['target']['name']}/heads/{head}" for head in config["heads"]]


def stage_times(roots: list[Path]) -> pd.DataFrame:
    """Per workflow stage, from the Snakemake benchmark files under `roots` (…/benchmarks/<stage>/…tsv).

    Job seconds add up the jobs' own wall times; the span runs from the first job's start to the
    last one's end (each file is written as its job ends), so it shows what parallel jobs overlapped.
    """
    rows = []
    for path in sorted(p for root in roots for p in Path(root).rglob("*.tsv") if "benchmarks" in p.parent.parts):
        stage = path.relative_to(_benchmarks_dir(path)).parts[0].removesuffix(".tsv")
        try:
            measured = pd.read_csv(path, sep="\t")
            seconds, rss = float(measured["s"].iloc[0]), float(measured["max_rss"].iloc[0])
        except (ValueError, KeyError, IndexError) as error:
            raise Clover2Error(f"{path}: not a Snakemake benchmark file ({error!r})") from None
        end = path.stat().st_mtime
        rows.append({"stage": stage, "seconds": seconds, "start": end - seconds, "end": end, "max_rss_mb": rss})
    if not rows:
        raise Clover2Error(f"{', '.join(map(str, roots))}: no Snakemake benchmark files (…/benchmarks/<stage>/….tsv)")
    jobs = pd.DataFrame(rows).groupby("stage")
    table = pd.DataFrame({
        "jobs": jobs.size(),
        "job_seconds": jobs["seconds"].sum(),
        "median_job_seconds": jobs["seconds"].median(),
        "span_seconds": jobs["end"].max() - jobs["start"].min(),
        "max_rss_mb": jobs["max_rss_mb"].max(),
    })  # fmt: skip
    return table.sort_values("span_seconds", ascending=False)


def _benchmarks_dir(path: Path) -> Path:
    return next(parent for parent in path.parents if parent.name == "benchmarks")
