"""What the Snakefile asks of the library: registry checks on a config, the final artefacts, and the
command-line flags each rule passes. The schema (workflow/schemas/config.schema.yaml) checks types
and counts; this module checks names against the registries, which the schema cannot know.
"""

from __future__ import annotations

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
    for section in ("bench", "lossless"):
        for task in config[section]["tasks"]:
            if task not in task_names():
                raise Clover2Error(f"config key '{section}.tasks': unknown task {task!r}; known: {', '.join(task_names())}")


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


def question_files(config: dict) -> list[str]:
    bench, lossless = config["bench"], config["lossless"]
    files = [f"results/questions/{task}.{bench['questions']}.jsonl" for task in bench["tasks"]]
    return sorted(set(files + [f"results/questions/{task}.{lossless['questions']}.jsonl" for task in lossless["tasks"]]))


def head_dirs(config: dict) -> list[str]:
    return [f"results/{config['target']['name']}/heads/{head}" for head in config["heads"]]
