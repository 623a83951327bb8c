# One draft head per key of `heads`, by distillation from the frozen target. An interrupted job
# resumes from `<head>.partial/` (clover2 train's checkpoints); the head directory appears atomically.
# With a `teacher:` section the target's signals (u, h, top-k logits) are computed once, by the
# teacher rule, and every head trains from them without running the target.
TEACHER = [f"{TARGET}/teacher"] if config.get("teacher") else []


rule teacher:
    input:
        target=f"{TARGET}/target",
    output:
        directory(f"{TARGET}/teacher"),
    params:
        flags=wf.teacher_flags(config),
        data=f"--data {config['training_data']}" if config.get("training_data") else "",
    # The config's threads, as every job: `workflow.cores` is unknown to a cluster run (Snakemake refuses
    # it) and is the node's whole CPU count inside a Slurm job step. Locally the step-cost job runs beside
    # it, whose timings a teacher on every core would disturb.
    threads: config["threads"]
    resources:
        **wf.job_resources(config),
    log:
        f"{TARGET}/logs/teacher.log",
    benchmark:
        f"{TARGET}/benchmarks/teacher.tsv",
    shell:
        "clover2 cache-teacher --target {input.target} --out {output} {params.data} {params.flags} "
        "--threads {threads} --device {config[device]} --dtype {config[dtype]} > {log} 2>&1"



rule train:
    input:
        target=f"{TARGET}/target",
        teacher=TEACHER,
    output:
        directory(f"{TARGET}/heads/{{head}}"),
    params:
        method=lambda wildcards: wildcards.head,
        launcher=wf.train_launcher(config),
        flags=lambda wildcards, input: wf.train_flags(config, wildcards.head)
        + "".join(f" --teacher-cache {path}" for path in input.teacher),
        data=f"--data {config['training_data']}" if config.get("training_data") else "",
    threads: config["threads"] * config["train_processes"]
    resources:
        **wf.job_resources(config, config["train_processes"]),
    log:
        f"{TARGET}/logs/train/{{head}}.log",
    benchmark:
        f"{TARGET}/benchmarks/train/{{head}}.tsv",
    shell:
        "{params.launcher} train --target {input.target} --method {params.method} --out {output} {params.data} "
        "{params.flags} --threads {config[threads]} --device {config[device]} > {log} 2>&1"


# Ablation variants: the ablated method's head with each variant's options, at the main head's budget
# and from the same teacher pass (the full method's variant is the main head itself).
ABLATION_METHOD = (config.get("ablation") or {}).get("method", "")


use rule train as train_ablation with:
    output:
        directory(f"{TARGET}/ablation/{{variant}}/head"),
    params:
        method=ABLATION_METHOD,
        launcher=wf.train_launcher(config),
        flags=lambda wildcards, input: wf.train_flags(config, ABLATION_METHOD, config["ablation"]["variants"][wildcards.variant])
        + "".join(f" --teacher-cache {path}" for path in input.teacher),
        data=f"--data {config['training_data']}" if config.get("training_data") else "",
    log:
        f"{TARGET}/logs/ablation/{{variant}}/train.log",
    benchmark:
        f"{TARGET}/benchmarks/ablation/{{variant}}/train.tsv",
