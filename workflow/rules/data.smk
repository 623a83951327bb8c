# The questions each task contributes, fixed in files by one job so that every job reads the same
# ones; each stage reads the first N of a file.


rule questions:
    output:
        wf.question_files(config),
    params:
        tasks=" ".join(wf.question_tasks(config)),
        limit=wf.question_count(config),
    log:
        "results/logs/questions.log",
    benchmark:
        "results/benchmarks/questions.tsv",
    shell:
        "clover2 questions --task {params.tasks} --limit {params.limit} --out-dir results/questions > {log} 2>&1"
