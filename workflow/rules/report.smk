# Tables from the raw records: results/tables.tex (booktabs) and results/tables.md.


rule report:
    input:
        bench=wf.bench_files(config),
        lossless=wf.lossless_files(config),
        heads=wf.head_dirs(config),
    output:
        latex="results/tables.tex",
        markdown="results/tables.md",
    params:
        baseline=config["baseline"],
    log:
        "results/logs/report.log",
    shell:
        "clover2 report --bench {input.bench} --lossless {input.lossless} --heads {input.heads} "
        "--baseline {params.baseline} --out {output.latex} --markdown {output.markdown} > {log} 2>&1"
