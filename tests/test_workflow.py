"""The Snakemake workflow: every config's DAG builds, bad configs fail before any job, the smoke run's outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from clover2.errors import Clover2Error
from clover2.reporting.tables import build_tables
from clover2.workflow import (
    ablation_report_flags,
    acceptance_file,
    acceptance_flags,
    calibrate_flags,
    check_config,
    job_resources,
    method_flags,
    planned_methods,
    stage_times,
    train_flags,
    train_launcher,
    tree_files,
)
from workflow_runs import ROOT, job_counts, snakemake
from workflow_runs import config as _config

CONFIGS = ["default", "smoke", "paper-vicuna7b", "paper-llama3-8b"]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds_its_whole_dag(name, tmp_path):
    result = snakemake("-n", "--cores", "2", "--configfile", str(ROOT / "workflow/config" / f"{name}.yaml"), workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    config = _config(name)
    bench, lossless = config["bench"], config["lossless"]
    counts = job_counts(result.stdout)
    # One job per task and temperature decodes every method; one job writes every question file.
    assert counts["bench"] == len(bench["tasks"]) * len(bench["temperatures"])
    assert counts["lossless"] == len(lossless["tasks"]) * len(lossless["temperatures"])
    assert counts["train"] == len(config["heads"])
    assert counts.get("teacher", 0) == (1 if config.get("teacher") else 0)  # one teacher pass for every head
    assert counts["target"] == counts["questions"] == counts["report"] == counts["all"] == 1
    swept = (config.get("sweep") or {"methods": {}})["methods"].values()  # one job per method and value
    assert counts.get("sweep", 0) == sum(len(values) for options in swept for values in options.values())
    planned = planned_methods(config)  # one calibration for every head that drafts a chosen tree, one choice each
    assert counts.get("calibrate", 0) == (1 if planned else 0) and counts.get("choose_tree", 0) == len(planned)


def test_a_chosen_tree_is_passed_to_the_bench_as_its_file_and_a_fixed_one_by_name():
    config = _config("default")
    flags = method_flags(config, ["eagle", "eagle2"])
    assert "--draft-option eagle:tree=results/smollm2-135m-instruct/trees/eagle.json" in flags
    assert "--draft-option eagle2:total_tokens=results/smollm2-135m-instruct/trees/eagle2.json" in flags
    assert "--draft-option eagle2:top_k=4" in flags
    assert tree_files(config, ["eagle", "eagle2", "eagle_top8"]) == [f"results/smollm2-135m-instruct/trees/{m}.json" for m in ("eagle", "eagle2")]
    assert method_flags(config, ["eagle"], {"tree": "chain_3"}).endswith("--draft-option eagle:tree=chain_3")
    assert tree_files(config, ["eagle"], {"tree": "chain_3"}) == []
    assert set(planned_methods(config)) == {"medusa", "clover", "eagle", "eagle2", "clover2"}
    assert "--head eagle=results/smollm2-135m-instruct/heads/eagle" in calibrate_flags(config)
    # EAGLE-2's dynamic tree: its head timed as EAGLE-2 with its own top_k, its table measured for the method
    assert "--head eagle2=results/smollm2-135m-instruct/heads/eagle --method eagle2=eagle2 --draft-option eagle2:top_k=4" in calibrate_flags(config)
    assert acceptance_file(config, "eagle2") == "results/smollm2-135m-instruct/acceptance/eagle2.json"
    assert acceptance_file(config, "eagle") == "results/smollm2-135m-instruct/heads/eagle/acceptance.json"
    assert acceptance_flags(config, "eagle2").startswith("--method eagle2 --draft-option top_k=4 --heldout 16")


def test_a_second_key_for_one_head_decodes_as_its_method_under_its_own_name():
    config = _config("default")
    flags = method_flags(config, ["eagle", "eagle_top8"])
    assert "--method eagle --method eagle_top8=eagle" in flags
    assert "--head eagle_top8=results/smollm2-135m-instruct/heads/eagle" in flags
    assert "--draft-option eagle_top8:tree=eagle_top_8" in flags
    config["methods"]["eagle_top8"]["method"] = "eagle3"
    with pytest.raises(Clover2Error, match="'methods.eagle_top8.method': unknown method 'eagle3'"):
        check_config(config)


def test_the_ablation_benches_every_variant_on_its_own_fixed_tree(tmp_path):
    result = snakemake("-n", "-p", "--cores", "2", "--forceall", workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    ablation = [line for line in result.stdout.splitlines() if "clover2 bench" in line and "/ablation/" in line]
    assert ablation and all("--draft-option clover2:tree=eagle_top_8" in line and "trees/" not in line for line in ablation)
    main = [line for line in result.stdout.splitlines() if "clover2 bench" in line and "/bench/" in line]
    assert main and all("--aa-questions 2" in line for line in main)


def test_the_default_dag_has_at_most_65_jobs(tmp_path):
    result = snakemake("-n", "--cores", "2", workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    counts = job_counts(result.stdout)
    assert counts["total"] <= 65
    variants = _config("default")["ablation"]["variants"]
    assert counts["train_ablation"] == len(variants) and counts["bench_ablation"] == len(variants) + 1  # + the full method


def test_a_relative_data_mirror_is_anchored_where_the_command_was_typed(tmp_path):
    # The README exports CLOVER2_DATA_MIRROR=../shared/data from the clone; Snakemake then works in
    # another directory (--directory), where that relative path would point nowhere.
    mirror = Path(os.environ["CLOVER2_DATA_MIRROR"])
    relative = os.path.relpath(mirror, ROOT)
    env = {**os.environ, "CLOVER2_DATA_MIRROR": relative, "PWD": str(ROOT)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    config = ROOT / "workflow/config/smoke.yaml"
    command = [sys.executable, "-m", "snakemake", "results/questions/gsm8k.jsonl", "-s", str(ROOT / "Snakefile"),
               "--directory", str(tmp_path), "--cores", "1", "--configfile", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((tmp_path / "results/questions/gsm8k.jsonl").read_text().splitlines()) == _config("smoke")["bench"]["questions"]


def test_the_default_config_is_used_without_a_configfile(tmp_path):
    result = snakemake("-n", "--cores", "2", workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "results/smollm2-135m-instruct/bench/mt_bench/T0.jsonl" in result.stdout


BAD = {
    "unknown method": ({"methods": {"medusa": {"head": "medusa"}, "lookahead": None}}, "methods.lookahead"),
    "unknown task": ({"bench": {"tasks": ["mt_bench", "squad"]}}, "bench.tasks"),
    "negative count": ({"bench": {"questions": -3}}, "questions"),
    "missing target": ({"target": None}, "target"),
    "head of another method": ({"methods": {"clover2": {"head": "medusa"}}}, "methods.clover2.head"),
    "misspelt key": ({"bench": {"repeat": 3}}, "repeat"),
    "token budget of a task not benched": ({"bench": {"task_max_new_tokens": {"qa": 64}}}, "bench.task_max_new_tokens"),
    "sweep over a training option": ({"sweep": {"methods": {"eagle2": {"noise": [1]}}}}, "sweep.methods.eagle2.noise"),
    "sweep of a method without a head": ({"sweep": {"methods": {"vanilla": {"tree": ["chain_3"]}}}}, "sweep.methods.vanilla"),
    "sweep of an unknown tree": ({"sweep": {"methods": {"eagle": {"tree": ["chain_99"]}}}}, "sweep.methods.eagle.tree"),
    "sweep value unfit for a path": ({"sweep": {"methods": {"eagle": {"tree": ["a/b"]}}}}, "sweep.methods.eagle.tree"),
    "drafting option of a method without a head": ({"methods": {"self": {"drafting": {"tree": "chain_3"}}}}, "methods.self.drafting"),
    "ablation of an unknown option": ({"ablation": {"variants": {"x": {"layers": 1}}}}, "ablation.variants.x.layers"),
    "ablation variant named as the method": ({"ablation": {"variants": {"clover2": {"augmenting_layers": 1}}}}, "ablation.variants.clover2"),
    "ablation of a method without its head": ({"ablation": {"method": "eagle2"}}, "ablation.method"),
    "ablation on an unknown task": ({"ablation": {"tasks": ["squad"]}}, "ablation.tasks"),
    "ablation variant unfit for a path": ({"ablation": {"variants": {"a/b": {"augmenting_layers": 1}}}}, "a/b"),
}


@pytest.mark.parametrize("case", BAD, ids=str)
def test_a_bad_config_fails_before_any_job_naming_the_key(case, tmp_path):
    change, key = BAD[case]
    config = _config("smoke")
    for section, value in change.items():
        if value is None:
            config.pop(section)
        elif isinstance(config.get(section), dict) and section != "methods":
            config[section].update(value)
        else:
            config[section] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--cores", "1", "--configfile", str(path), workdir=tmp_path)
    assert result.returncode != 0
    assert key in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()


# A value the jobs' own validators refuse: (where in the smoke config, the value, the key the error names).
REFUSED_VALUES = {
    "an ablation option's value": ("ablation.variants.sideways", {"extraction_order": "sideways"},
                                   "ablation.variants.sideways.extraction_order"),
    "a dynamic tree of negative size": ("methods.eagle2.drafting", {"total_tokens": -3}, "methods.eagle2.drafting.total_tokens"),
    "an unknown tree in training.options": ("training.options.tree", "nonesuch", "training.options.tree"),
    "an unknown training option": ("training.options.colour", "blue", "training.options.colour"),
    "an EAGLE ablation variant's unknown option": ("ablation", {"method": "eagle", "tasks": ["mt_bench"], "variants": {"x": {"layers": 2}}},
                                                   "ablation.variants.x.layers"),
    "a teacher pass smaller than the training set": ("teacher.conversations", 5, "teacher.conversations"),
    "an unknown schedule": ("training.schedule", "bogus", "training.schedule"),
    "an unknown schedule of one head": ("heads.eagle", {"schedule": "bogus"}, "heads.eagle.schedule"),
    "a draft vocabulary larger than the target's": ("training.options.draft_vocab", 100000, "training.options.draft_vocab"),
    "an unknown top-level key": ("bogus_key", 3, "(the top level)"),
    "half of a dynamic tree's size chosen": ("methods.eagle2.drafting", {"total_tokens": "auto"}, "methods.eagle2.drafting.depth"),
    "a dynamic tree's top_k chosen": ("methods.eagle2.drafting", {"top_k": "auto"}, "methods.eagle2.drafting.top_k"),
}


@pytest.mark.parametrize("case", REFUSED_VALUES, ids=str)
def test_a_value_the_jobs_would_refuse_fails_the_dry_run_in_one_line(case, tmp_path):
    where, value, key = REFUSED_VALUES[case]
    config = _config("smoke")
    *parents, last = where.split(".")
    section = config
    for name in parents:
        section = section.setdefault(name, {})
    section[last] = value
    if case.startswith("an EAGLE ablation"):
        config["methods"]["eagle"] = {"head": "eagle"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--cores", "1", "--configfile", str(path), workdir=tmp_path)
    assert result.returncode != 0
    lines = (result.stderr + result.stdout).splitlines()
    assert any(line.startswith(f"config key '{key}': ") for line in lines), lines
    assert len(lines) <= 10
    assert not (tmp_path / "results").exists()


def test_registry_checks_name_the_key():
    config = _config("smoke") | {"baseline": "medusa"}
    with pytest.raises(Clover2Error, match="'baseline'"):
        check_config(config)


def test_a_job_asks_for_its_processes_gpus_and_memory_from_the_config(tmp_path):
    paper, smoke = _config("paper-vicuna7b"), _config("smoke")
    assert job_resources(paper) == {"gpu": 1, "mem_mb": 64000}
    assert job_resources(paper, paper["train_processes"]) == {"gpu": 4, "mem_mb": 4 * 64000}
    assert job_resources(smoke) == {"gpu": 0, "mem_mb": 8000}  # the schema's default memory, no GPU on a CPU
    assert train_launcher(smoke) == "clover2"
    paper_file = ROOT / "workflow/config/paper-vicuna7b.yaml"
    result = snakemake("-n", "-p", "--cores", "64", "--configfile", str(paper_file), workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    train = result.stdout[result.stdout.index("rule train:") :].split("\n\n")[0]
    assert "threads: 32" in train and "gpu=4" in train and "mem_mb=256000" in train  # 4 processes of 8 threads
    assert "accelerate launch --multi_gpu --num_processes 4 " in train and "--threads 8 " in train


def test_train_flags_merge_shared_and_per_head_settings():
    config = _config("smoke")
    config["heads"]["clover2"] = {"lr": 0.002, "options": {"heads": 3}}
    flags = train_flags(config, "clover2")
    assert "--max-steps 2" in flags and "--lr 0.002" in flags and "--option heads=3" in flags
    assert "--schedule constant_with_warmup" in flags
    assert "--option draft_vocab=2048" in flags  # the shared options stay unless the head overrides them


def test_stage_times_add_up_each_stage_from_snakemake_benchmark_files(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    jobs = {"t/benchmarks/bench/a/r0.tsv": (30.0, 100), "t/benchmarks/bench/b/r0.tsv": (10.0, 300), "benchmarks/report.tsv": (5.0, 50)}
    for name, (seconds, rss) in jobs.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:00:{seconds:02.0f}\t{rss}\t0\t0\t0\t0\t0\t0\t{seconds}\n")
    os.utime(tmp_path / "t/benchmarks/bench/a/r0.tsv", (1000, 1000))  # ran 970-1000
    os.utime(tmp_path / "t/benchmarks/bench/b/r0.tsv", (1005, 1005))  # ran 995-1005, overlapping
    table = stage_times([tmp_path])
    assert table.loc["bench", "jobs"] == 2 and table.loc["bench", "job_seconds"] == 40.0
    assert table.loc["bench", "span_seconds"] == 35.0 and table.loc["bench", "max_rss_mb"] == 300
    assert table.loc["report", "job_seconds"] == 5.0 and pd.isna(table.loc["report", "startup_share"])
    assert pd.isna(table.loc["bench", "startup_share"])  # no records beside the benchmark files
    turn = {"wall_seconds": 9.0}
    records = [{"turns": [turn, turn]}, {"turns": [turn]}]  # 27 s of job a's 30 s decoded (b wrote no records)
    (tmp_path / "t/bench").mkdir()
    (tmp_path / "t/bench/a").mkdir()
    (tmp_path / "t/bench/a/r0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert stage_times([tmp_path]).loc["bench", "startup_share"] == pytest.approx(3 / 30)
    (tmp_path / "t/benchmarks/bench/a/r0.tsv").write_text("not\ta benchmark\n")
    with pytest.raises(Clover2Error, match="r0.tsv: not a Snakemake benchmark file"):
        stage_times([tmp_path])


@pytest.mark.slow
def test_smoke_workflow_outputs_exist_and_parse(smoke_run):
    """The whole smoke workflow on the real SmolLM2 target (minutes): every artefact is there and reads."""
    tmp_path = smoke_run.workdir
    config = _config("smoke")
    root = tmp_path / "results" / config["target"]["name"]
    bench = sorted(root.glob("bench/*/T*.jsonl"))
    assert len(bench) == len(config["bench"]["tasks"]) * 2
    for path in bench:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert {row["method"] for row in rows} == {*config["methods"], "vanilla"}
        questions = config["bench"]["questions"] if path.name == "T0.jsonl" else config["bench"]["sampled_questions"]
        again = [row for row in rows if row.get("replicate")]  # the A/A check: plain decoding's second decodes
        assert len(rows) - len(again) == questions * (len(config["methods"]) + 1)  # one plain run per question
        assert len(again) == min(config["bench"]["aa_questions"], questions) and {row["method"] for row in again} == {"vanilla"}
    reports = sorted(root.glob("lossless/*/T*.json"))
    assert len(reports) == 2
    greedy = json.loads((root / "lossless/humaneval/T0.json").read_text())["reports"]
    assert set(greedy) == set(config["methods"]) and all(report["passed"] for report in greedy.values())
    heads = [root / "heads" / head for head in config["heads"]]
    assert all((head / "head.safetensors").is_file() for head in heads)
    teacher = json.loads((root / "teacher" / "teacher.json").read_text())
    assert teacher["examples"] == config["teacher"]["conversations"] and teacher["source"]["answers"] == "target"
    for head in heads:  # every head trained from the one teacher pass, over its draft vocabulary
        assert json.loads((head / "training.json").read_text())["config"]["teacher_cache"] == f"{root.relative_to(tmp_path)}/teacher"
        assert load_file(head / "head.safetensors")["vocab.ids"].numel() == config["training"]["options"]["draft_vocab"]
    tables, _ = build_tables(bench, reports, heads)
    assert set(config["methods"]) <= set(tables["speedup_T0"].index)
    latex = (tmp_path / "results" / "tables.tex").read_text()
    assert latex.count(r"\begin{table}") >= len(tables) and r"\toprule" in latex
    assert "quality" in latex and (tmp_path / "paper" / "main.tex").is_file()
    assert len(list((tmp_path / "paper" / "figures").glob("*.png"))) == 8  # with the sweep, verify-cost, learning curves, ablation
    assert "tree_size" in latex and {"ablation", "step_cost"} <= set(stage_times([tmp_path / "results"]).index)
    ablation = (tmp_path / "paper" / "tables" / "ablation_training.tex").read_text()
    assert "mlp\\_projector" in ablation and "state\\_first" not in ablation  # one variant: the projector's
    assert "\nclover2 &" in ablation  # and the full method's row beside it
    variant = json.loads((root / "ablation" / "mlp_projector" / "head" / "head.json").read_text())
    assert variant["options"]["output_projector"] == "mlp" and variant["options"]["draft_vocab"] == config["training"]["options"]["draft_vocab"]
    ablation_rows = map(json.loads, (root / "ablation" / "clover2" / "bench.jsonl").read_text().splitlines())
    assert {row["method"] for row in ablation_rows} == {"clover2", "vanilla"}
    assert [row["target"] for row in json.loads((root / "step_cost.json").read_text())["rows"]][0] == "tiny"
    assert (tmp_path / "paper" / "main.pdf").read_bytes().startswith(b"%PDF")  # built and checked by paper_pdf
    for method in planned_methods(config):  # auto, end to end: profile, costs, choice, benches that decode it
        assert (tmp_path / acceptance_file(config, method)).is_file()
        tree_file = f"results/{config['target']['name']}/trees/{method}.json"
        chosen = json.loads((tmp_path / tree_file).read_text())
        assert chosen["inputs"]["costs"].endswith("costs.json") and chosen["predicted"]["tau"] >= 1.0
        rows = [json.loads(line) for line in (root / "bench/mt_bench/T0.jsonl").read_text().splitlines()]
        options = {option for row in rows if row["method"] == method for option in row["provenance"]["config"]["draft_option"]
                   if option.startswith(f"{method}:")}
        chosen_options = {f"{method}:{key}={tree_file}" for key, value in config["methods"][method]["drafting"].items() if value == "auto"}
        assert chosen_options and chosen_options <= options
        recorded = [row["provenance"]["config"]["chosen_trees"][tree_file] for row in rows if row["method"] == method]
        tree = {key: chosen[key] for key in ("paths", "drafting") if key in chosen}
        assert recorded and all(trees | tree == trees for trees in recorded)  # the record holds the tree it decoded
    dynamic = json.loads((root / "trees" / "eagle2.json").read_text())  # EAGLE-2's size chosen from its measured table
    assert set(dynamic["drafting"]) == {"depth", "total_tokens"} and "paths" not in dynamic
    assert "Trees chosen for this machine" in latex and "A/A noise check" in latex
    assert "eagle\\_chain" in (tmp_path / "paper" / "tables" / "chosen_vs_fixed.tex").read_text()  # eagle's chosen tree against its chain


def test_ablation_report_flags_list_every_variant_under_one_flag_each():
    config = _config("default")
    config["ablation"].setdefault("method", "clover2")  # the schema's default, filled in by Snakemake's validate
    flags = ablation_report_flags(config).split()
    assert flags.count("--ablation-bench") == flags.count("--ablation-heads") == 1
    assert len(flags) == 2 + 2 * (len(config["ablation"]["variants"]) + 1)
