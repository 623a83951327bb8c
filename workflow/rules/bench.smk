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
        baseline=config["baseline"],
        bench=config["bench"],
    threads: config["threads"]
    resources:
        gpu=1 if config["device"].startswith("cuda") else 0,
    log:
        f"{TARGET}/logs/bench/{{method}}/{{task}}/T{{temperature}}/r{{repeat}}.log",
    shell:
        "clover2 bench --target {input.target} --method {wildcards.method} {params.head} "
        "--questions {input.questions} --temperature {wildcards.temperature} --repeat {wildcards.repeat} "
        "--seed {wildcards.repeat} --baseline {params.baseline} --max-new-tokens {params.bench[max_new_tokens]} "
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
    shell:
        # Exit status 1 means "checked, not lossless": the report exists and the tables show it.
        "clover2 check-lossless --target {input.target} --method {wildcards.method} {params.head} "
        "--questions {input.questions} --temperature {wildcards.temperature} "
        "--max-new-tokens {params.check[max_new_tokens]} --samples {params.check[samples]} --threads {threads} "
        "--device {config[device]} --dtype {config[dtype]} --out {output} > {log} 2>&1 || [ $? -eq 1 ]"
