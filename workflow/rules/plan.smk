# Trees chosen for this machine (drafting option `tree: auto`). Training leaves each head's acceptance
# profile in its directory; the calibrate job measures this machine's costs (verification per token
# count, the plain step, each planned head's draft and bookkeeping time per tree depth and size) with
# the bench's dtype and threads; choose_tree picks, per method, the tree with the most predicted
# tokens/s (or no drafting), which the bench, losslessness and sweep jobs then decode with.
PLANNED = wf.planned_methods(config)


rule calibrate:
    input:
        heads=sorted({wf.head_dir(config, wf.head_of(config, m)) for m in PLANNED}),
        target=f"{TARGET}/target",
    output:
        wf.costs_file(config),
    params:
        flags=wf.calibrate_flags(config),
    threads: config["threads"]
    resources:
        **wf.job_resources(config),
    log:
        f"{TARGET}/logs/calibrate.log",
    benchmark:
        f"{TARGET}/benchmarks/calibrate.tsv",
    shell:
        "clover2 calibrate --target {input.target} {params.flags} --threads {threads} --device {config[device]} "
        "--dtype {config[dtype]} --out {output} > {log} 2>&1"


# A head whose tree is dynamic (EAGLE-2's) has no rank-path profile from training: its table of tree sizes
# (predicted τ per depth bound and kept nodes) is measured for the method, with its own drafting options,
# on the held-out conversations of the teacher pass.
rule tree_acceptance:
    input:
        head=lambda w: wf.head_dir(config, wf.head_of(config, w.method)),
        target=f"{TARGET}/target",
        teacher=TEACHER,
    output:
        f"{TARGET}/acceptance/{{method}}.json",
    params:
        flags=lambda w: wf.acceptance_flags(config, w.method),
    threads: config["threads"]
    resources:
        **wf.job_resources(config),
    log:
        f"{TARGET}/logs/acceptance/{{method}}.log",
    benchmark:
        f"{TARGET}/benchmarks/acceptance/{{method}}.tsv",
    shell:
        "clover2 acceptance --target {input.target} --head {input.head} --teacher-cache {input.teacher} {params.flags} "
        "--threads {threads} --device {config[device]} --dtype {config[dtype]} --out {output} > {log} 2>&1"


rule choose_tree:
    input:
        costs=wf.costs_file(config),
        acceptance=lambda w: wf.acceptance_source(config, w.method),
    output:
        f"{TARGET}/trees/{{method}}.json",
    params:
        acceptance=lambda w: wf.acceptance_file(config, w.method),
        limits=lambda w: wf.choose_flags(config),
    log:
        f"{TARGET}/logs/trees/{{method}}.log",
    shell:
        "clover2 choose-tree --costs {input.costs} --head-name {wildcards.method} --acceptance {params.acceptance} "
        "{params.limits} --out {output} > {log} 2>&1"
