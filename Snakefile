# clover2-bench: from a config to every artefact. Rules only wire files to `clover2` commands.
#   snakemake --cores all                       the embedded default (SmolLM2-135M-Instruct on CPU), paper/main.pdf
#   snakemake --cores all results/tables.tex    only what the tables need
#   snakemake --configfile workflow/config/smoke.yaml --cores all     CI's smoke run
#   snakemake --profile workflow/profiles/slurm --configfile workflow/config/paper-vicuna7b.yaml
import os
from pathlib import Path

from snakemake.utils import min_version, validate

from clover2 import workflow as wf
from clover2.sources import anchor_mirror

min_version("9.0")

# A --configfile replaces the embedded default: the configfile directive would merge the two,
# leaking the default's keys (say, a training time budget) into every other config.
if not workflow.config_settings.configfiles:

    configfile: f"{workflow.basedir}/workflow/config/default.yaml"


# A relative data mirror means relative to where the user typed the command (the shell's $PWD), not
# to the --directory Snakemake moved to; jobs inherit the absolute path.
anchor_mirror(Path(os.environ.get("PWD", os.getcwd())))
wf.check_schema(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")  # one line naming the key
validate(config, "workflow/schemas/config.schema.yaml")  # relative to this Snakefile; fills in the defaults
wf.check_config(config)

TARGET = f"results/{config['target']['name']}"


wildcard_constraints:
    method="[A-Za-z0-9_-]+",
    head="[A-Za-z0-9_-]+",
    task="[A-Za-z0-9_]+",
    temperature="[0-9.]+",
    option="[A-Za-z0-9_]+",
    value="[A-Za-z0-9_.]+",
    variant="[A-Za-z0-9_]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/target.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/tables.tex",
        "results/tables.md",
        "paper/main.pdf",
