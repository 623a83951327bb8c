# The target LLM as a Hugging Face directory (weights, tokenizer, chat template, provenance marker).


rule target:
    output:
        directory(f"{TARGET}/target"),
    params:
        source=config["target"]["source"],
        template=f"--chat-template {config['target']['chat_template']}" if config["target"].get("chat_template") else "",
    resources:
        mem_mb=config["job_mem_mb"],
    log:
        f"{TARGET}/logs/target.log",
    benchmark:
        f"{TARGET}/benchmarks/target.tsv",
    shell:
        "clover2 prepare-target {params.source} --out {output} {params.template} > {log} 2>&1"
