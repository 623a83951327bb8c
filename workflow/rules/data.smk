# The questions each task contributes, fixed in a file so that every job reads the same ones.


rule questions:
    output:
        "results/questions/{task}.{n}.jsonl",
    log:
        "results/logs/questions/{task}.{n}.log",
    benchmark:
        "results/benchmarks/questions/{task}.{n}.tsv",
    shell:
        "clover2 questions --task {wildcards.task} --limit {wildcards.n} --out {output} > {log} 2>&1"
