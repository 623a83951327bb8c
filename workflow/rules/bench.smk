# Decoding. A bench job runs one method and the baseline interleaved on the same questions, so each
# speedup is a ratio measured in one process, on one device with one thread count; warm-up runs are
# excluded. A losslessness job compares a method with plain decoding (T = 0: token for token;
# T > 0: a chi-squared test) and records a failure in its report instead of stopping the workflow.


def head_input(wildcards):
    head = wf.head_of(config, wildcards.method)
    return {"head": f"{TARGET}/heads/{head}"} if head else {}


def head_flag(wildcards, input):
    return f"--head {input.head}" if "head" in input.keys() else ""


rule bench:
    input:
        unpack(head_input),
        target=f"{TARGET}/target",
        questions=f"results/questions/{{task}}.{config['bench']['questions']}.jsonl",
    output:
        f"{TARGET}/bench/{{method}}/{{task}}/T{{temperature}}/r{{repeat}}.jsonl",
    params:
        head=head_flag,
        run=lambda w: f"--temperature {w.temperature} --repeat {w.repeat} --seed {w.repeat} --baseline {config['baseline']}",
        bench=config["bench"],
    threads: config["threads"]
    resources:
        gpu=1 if config["device"].startswith("cuda") else 0,
    log:
        f"{TARGET}/logs/bench/{{method}}/{{task}}/T{{temperature}}/r{{repeat}}.log",
    benchmark:
        f"{TARGET}/benchmarks/bench/{{method}}/{{task}}/T{{temperature}}/r{{repeat}}.tsv",
    shell:
        "clover2 bench --target {input.target} --method {wildcards.method} {params.head} {params.run} "
        "--questions {input.questions} --max-new-tokens {params.bench[max_new_tokens]} "
        "--max-length {params.bench[max_length]} --warmup {params.bench[warmup]} --threads {threads} "
        "--device {config[device]} --dtype {config[dtype]} --out {output} > {log} 2>&1"


rule lossless:
    input:
        unpack(head_input),
        target=f"{TARGET}/target",
        questions=f"results/questions/{{task}}.{config['lossless']['questions']}.jsonl",
    output:
        f"{TARGET}/lossless/{{method}}/{{task}}/T{{temperature}}.json",
    params:
        head=head_flag,
        check=config["lossless"],
    threads: config["threads"]
    resources:
        gpu=1 if config["device"].startswith("cuda") else 0,
    log:
        f"{TARGET}/logs/lossless/{{method}}/{{task}}/T{{temperature}}.log",
    benchmark:
        f"{TARGET}/benchmarks/lossless/{{method}}/{{task}}/T{{temperature}}.tsv",
    shell:
        # Exit status 1 means "checked, not lossless": the report exists and the tables show it.
        "clover2 check-lossless --target {input.target} --method {wildcards.method} {params.head} "
        "--questions {input.questions} --temperature {wildcards.temperature} "
        "--max-new-tokens {params.check[max_new_tokens]} --samples {params.check[samples]} --threads {threads} "
        "--device {config[device]} --dtype {config[dtype]} --out {output} > {log} 2>&1 || [ $? -eq 1 ]"


# The tree-size sweep: one trained method decoded with each value of one drafting option (T = 0, no
# baseline: only τ is plotted), otherwise exactly a bench job.
use rule bench as sweep with:
    output:
        f"{TARGET}/sweep/{{method}}/{{option}}/{{value}}/{{task}}.jsonl",
    params:
        head=head_flag,
        run=lambda w: f"--draft-option {w.option}={w.value} --temperature 0",
        bench=config["bench"],
    log:
        f"{TARGET}/logs/sweep/{{method}}/{{option}}/{{value}}/{{task}}.log",
    benchmark:
        f"{TARGET}/benchmarks/sweep/{{method}}/{{option}}/{{value}}/{{task}}.tsv",
