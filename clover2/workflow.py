"""What the Snakefile asks of the library: checks on a config, the final artefacts, and the
command-line flags each rule passes. The schema (workflow/schemas/config.schema.yaml) checks types
and counts; this module checks names against the registries and values through the validators the
jobs run, which the schema cannot know.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pandas as pd
import yaml

from clover2.errors import Clover2Error
from clover2.heads.protocol import head_class, head_methods
from clover2.methods import METHODS, check_head_options
from clover2.targets import EMBEDDED
from clover2.tasks import task_names
from clover2.training.loop import SettingError, TrainConfig


def check_schema(config: dict, schema: str | Path) -> None:
    """The schema's most relevant complaint as one line naming the key (Snakemake's own validation,
    which runs next to fill in defaults, would print the whole schema after it)."""
    validator = jsonschema.Draft202012Validator(yaml.safe_load(Path(schema).read_text(encoding="utf-8")))
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        key = ".".join(map(str, error.absolute_path)) or "(the top level)"
        raise Clover2Error(f"config key '{key}': {error.message}")


def check_config(config: dict) -> None:
    """Fail before any job starts, naming the config key, when a method, head or task is unknown or a
    value is one its job would refuse."""
    known_methods = [*METHODS, *head_methods()]
    if config["baseline"] not in METHODS:
        raise Clover2Error(f"config key 'baseline': {config['baseline']!r} is not a method without a head ({', '.join(METHODS)})")
    if config["baseline"] in config["methods"]:
        raise Clover2Error(f"config key 'methods.{config['baseline']}': the baseline runs in every bench job; do not list it")
    for name, settings in config["methods"].items():
        method = decodes_as(config, name)
        if method not in known_methods:
            key = f"methods.{name}" + (".method" if method != name else "")
            raise Clover2Error(f"config key '{key}': unknown method {method!r}; known: {', '.join(known_methods)}")
        _check_head(name, method, (settings or {}).get("head"), config["heads"])
        _check_drafting(f"methods.{name}.drafting", method, drafting_options(config, name))
        if _auto_options(drafting_options(config, name)) and head_class(method).dynamic_trees and not config.get("teacher"):
            raise Clover2Error(f"config key 'methods.{name}.drafting': choosing a {method} tree's size measures it on the "
                               f"teacher pass's held-out conversations; add a 'teacher' section")
    for head in config["heads"]:
        if head not in head_methods():
            raise Clover2Error(f"config key 'heads.{head}': not a trainable head; known: {', '.join(head_methods())}")
    for section in ("bench", "lossless", "sweep", "ablation"):
        for task in (config.get(section) or {}).get("tasks", []):
            if task not in task_names():
                raise Clover2Error(f"config key '{section}.tasks': unknown task {task!r}; known: {', '.join(task_names())}")
    for task in config["bench"].get("task_max_new_tokens") or {}:
        if task not in config["bench"]["tasks"]:
            raise Clover2Error(f"config key 'bench.task_max_new_tokens': {task!r} is not one of 'bench.tasks'")
    vocab_size = target_vocab_size(config)
    for head in config["heads"]:
        _check_training(config, head)
        _check_options(lambda option, h=head: _option_key(config, h, option), head, head_options(config, head), vocab_size)
    if config.get("sweep"):
        _check_sweep(config["sweep"], config)
    _check_drafting_values(config, vocab_size)
    if config.get("ablation"):
        _check_ablation(config["ablation"], config, vocab_size)


def target_vocab_size(config: dict) -> int | None:
    """The target's vocabulary size where it is known before any job: a prepared target's (this
    workflow's or a local checkpoint given as the source) or an embedded target's."""
    source = config["target"]["source"]
    for directory in (Path(f"{_root(config)}/target"), Path(source)):
        if (directory / "config.json").is_file():
            return json.loads((directory / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    return EMBEDDED[source].vocab_size if source in EMBEDDED else None


def _train_settings(config: dict, head: str) -> dict:
    """`head`'s training settings but its options: the shared `training` ones overridden by `heads.<head>`."""
    settings = {**config["training"], **(config["heads"][head] or {})}
    settings.pop("options", None)
    return settings


def _check_training(config: dict, head: str) -> None:
    """The training loop's own checks on `head`'s settings, and a teacher pass large enough for them."""
    try:
        resolved = TrainConfig(method=head, **_train_settings(config, head)).resolved()
    except SettingError as error:
        where = f"heads.{head}" if error.setting in (config["heads"][head] or {}) else "training"
        raise Clover2Error(f"config key '{where}.{error.setting}': {error.message}") from None
    teacher = config.get("teacher")
    wanted = resolved.conversations + resolved.heldout
    if teacher and teacher["conversations"] < wanted:
        raise Clover2Error(f"config key 'teacher.conversations': {teacher['conversations']} is fewer than the "
                           f"{head} head's conversations + heldout = {wanted}")


def _check_options(key_of, method: str, options: dict, vocab_size: int | None, suspects: dict | None = None) -> None:
    """`method`'s head built with `options` as its job would build it; an error names the config key of
    the option among `suspects` (default: all) that fails on its own (`key_of(option)`; `key_of(None)`
    when none does)."""
    try:
        check_head_options(method, options, vocab_size)
    except Clover2Error as error:
        suspects = options if suspects is None else suspects
        culprit = next((option for option in suspects if _fails(method, {option: suspects[option]}, vocab_size)), None)
        raise Clover2Error(f"config key '{key_of(culprit)}': {error}") from None


def _fails(method: str, options: dict, vocab_size: int | None) -> bool:
    try:
        check_head_options(method, options, vocab_size)
    except Clover2Error:
        return True
    return False


def head_options(config: dict, head: str, changes: dict | None = None) -> dict:
    """The options `head` trains with: `training.options`, then `heads.<head>.options`, then `changes`."""
    return {**(config["training"].get("options") or {}), **_own_options(config, head), **(changes or {})}


def _own_options(config: dict, head: str) -> dict:
    return (config["heads"][head] or {}).get("options") or {}


def _option_key(config: dict, head: str, option: str | None) -> str:
    """Where a head's option comes from: `heads.<head>.options.<option>` or `training.options.<option>`."""
    if option is None:
        return f"heads.{head}.options"
    return f"heads.{head}.options.{option}" if option in _own_options(config, head) else f"training.options.{option}"


def _under(key: str):
    """`key_of` for options set under `key`: `key.<option>`, or `key` itself when no option alone fails."""
    return lambda option: f"{key}.{option}" if option else key


def _check_drafting_values(config: dict, vocab_size: int | None) -> None:
    """Each drafting value a bench, losslessness or sweep job decodes with, on the head it loads."""
    sweep = (config.get("sweep") or {}).get("methods", {})
    for name in config["methods"]:
        head, method = head_of(config, name), decodes_as(config, name)
        if head is None:
            continue
        trained = head_options(config, head)
        own = trained if head == method else head_class(method).options_from(head, trained)
        drafting = {k: v for k, v in drafting_options(config, name).items() if v != AUTO}  # a chosen tree is always valid
        _check_options(_under(f"methods.{name}.drafting"), method, own | drafting, vocab_size, drafting)
        for option, values in (sweep.get(name) or {}).items():
            for value in values:
                if value == AUTO:
                    continue
                _check_options(lambda _, key=f"sweep.methods.{name}.{option}": key, method,
                               own | drafting | {option: value}, vocab_size, {option: value})


def _check_head(name: str, method: str, head: str | None, heads: dict) -> None:
    key = f"methods.{name}.head"
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


def _check_drafting(key: str, method: str, options: dict) -> None:
    """Drafting options (option -> value, or a sweep's list of values) change a trained head's tree when
    decoding: a method without a head has none. Their values are checked on the head itself
    (`_check_drafting_values`)."""
    if not options:
        return
    if method in METHODS:
        raise Clover2Error(f"config key '{key}': {method} drafts without a trained head, so it has no drafting options")
    allowed, planned = head_class(method).drafting_options, head_class(method).planned_options
    for option in options:
        if option not in allowed:
            raise Clover2Error(f"config key '{key}.{option}': {method} heads can only change {', '.join(sorted(allowed))} when decoding")
    chosen = _auto_options(options)
    if chosen - planned:
        option = sorted(chosen - planned)[0]
        raise Clover2Error(f"config key '{key}.{option}': a {method} head's tree is chosen for the machine through "
                           f"{' and '.join(sorted(planned))} ({option}: {AUTO} is not one of them)")
    if chosen and chosen != planned:
        missing = sorted(planned - chosen)[0]
        raise Clover2Error(f"config key '{key}.{missing}': a {method} head's {' and '.join(sorted(planned))} are chosen "
                           f"together; set {missing} to {AUTO} as well")


def _check_sweep(sweep: dict, config: dict) -> None:
    for name, options in sweep["methods"].items():
        key = f"sweep.methods.{name}"
        if name not in config["methods"] or decodes_as(config, name) in METHODS:
            raise Clover2Error(f"config key '{key}': {name!r} is not a key of 'methods' that drafts with a trained head")
        _check_drafting(key, decodes_as(config, name), options)


def _check_ablation(ablation: dict, config: dict, vocab_size: int | None) -> None:
    """The ablated method trains as `heads.<method>` does and drafts as `methods.<method>` does; every
    variant's options are options of that head."""
    method = ablation["method"]
    if method not in config["heads"] or method not in config["methods"] or head_of(config, method) != method:
        raise Clover2Error(
            f"config key 'ablation.method': {method!r} must be a key of 'heads' and of 'methods' drafting with its own head"
        )
    for variant, options in ablation["variants"].items():
        if variant == method:
            raise Clover2Error(f"config key 'ablation.variants.{variant}': the full {method} is benched already; name variants by their change")
        _check_options(_under(f"ablation.variants.{variant}"), method, head_options(config, method, options), vocab_size, options)


def ablation_variants(config: dict) -> dict[str, dict]:
    """Every variant's options, the full method (no change) first."""
    ablation = config["ablation"]
    return {ablation["method"]: {}, **ablation["variants"]}


def ablation_head_dir(config: dict, variant: str) -> str:
    """The full method's variant is the main head; every other variant trains its own."""
    if variant == config["ablation"]["method"]:
        return head_dir(config, variant)
    return f"{_root(config)}/ablation/{variant}/head"


def ablation_bench_file(config: dict, variant: str) -> str:
    return f"{_root(config)}/ablation/{variant}/bench.jsonl"


def ablation_files(config: dict) -> list[str]:
    """Every variant's bench file and head directory; none without an 'ablation' section."""
    variants = ablation_variants(config) if config.get("ablation") else {}
    return [*(ablation_bench_file(config, v) for v in variants), *(ablation_head_dir(config, v) for v in variants)]


def ablation_report_flags(config: dict) -> str:
    variants = ablation_variants(config) if config.get("ablation") else {}
    if not variants:
        return ""
    # One flag each, its values listed: a repeated nargs flag would keep only its last use.
    return " ".join(["--ablation-bench", *(f"{v}={ablation_bench_file(config, v)}" for v in variants),
                     "--ablation-heads", *(f"{v}={ablation_head_dir(config, v)}" for v in variants)])


def ablation_questions(config: dict) -> int:
    return (config.get("ablation") or {}).get("questions", config["bench"]["questions"])


def temperature_label(value: float) -> str:
    """0 -> "0", 1.0 -> "1", 0.7 -> "0.7": the {temperature} wildcard."""
    return f"{float(value):g}"


def train_flags(config: dict, head: str, changes: dict | None = None) -> str:
    """`clover2 train` flags: the shared `training` settings overridden by `heads.<head>` (head options key
    by key), and then by `changes` (an ablation variant's options)."""
    options = head_options(config, head, changes)
    return " ".join([_flags(_train_settings(config, head)), *(f"--option {key}={value}" for key, value in options.items())])


def job_resources(config: dict, processes: int = 1) -> dict[str, int]:
    """What a job that loads the target asks a scheduler for, beside its threads: one GPU per process on
    CUDA, and `job_mem_mb` per process. A site's profile adds only what is its own (partition, account)."""
    gpus = processes if config["device"].startswith("cuda") else 0
    return {"gpu": gpus, "mem_mb": config.get("job_mem_mb", 8000) * processes}


def train_launcher(config: dict) -> str:
    """The command that runs `train`: clover2 itself, or accelerate launch with `train_processes` processes
    (accelerate's --multi_gpu is the flag that starts them; on a CPU they train with gloo; the precision is
    clover2 train's own: bf16 autocast on CUDA)."""
    processes = config.get("train_processes", 1)
    if processes == 1:
        return "clover2"
    return f"accelerate launch --multi_gpu --num_processes {processes} --num_machines 1 --dynamo_backend no -m clover2.cli"


def teacher_flags(config: dict) -> str:
    """`clover2 cache-teacher` flags from the `teacher` section."""
    return _flags(config.get("teacher") or {})


def _flags(settings: dict) -> str:
    """A config section as command-line flags: KEY: VALUE -> --key VALUE."""
    return " ".join(f"--{key.replace('_', '-')} {value}" for key, value in settings.items())


def head_of(config: dict, method: str) -> str | None:
    return (config["methods"][method] or {}).get("head")


def decodes_as(config: dict, name: str) -> str:
    """The registered method a key of 'methods' decodes with: its `method`, or the key itself (a second
    key for one head, e.g. eagle_top8: {method: eagle, ...}, benches another tree of it in the same jobs)."""
    return (config["methods"].get(name) or {}).get("method", name)


def _root(config: dict) -> str:
    return f"results/{config['target']['name']}"


def head_dir(config: dict, head: str) -> str:
    return f"{_root(config)}/heads/{head}"


def method_heads(config: dict, methods: list[str]) -> dict[str, str]:
    """method -> its head directory, for the `methods` that draft with a trained head."""
    return {m: head_dir(config, head_of(config, m)) for m in methods if head_of(config, m)}


def drafting_options(config: dict, method: str) -> dict:
    return (config["methods"][method] or {}).get("drafting") or {}


# A method's drafting option `tree: auto` (or a sweep's value `auto`): the tree `clover2 choose-tree`
# picks for its head on this machine, from the head's acceptance profile and the calibrate job's costs.
AUTO = "auto"


def costs_file(config: dict) -> str:
    return f"{_root(config)}/costs.json"


def tree_file(config: dict, method: str) -> str:
    return f"{_root(config)}/trees/{method}.json"


def _auto_options(options: dict) -> set[str]:
    """The drafting options (or a sweep's lists of values) set to `auto`."""
    return {option for option, value in options.items() if AUTO in (value if isinstance(value, list) else [value])}


def planned_methods(config: dict) -> list[str]:
    """The methods that draft a chosen tree somewhere: in the benches, or as a sweep's value."""
    sweep = (config.get("sweep") or {}).get("methods", {})
    return [m for m in config["methods"] if _auto_options(drafting_options(config, m)) or _auto_options(sweep.get(m) or {})]


def tree_files(config: dict, methods: list[str], changes: dict | None = None) -> list[str]:
    """The chosen-tree files the `methods` decode with (`changes`: a sweep's value)."""
    return [tree_file(config, m) for m in methods if _auto_options(drafting_options(config, m) | (changes or {}))]


def acceptance_file(config: dict, method: str) -> str:
    """The acceptance profile a method's tree is chosen from: the one training left in its head directory,
    or, for a head whose tree is dynamic, the table the tree_acceptance job measures with the method's
    own drafting options (a dynamic tree depends on them, e.g. EAGLE-2's top_k)."""
    source = acceptance_source(config, method)
    return source if source.endswith(".json") else f"{source}/acceptance.json"


def acceptance_source(config: dict, method: str) -> str:
    """What makes a method's acceptance file: its head directory (training), or that file (tree_acceptance)."""
    if head_class(decodes_as(config, method)).dynamic_trees:
        return f"{_root(config)}/acceptance/{method}.json"
    return head_dir(config, head_of(config, method))


def fixed_drafting_flags(config: dict, method: str, prefix: str = "") -> str:
    """--draft-option for each of a method's drafting options that is not chosen for the machine."""
    return " ".join(f"--draft-option {prefix}{key}={value}" for key, value in drafting_options(config, method).items()
                    if value != AUTO)


def acceptance_flags(config: dict, method: str) -> str:
    """clover2 acceptance's flags for a method's dynamic tree: the method, its fixed drafting options, and the
    held-out conversations its head was trained without."""
    head = head_of(config, method)
    heldout = TrainConfig(method=head, **_train_settings(config, head)).resolved().heldout
    return (f"--method {decodes_as(config, method)} {fixed_drafting_flags(config, method)} --heldout {heldout} "
            f"--max-nodes {_max_nodes(config)}")


def _max_nodes(config: dict) -> int:
    """The most drafted nodes a chosen tree may have (`planning.max_nodes`)."""
    return (config.get("planning") or {}).get("max_nodes", 63)


def calibrate_flags(config: dict) -> str:
    heads = " ".join(f"--head {m}={head_dir(config, head_of(config, m))} --method {m}={decodes_as(config, m)} "
                     f"{fixed_drafting_flags(config, m, f'{m}:')}" for m in planned_methods(config))
    settings = config.get("planning") or {}
    return (f"{heads} --prompt-tokens {settings.get('prompt_tokens', 300)} --repeats {settings.get('repeats', 3)} "
            f"--new-tokens {settings.get('new_tokens', 24)} --max-tokens {_max_nodes(config) + 1}")


def choose_flags(config: dict) -> str:
    settings = config.get("planning") or {}
    return " ".join(f"--{key.replace('_', '-')} {settings[key]}" for key in ("max_nodes", "max_depth") if key in settings)


def method_flags(config: dict, methods: list[str], changes: dict | None = None, heads: dict[str, str] | None = None) -> str:
    """`--method M` for each method, `--head M=DIR` for each one that drafts with a trained head (`heads`
    overrides the directories), and `--draft-option M:KEY=VALUE` for each of its drafting options, those
    of `changes` (a sweep's) last; `tree=auto` names the method's chosen-tree file."""
    heads = method_heads(config, methods) | (heads or {})
    drafting = [f"--draft-option {m}:{key}={tree_file(config, m) if value == AUTO else value}"
                for m in heads for key, value in (drafting_options(config, m) | (changes or {})).items()]
    named = [m if decodes_as(config, m) == m else f"{m}={decodes_as(config, m)}" for m in methods]
    return " ".join([*(f"--method {m}" for m in named), *(f"--head {m}={d}" for m, d in heads.items()), *drafting])


def bench_questions(config: dict, temperature: str | float) -> int:
    """Questions per task at a temperature: `sampled_questions` (default: all of them) at T > 0."""
    bench = config["bench"]
    return bench["questions"] if float(temperature) == 0 else bench.get("sampled_questions", bench["questions"])


def max_new_tokens(config: dict, task: str) -> int:
    """A turn's token budget on `task`: `max_new_tokens`, or the task's own in `task_max_new_tokens`."""
    bench = config["bench"]
    return (bench.get("task_max_new_tokens") or {}).get(task, bench["max_new_tokens"])


def _runs(config: dict, section: str, suffix: str) -> list[str]:
    """results/<target>/<section>/<task>/T<temperature><suffix>: one job per task and temperature."""
    settings = config[section]
    return [
        f"{_root(config)}/{section}/{task}/T{temperature_label(t)}{suffix}"
        for task in settings["tasks"]
        for t in settings["temperatures"]
    ]


def bench_files(config: dict) -> list[str]:
    return _runs(config, "bench", ".jsonl")


def lossless_files(config: dict) -> list[str]:
    return _runs(config, "lossless", ".json")


def sweep_files(config: dict) -> list[str]:
    """results/<target>/sweep/<method>/<option>/<value>.jsonl (every sweep task); none without a 'sweep' section."""
    methods = (config.get("sweep") or {}).get("methods", {})
    return [
        f"{_root(config)}/sweep/{method}/{option}/{value}.jsonl"
        for method, options in methods.items()
        for option, values in options.items()
        for value in values
    ]


def step_cost_files(config: dict) -> list[str]:
    """results/<target>/step_cost.json when the config has a 'step_cost' section."""
    return [f"{_root(config)}/step_cost.json"] if config.get("step_cost") else []


def step_cost_flags(config: dict) -> str:
    cost = config["step_cost"]
    return (f"--shapes {' '.join(cost['shapes'])} --prompts {cost.get('prompts', 3)} "
            f"--prompt-tokens {cost.get('prompt_tokens', 256)} --new-tokens {cost.get('new_tokens', 64)}")


def sweep_questions(config: dict) -> int:
    return (config.get("sweep") or {}).get("questions", config["bench"]["questions"])


def question_tasks(config: dict) -> list[str]:
    sweep_tasks = (config.get("sweep") or {}).get("tasks", [])
    ablation_tasks = (config.get("ablation") or {}).get("tasks", [])
    return sorted({*config["bench"]["tasks"], *config["lossless"]["tasks"], *sweep_tasks, *ablation_tasks})


def question_count(config: dict) -> int:
    """The questions each task's file holds: as many as the largest stage reads (each reads the first N)."""
    return max(config["bench"]["questions"], config["lossless"]["questions"], sweep_questions(config), ablation_questions(config))


def question_file(task: str) -> str:
    return f"results/questions/{task}.jsonl"


def question_files(config: dict) -> list[str]:
    return [question_file(task) for task in question_tasks(config)]


def head_dirs(config: dict) -> list[str]:
    return [head_dir(config, head) for head in config["heads"]]


def stage_times(roots: list[Path]) -> pd.DataFrame:
    """Per workflow stage, from the Snakemake benchmark files under `roots` (…/benchmarks/<stage>/…tsv).

    Job seconds add up the jobs' own wall times; the span runs from the first job's start to the
    last one's end (each file is written as its job ends), so it shows what parallel jobs overlapped.
    For a job whose output holds decoding records (…/<stage>/….jsonl beside …/benchmarks/), the
    records' own wall times are its decoding seconds; the rest of the job (starting Python, loading
    the target and heads, warming up) is its start-up share.
    """
    rows = []
    for path in sorted(p for root in roots for p in Path(root).rglob("*.tsv") if "benchmarks" in p.parent.parts):
        relative = path.relative_to(_benchmarks_dir(path))
        try:
            measured = pd.read_csv(path, sep="\t")
            seconds, rss = float(measured["s"].iloc[0]), float(measured["max_rss"].iloc[0])
        except (ValueError, KeyError, IndexError) as error:
            raise Clover2Error(f"{path}: not a Snakemake benchmark file ({error!r})") from None
        end = path.stat().st_mtime
        records = (_benchmarks_dir(path).parent / relative).with_suffix(".jsonl")
        rows.append({"stage": relative.parts[0].removesuffix(".tsv"), "seconds": seconds, "start": end - seconds, "end": end,
                     "max_rss_mb": rss, "decode_seconds": _decode_seconds(records)})
    if not rows:
        raise Clover2Error(f"{', '.join(map(str, roots))}: no Snakemake benchmark files (…/benchmarks/<stage>/….tsv)")
    frame = pd.DataFrame(rows)
    jobs = frame.assign(recorded_seconds=frame["seconds"].where(frame["decode_seconds"].notna())).groupby("stage")
    table = pd.DataFrame({
        "jobs": jobs.size(),
        "job_seconds": jobs["seconds"].sum(),
        "median_job_seconds": jobs["seconds"].median(),
        "span_seconds": jobs["end"].max() - jobs["start"].min(),
        "max_rss_mb": jobs["max_rss_mb"].max(),
        "startup_share": 1 - jobs["decode_seconds"].sum(min_count=1) / jobs["recorded_seconds"].sum(min_count=1),
    })
    return table.sort_values("span_seconds", ascending=False)


def _decode_seconds(records: Path) -> float:
    """Σ wall seconds of the decoded turns in a bench file; NaN when the job wrote none."""
    if not records.is_file():
        return float("nan")
    return float(sum(turn["wall_seconds"] for line in records.read_text(encoding="utf-8").splitlines() for turn in json.loads(line)["turns"]))


def _benchmarks_dir(path: Path) -> Path:
    return next(parent for parent in path.parents if parent.name == "benchmarks")
