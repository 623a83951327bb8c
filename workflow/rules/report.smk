# Tables and figures from the raw records: results/tables.tex (booktabs), results/tables.md, and
# paper/ (tables/*.tex, figures/*.pdf|png, main.tex). The published numbers are optional input:
# without the file the published-vs-reproduced table is left out, with a note in the log.


rule report:
    input:
        bench=wf.bench_files(config),
        lossless=wf.lossless_files(config),
        heads=wf.head_dirs(config),
        questions=wf.question_files(config),
        sweep=wf.sweep_files(config),
        step_cost=wf.step_cost_files(config),
        ablation=wf.ablation_files(config),
        trees=wf.tree_files(config, list(config["methods"])),
    output:
        latex="results/tables.tex",
        markdown="results/tables.md",
        paper="paper/main.tex",
    params:
        baseline=config["baseline"],
        published=f"--published {config['published']}" if config.get("published") else "",
        target=config["target"]["name"],
        ablation=wf.ablation_report_flags(config),
    log:
        "results/logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv",
    shell:
        "clover2 report --bench {input.bench} --lossless {input.lossless} --heads {input.heads} "
        "--questions {input.questions} --sweep {input.sweep} --step-cost {input.step_cost} --trees {input.trees} {params.ablation} {params.published} --target-name {params.target} "
        "--baseline {params.baseline} --out {output.latex} --markdown {output.markdown} --paper paper > {log} 2>&1"


# The paper as a PDF (TeX Live's latexmk): the build fails on a LaTeX error, a missing figure, an
# undefined reference or a table wider than the page.
rule paper_pdf:
    input:
        "paper/main.tex",
    output:
        "paper/main.pdf",
    log:
        "results/logs/paper_pdf.log",
    benchmark:
        "results/benchmarks/paper_pdf.tsv",
    shell:
        "clover2 paper-pdf paper > {log} 2>&1"
