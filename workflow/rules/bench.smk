# Decoding. A bench job decodes one task's questions at one temperature with every method and, once
# per question, the plain baseline, interleaved in one process (the order rotates from question to
# question): every speedup is a ratio measured in one process, on one device with one thread count,
# and the start-up (loading the target and every head, warming up) is paid once per job. The baseline
# decodes the first `aa_questions` a second time (the A/A noise check). Warm-up runs are excluded. An interrupted job resumes from its partial records. A losslessness job compares every
# method with plain decoding, decoded once (T = 0: token for token; T > 0: a chi-squared test per
# method) and records a failure in its report instead of stopping the workflow.

METHODS = list(config["methods"])
METHOD_HEADS = sorted(set(wf.method_heads(config, METHODS).values()))


rule bench:
    input:
        heads=METHOD_HEADS,
        trees=wf.tree_files(config, METHODS),
        target=f"{TARGET}/target",
        questions=wf.question_file("{task}"),
    output:
        f"{TARGET}/bench/{{task}}/T{{temperature}}.jsonl",
    params:
        methods=wf.method_flags(config, METHODS),
        run=lambda w: f"--temperature {w.temperature} --limit {wf.bench_questions(config, w.temperature)} "
        f"--max-new-tokens {wf.max_new_tokens(config, w.task)} --baseline {config['baseline']} "
        f"--aa-questions {config['bench']['aa_questions']}",
        bench=config["bench"],
        timing=config["bench"]["timing"],
    threads: config["threads"]
    resources:
        **wf.job_resources(config),
    log:
        f"{TARGET}/logs/bench/{{task}}/T{{temperature}}.log",
    benchmark:
        f"{TARGET}/benchmarks/bench/{{task}}/T{{temperature}}.tsv",
    shell:
        "clover2 bench --target {input.target} {params.methods} {params.run} --questions {input.questions} "
        "--max-length {params.bench[max_length]} --warmup {params.bench[warmup]} --timing {params.timing} --threads {threads} "
        "--device {config[device]} --dtype {config[dtype]} --out {output} > {log} 2>&1"


rule lossless:
    input:
        heads=METHOD_HEADS,
        trees=wf.tree_files(config, METHODS),
        target=f"{TARGET}/target",
        questions=wf.question_file("{task}"),
    output:
        f"{TARGET}/lossless/{{task}}/T{{temperature}}.json",
    params:
        methods=wf.method_flags(config, METHODS),
        check=config["lossless"],
    threads: config["threads"]
    resources:
        **wf.job_resources(config),
    log:
        f"{TARGET}/logs/lossless/{{task}}/T{{temperature}}.log",
    benchmark:
        f"{TARGET}/benchmarks/lossless/{{task}}/T{{temperature}}.tsv",
    shell:
        # Exit status 1 means "checked, not lossless": the report exists and the tables show it.
        "clover2 check-lossless --target {input.target} {params.methods} --questions {input.questions} "
        "--limit {params.check[questions]} --temperature {wildcards.temperature} "
        "--max-new-tokens {params.check[max_new_tokens]} --samples {params.check[samples]} --threads {threads} "
        "--device {config[device]} --dtype {config[dtype]} --out {output} > {log} 2>&1 || [ $? -eq 1 ]"


# The tree-size sweep: one job per swept method and value of its drafting option, decoding every sweep
# task (T = 0, no baseline: only τ and the verification time are plotted), otherwise exactly a bench job.
SWEEP_TASKS = (config.get("sweep") or {}).get("tasks", [])


use rule bench as sweep with:
    input:
        heads=lambda w: sorted(wf.method_heads(config, [w.method]).values()),
        trees=lambda w: wf.tree_files(config, [w.method], {w.option: w.value}),
        target=f"{TARGET}/target",
        questions=[wf.question_file(task) for task in SWEEP_TASKS],
    output:
        f"{TARGET}/sweep/{{method}}/{{option}}/{{value}}.jsonl",
    params:
        methods=lambda w: wf.method_flags(config, [w.method], {w.option: w.value}),
        run=f"--temperature 0 --limit {wf.sweep_questions(config)} --max-new-tokens {config['bench']['max_new_tokens']}",
        bench=config["bench"],
        timing="phases",  # its verification times feed the verify-cost table
    log:
        f"{TARGET}/logs/sweep/{{method}}/{{option}}/{{value}}.log",
    benchmark:
        f"{TARGET}/benchmarks/sweep/{{method}}/{{option}}/{{value}}.tsv",


# The engine's cost model on random-weight targets of the configured shapes (no trained head needed):
# ms per step split by phase, under every kernel backend of the device.
rule step_cost:
    output:
        f"{TARGET}/step_cost.json",
    params:
        shapes=lambda w: wf.step_cost_flags(config),
        published=f"--published {config['published']}" if config.get("published") else "",
    threads: config["threads"]
    resources:
        **wf.job_resources(config),
    log:
        f"{TARGET}/logs/step_cost.log",
    benchmark:
        f"{TARGET}/benchmarks/step_cost.tsv",
    shell:
        "clover2 step-cost {params.shapes} {params.published} --threads {threads} --device {config[device]} "
        "--dtype {config[dtype]} --out {output} > {log} 2>&1"


# Ablation benches: one job per variant (the full method's included), every ablation task at T = 0
# with the baseline interleaved, drafting as the ablated method does in the main benches with the
# section's `drafting` options over its own.
ABLATION_TASKS = (config.get("ablation") or {}).get("tasks", [])
ABLATION_DRAFTING = (config.get("ablation") or {}).get("drafting")


use rule bench as bench_ablation with:
    input:
        heads=lambda w: [wf.ablation_head_dir(config, w.variant)],
        trees=wf.tree_files(config, [ABLATION_METHOD], ABLATION_DRAFTING) if ABLATION_METHOD else [],
        target=f"{TARGET}/target",
        questions=[wf.question_file(task) for task in ABLATION_TASKS],
    output:
        f"{TARGET}/ablation/{{variant}}/bench.jsonl",
    params:
        methods=lambda w: wf.method_flags(config, [ABLATION_METHOD], ABLATION_DRAFTING,
                                          heads={ABLATION_METHOD: wf.ablation_head_dir(config, w.variant)}),
        run=f"--temperature 0 --limit {wf.ablation_questions(config)} --max-new-tokens {config['bench']['max_new_tokens']} "
        f"--baseline {config['baseline']}",
        bench=config["bench"],
        timing=config["bench"]["timing"],
    log:
        f"{TARGET}/logs/ablation/{{variant}}/bench.log",
    benchmark:
        f"{TARGET}/benchmarks/ablation/{{variant}}/bench.tsv",
