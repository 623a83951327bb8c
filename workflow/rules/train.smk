# One draft head per key of `heads`, by distillation from the frozen target. An interrupted job
# resumes from `<head>.partial/` (clover2 train's checkpoints); the head directory appears atomically.


rule train:
    input:
        target=f"{TARGET}/target",
    output:
        directory(f"{TARGET}/heads/{{head}}"),
    params:
        launcher=config.get("train_launcher", "clover2"),
        flags=lambda wildcards: wf.train_flags(config, wildcards.head),
        data=f"--data {config['training_data']}" if config.get("training_data") else "",
    threads: config["threads"]
    resources:
        gpu=1 if config["device"].startswith("cuda") else 0,
    log:
        f"{TARGET}/logs/train/{{head}}.log",
    benchmark:
        f"{TARGET}/benchmarks/train/{{head}}.tsv",
    shell:
        "{params.launcher} train --target {input.target} --method {wildcards.head} --out {output} {params.data} "
        "{params.flags} --threads {threads} --device {config[device]} > {log} 2>&1"
