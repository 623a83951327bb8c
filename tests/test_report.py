"""Tables and the paper directory from raw records: published vs reproduced, quality, LaTeX that TeX can read."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from clover2.errors import Clover2Error
from clover2.reporting import tables as report_tables
from clover2.reporting.figures import laid_out, speedup_figure, time_split_figure, verify_cost_figure
from clover2.reporting.paper import compile_pdf, write_paper
from clover2.reporting.render import write_tables
from clover2.reporting.tables import title
from clover2.tasks import TASKS, load_questions, read_questions, write_questions
from test_metrics import _file, _row, _turn


def build_tables(*args, **kwargs):
    """The tables as `clover2 report` builds them: with the registered tasks' labels and scorers."""
    return report_tables.build_tables(*args, tasks=TASKS, **kwargs)


def published_table(records, published, target):
    tables, _ = build_tables(records, published=published, target=target)
    return tables["published"]

PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "clover2_published.csv"


@pytest.fixture
def records(tmp_path):
    files = []
    for method, lengths, failed in (("clover2", [1, 3, 4, 2], [3, None, 2]), ("eagle", [1, 2, 2, 2, 2, 1], [2, 2, 2, 2, 1])):
        rows = []  # one file per method, each with its own interleaved baseline, as the workflow writes them
        for q, task in enumerate(["mt_bench", "mt_bench", "qa", "qa"]):
            rows.append(_row("vanilla", str(q), [_turn(10, 1.0 + q / 10)], task=task))
            rows.append(_row(method, str(q), [_turn(10, 0.5 + q / 20, lengths, failed)], task=task))
        files.append(_file(tmp_path / f"{method}.jsonl", rows))
    return files


def test_every_table_renders_as_booktabs_and_markdown(records, tmp_path):
    tables, stats = build_tables(records)
    assert set(tables) == {"speedup_T0", "speedup_ci", "throughput", "depth", "time_split"}
    assert set(stats["method"]) == {"vanilla", "clover2", "eagle"}
    write_tables(tables, tmp_path / "t.tex", tmp_path / "t.md")
    latex = (tmp_path / "t.tex").read_text()
    assert latex.count(r"\toprule") == latex.count(r"\bottomrule") == latex.count(r"\footnotesize") == 5
    assert r"\resizebox" not in latex  # one font size, nothing scaled
    assert "τ" not in latex and "×" not in latex and r"$\tau$" in latex and r"$\times$" in latex
    assert r"\multicolumn{2}{c}{MT-Bench}" in latex  # two columns per task: the speedup and τ
    markdown = (tmp_path / "t.md").read_text()
    assert "| clover2" in markdown and "MT-Bench ×" in markdown


def test_the_main_table_gives_each_method_speedup_and_tau_per_task_in_the_papers_task_order(records):
    tables, stats = build_tables(records)
    main = tables["speedup_T0"]
    assert list(main.index) == ["clover2", "eagle"]  # the baseline has no speedup to show
    assert list(main.columns) == [("MT-Bench", "×"), ("MT-Bench", "τ"), ("QA", "×"), ("QA", "τ")]
    row = stats.set_index(["method", "task"]).loc[("eagle", "qa")]
    assert main.loc["eagle", ("QA", "τ")] == row["tau"] and main.loc["eagle", ("QA", "×")] == row["speedup"]


@pytest.mark.skipif(not PUBLISHED.is_file(), reason="needs ../shared/reference beside the project")
def test_published_numbers_sit_beside_ours_naming_both_targets(records):
    table = published_table(records, PUBLISHED, "smollm2-135m-instruct")
    assert ("vicuna-7b-v1.5 (paper)", "speedup") in table.columns and ("smollm2-135m-instruct (ours)", "speedup") in table.columns
    assert table.loc[(0.0, "clover2", "MT-Bench"), ("vicuna-7b-v1.5 (paper)", "speedup")] == 3.0


@pytest.mark.skipif(not PUBLISHED.is_file(), reason="needs ../shared/reference beside the project")
def test_for_a_paper_target_cells_are_compared_one_by_one(records):
    table = published_table(records, PUBLISHED, "vicuna-7b-v1.5")
    row = table.loc[(0.0, "clover2", "MT-Bench")]
    assert row[("diff", "speedup")] == pytest.approx(round(row[("ours", "speedup")] - 3.0, 2), abs=0.011)
    assert pd.isna(table.loc[(0.0, "clover2", "RAG"), ("ours", "speedup")])  # not run here: shown as missing


def test_quality_is_scored_from_the_answers_with_the_question_files(tmp_path):
    gsm8k = load_questions("gsm8k", limit=2)
    humaneval = load_questions("humaneval", limit=1)
    questions = tmp_path / "gsm8k.jsonl", tmp_path / "humaneval.jsonl"
    write_questions(questions[0], gsm8k)
    write_questions(questions[1], humaneval)
    right = gsm8k[0].reference.rsplit("####", 1)[1].strip()
    solution = humaneval[0].reference["canonical_solution"]
    rows = [_row(m, gsm8k[0].question_id, [_turn(2, 1.0, text=f"The answer is {right}.")], task="gsm8k") for m in ("vanilla", "x")]
    rows += [_row(m, gsm8k[1].question_id, [_turn(2, 1.0, text="The answer is 0.5.")], task="gsm8k") for m in ("vanilla", "x")]
    rows += [_row("vanilla", humaneval[0].question_id, [_turn(2, 1.0, text=solution)], task="humaneval"),
             _row("x", humaneval[0].question_id, [_turn(2, 1.0, text="    return None\n")], task="humaneval")]
    tables, _ = build_tables([_file(tmp_path / "b.jsonl", rows)], questions=[q for path in questions for q in read_questions(path)])
    quality = tables["quality"]
    assert quality.loc["vanilla", "GSM8K accuracy (gsm8k)"] == "1/2" and quality.loc["x", "GSM8K accuracy (gsm8k)"] == "1/2"
    assert quality.loc["vanilla", "HumanEval pass@1 (humaneval)"] == "1/1" and quality.loc["x", "HumanEval pass@1 (humaneval)"] == "0/1"


def test_paper_directory_holds_tables_figures_and_a_main_file_including_them(records, tmp_path):
    tables, stats = build_tables(records)
    main = write_paper(tables, stats, tmp_path / "paper", "unit_test")
    text = main.read_text()
    for name in tables:
        assert (tmp_path / "paper" / "tables" / f"{name}.tex").is_file() and f"\\input{{tables/{name}}}" in text
    assert (tmp_path / "paper" / "tables.md").read_text().count("### ") == len(tables)
    figures = sorted((tmp_path / "paper" / "figures").glob("*.pdf"))
    assert len(figures) == 4 and all(f.with_suffix(".png").stat().st_size > 1000 for f in figures)
    assert all(f"figures/{f.name}" in text for f in figures)
    assert text.count("\\begin{figure}") == text.count("\\end{figure}") == 4 and text.rstrip().endswith("\\end{document}")
    assert json.dumps(text)  # plain text, nothing binary
    first = {f.name: f.read_bytes() for f in figures}
    write_paper(tables, stats, tmp_path / "paper", "unit_test")
    assert first == {f.name: f.read_bytes() for f in figures}  # same records, byte-identical figures


def test_a_sweep_adds_the_tree_size_table_and_the_tau_against_tree_size_figure(records, tmp_path):
    sweep = [_row("eagle2", "0", [_turn(6, 1.0, lengths) | {"tree_sizes": [size] * (len(lengths) - 1)}], drafting=[f"total_tokens={size}"])
             for size, lengths in ((5, [1, 2, 3]), (20, [1, 5]))]
    tables, stats = build_tables(records, sweep=[_file(tmp_path / "sweep.jsonl", sweep)])
    assert list(tables["tree_size"]["tree_size"]) == [5.0, 20.0] and list(tables["tree_size"]["tau"]) == [2.0, 3.0]
    main = write_paper(tables, stats, tmp_path / "paper", "unit_test").read_text()
    assert (tmp_path / "paper" / "figures" / "tau_vs_tree_size.png").is_file() and "tau_vs_tree_size.pdf" in main


@pytest.fixture
def sized_tables(records, tmp_path):
    """The tables of records whose steps carry tree sizes, from a bench and a sweep."""
    def turn(size, steps, seconds):  # verify takes a quarter of `seconds`; steps after the prefill
        return _turn(steps + 1, seconds) | {"tree_sizes": [size] * steps}

    bench = [_row("vanilla", "0", [turn(0, 4, 0.016)]), _row("eagle", "0", [turn(25, 4, 0.032)])]
    sweep = [_row("eagle", "0", [turn(size, 2, 0.008 * (1 + size / 8))], drafting=[f"eagle:tree=chain_{size}"]) for size in (3, 6)]
    return build_tables([*records, _file(tmp_path / "bench.jsonl", bench)], sweep=[_file(tmp_path / "sweep.jsonl", sweep)])


def test_steps_with_tree_sizes_add_the_verify_cost_table_and_figure_from_bench_and_sweep(sized_tables, tmp_path):
    tables, stats = sized_tables
    cost = tables["verify_cost"]
    assert list(cost.index) == [("vanilla", ""), ("eagle", "tree=chain_3"), ("eagle", "tree=chain_6"), ("eagle", "")]
    assert list(cost["tokens"]) == [1, 4, 7, 26] and list(cost["ms_per_verify"]) == pytest.approx([1, 1.375, 1.75, 2])
    assert list(cost["vs_plain"]) == pytest.approx([1, 1.375, 1.75, 2])
    main = write_paper(tables, stats, tmp_path / "paper", "unit_test").read_text()
    assert "\\input{tables/verify_cost}" in main and "verify_cost_vs_tree_size.pdf" in main
    assert (tmp_path / "paper" / "figures" / "verify_cost_vs_tree_size.png").is_file()
    assert f"### {title('verify_cost')}" in (tmp_path / "paper" / "tables.md").read_text()


@pytest.mark.parametrize("draw", [
    lambda tables, stats: speedup_figure(stats),
    lambda tables, stats: time_split_figure(stats),
    lambda tables, stats: verify_cost_figure(tables["verify_cost"]),
], ids=["speedup", "time_split", "verify_cost"])
def test_a_figure_of_many_series_keeps_its_legend_beside_its_axes_and_inside_the_page(sized_tables, draw):
    figure = laid_out(draw(*sized_tables))
    figure.canvas.draw()
    legend = figure.axes[-1].get_legend().get_window_extent()
    assert not [axes for axes in figure.axes if legend.overlaps(axes.get_window_extent())]
    assert figure.bbox.x0 <= legend.x0 and legend.x1 <= figure.bbox.x1 and legend.y1 <= figure.bbox.y1


@pytest.mark.skipif(not PUBLISHED.is_file(), reason="needs ../shared/reference beside the project")
def test_cells_this_run_left_empty_show_a_dash_and_temperatures_read_as_written(records, tmp_path):
    tables, stats = build_tables(records, published=PUBLISHED, target="vicuna-7b-v1.5")
    write_tables(tables, tmp_path / "t.tex", tmp_path / "t.md")
    latex, markdown = (tmp_path / "t.tex").read_text(), (tmp_path / "t.md").read_text()
    assert "nan" not in latex and "nan" not in markdown  # rag was not run here
    assert " -- " in latex and " – " in markdown
    assert "0.000000" not in latex and "{*}{0}" in latex


@pytest.mark.skipif(not PUBLISHED.is_file(), reason="needs ../shared/reference beside the project")
def test_the_paper_compiles_cleanly_with_every_table_on_the_page(records, tmp_path):
    tables, stats = build_tables(records, published=PUBLISHED, target="smollm2-135m-instruct")
    write_paper(tables, stats, tmp_path / "paper", "unit_test")
    pdf = compile_pdf(tmp_path / "paper")
    assert pdf.read_bytes().startswith(b"%PDF") and sorted(p.name for p in (tmp_path / "paper").iterdir()) == [
        "figures", "main.pdf", "main.tex", "tables", "tables.md"]  # latexmk's files stay out
    first = pdf.read_bytes()
    assert compile_pdf(tmp_path / "paper").read_bytes() == first  # reproducible: no date, no random id


@pytest.mark.parametrize(
    "damage, problem",
    [("\\includegraphics{figures/missing.pdf}", "missing.pdf"), ("\\ref{tab:nowhere}", "undefined"),
     ("\\begin{tabular}{l}", "")],
)
def test_a_paper_with_an_error_a_missing_figure_or_a_dangling_reference_fails(records, tmp_path, damage, problem):
    tables, stats = build_tables(records)
    main = write_paper(tables, stats, tmp_path / "paper", "unit_test")
    main.write_text(main.read_text().replace("\\end{document}", damage + "\n\\end{document}"))
    with pytest.raises(Clover2Error, match=f"not clean[\\s\\S]*{problem}"):
        compile_pdf(tmp_path / "paper")
    assert not (tmp_path / "paper" / "main.pdf").exists()


def _head_dir(directory: Path, method: str, log: list[dict]) -> Path:
    """A trained head's directory as far as the report reads it: head.json, training.json, its log, weights."""
    directory.mkdir(parents=True)
    (directory / "head.json").write_text(json.dumps({"method": method}))
    (directory / "training.json").write_text(json.dumps({"steps": log[-1]["step"], "seconds": log[-1]["seconds"]}))
    (directory / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    save_file({"w": torch.zeros(2, 3), "vocab.ids": torch.arange(4)}, str(directory / "head.safetensors"))
    return directory


def test_heads_add_learning_curves_of_heldout_top1_against_minutes(records, tmp_path):
    clover2 = _head_dir(tmp_path / "clover2", "clover2", [
        {"step": 1, "seconds": 6.0}, {"step": 2, "seconds": 60.0, "heldout": {"top1": [0.2, 0.1]}},
        {"step": 4, "seconds": 120.0, "heldout": {"top1": [0.4, 0.3]}}])
    eagle = _head_dir(tmp_path / "eagle", "eagle", [{"step": 3, "seconds": 90.0, "heldout": {"top1": [0.5]}}])
    tables, stats = build_tables(records, heads=[clover2, eagle])
    curve = tables["learning_curve"]
    assert curve.loc[("clover2", 4), "minutes"] == 2.0 and curve.loc[("clover2", 4), "depth 2"] == 0.3
    assert curve.loc[("eagle", 3), "depth 1"] == 0.5 and pd.isna(curve.loc[("eagle", 3), "depth 2"])  # one depth only
    assert tables["training"].loc["clover2", "heldout_top1"] == "0.40 / 0.30"
    assert tables["training"].loc["clover2", "trainable_params"] == 6  # the draft vocabulary's ids are not weights
    write_paper(tables, stats, tmp_path / "paper", "records")
    assert (tmp_path / "paper" / "figures" / "learning_curve.png").is_file()
    assert r"\input{tables/learning_curve}" in (tmp_path / "paper" / "main.tex").read_text()


def test_every_speed_caption_and_figure_names_the_machine_its_runs_had(records, tmp_path):
    for path in records:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for row in rows:
            row["provenance"]["device"] = "cpu: AMD EPYC (avx512_bf16)"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tables, stats = build_tables(records)
    assert title("speedup_T0", tables["speedup_T0"]).endswith("; the target in float32 on cpu: AMD EPYC (avx512_bf16)")
    write_paper(tables, stats, tmp_path / "paper", "records")
    captions = re.findall(r"\\caption\{([^}]*)\}", (tmp_path / "paper" / "main.tex").read_text())
    assert len(captions) == len(list((tmp_path / "paper" / "figures").glob("*.pdf"))) >= 3
    assert all(caption.endswith(r"the target in float32 on cpu: AMD EPYC (avx512\_bf16)") for caption in captions), captions


def test_speed_tables_name_the_dtype_and_the_lossless_table_counts_identical_near_tie_and_mismatch(records, tmp_path):
    greedy = {"turns_checked": 4, "turns_identical": 2, "near_ties": [{}], "mismatches": [{}], "passed": False}
    report = tmp_path / "T0.json"
    report.write_text(json.dumps({"reports": {"clover2": greedy}, "provenance": {"config": {"task": "qa", "temperature": 0.0, "dtype": "bfloat16"}}}))
    tables, _ = build_tables(records, [report])
    row = tables["lossless"].loc[(0.0, "clover2", "qa")]
    assert (row["check"], row["dtype"], row["result"]) == ("2/4 identical, 1 near-tie, 1 mismatch", "bfloat16", "FAIL")
    assert title("speedup_T0", tables["speedup_T0"]).endswith("at T = 0; the target in float32")
    assert title("throughput", tables["throughput"]).endswith("; the target in float32")
    assert title("lossless", tables["lossless"]) == "Losslessness against plain decoding"  # its dtype is a column


def _step_cost_file(path: Path) -> Path:
    rows = [{"target": "vicuna-7b", "method": method, "kernels": kernels, "tree_size": size, "tau": 1.0,
             "plain_ms_per_token": 30.0, "ms_per_step": ms, "ms_per_step_synced": ms * 1.1, "draft_ms": ms / 3,
             "verify_ms": ms / 2, "bookkeeping_ms": ms / 6, "prefill_ms": 50.0, "sync_overhead": 1.1,
             "paper_tau": tau, "projected_speedup": tau * 30.0 / ms if tau else None}
            for kernels in ("torch", "triton")
            for method, size, ms, tau in (("vanilla", 0, 30.0, None), ("clover2", 25, 40.0, 3.5))]
    config = {"dtype": "float16", "shapes": ["vicuna-7b"]}
    path.write_text(json.dumps({"rows": rows, "provenance": {"config": config, "device": "cuda: NVIDIA H200_x"}}))
    return path


@pytest.mark.skipif(not PUBLISHED.is_file(), reason="needs ../shared/reference beside the project")
def test_step_cost_files_add_a_table_that_names_device_and_dtype_and_compiles(records, tmp_path):
    tables, stats = build_tables(records, step_cost=[_step_cost_file(tmp_path / "cost.json")])
    table = tables["step_cost"]
    assert table.loc[("vicuna-7b", "triton", "clover2"), "projected"] == pytest.approx(3.5 * 30 / 40)
    assert title("step_cost", table).endswith("the target in float16 on cuda: NVIDIA H200_x")
    write_paper(tables, stats, tmp_path / "paper", "unit_test")
    assert "\\input{tables/step_cost}" in (tmp_path / "paper" / "main.tex").read_text()
    assert compile_pdf(tmp_path / "paper").is_file()  # the caption's underscore is escaped


def test_phases_of_unsynchronised_gpu_turns_are_left_out_of_the_time_split_and_verify_cost(tmp_path):
    def turns(exact: bool, lengths: list[int], seconds: float) -> list[dict]:
        timing = {"phases_exact": exact, "timing": "phases" if exact else "turn", "tree_sizes": [4 if len(lengths) < 5 else 0] * (len(lengths) - 1)}
        return [_turn(5, seconds, lengths, [2] * (len(lengths) - 1)) | timing]

    def rows(exact: bool) -> list[dict]:
        return [_row("vanilla", "0", turns(exact, [1] * 5, 1.0)), _row("eagle", "0", turns(exact, [1, 2, 2], 0.5))]

    tables, stats = build_tables([_file(tmp_path / "gpu.jsonl", rows(False))])
    assert "time_split" not in tables and "verify_cost" not in tables
    assert stats["verify_share"].isna().all() and (stats.loc[stats["method"] == "eagle", "speedup"] == 2).all()
    paper = write_paper(tables, stats, tmp_path / "paper", "unit_test").read_text()
    assert "time_split" not in paper and (tmp_path / "paper" / "figures" / "speedup.png").is_file()
    tables, _ = build_tables([_file(tmp_path / "synced.jsonl", rows(True))])
    assert "time_split" in tables and "verify_cost" in tables


def test_ablation_table_reads_each_variant_from_the_full_method_to_clovers_choices(records, tmp_path):
    bench, heads = {}, {}
    variants = {"clover2": ({}, 0.5), "mlp_projector": ({"output_projector": "mlp"}, 0.8),
                "clover_v1_choices": ({"extraction_order": "state_first", "output_projector": "mlp", "augmenting_layers": 1,
                                       "distillation": "hard_ce"}, 1.0)}
    for name, (options, seconds) in variants.items():
        rows = []
        for q, task in enumerate(["mt_bench", "mt_bench", "qa", "qa"]):
            rows.append(_row("vanilla", str(q), [_turn(10, 1.0 + q / 10)], task=task))
            rows.append(_row("clover2", str(q), [_turn(10, seconds + q / 30, [1, 3, 4, 2] if name == "clover2" else [1] * 10)], task=task))
        bench[name] = _file(tmp_path / f"{name}.jsonl", rows)
        heads[name] = _head_dir(tmp_path / "heads" / name, "clover2", [{"step": 5, "seconds": 540.0, "heldout": {"top1": [0.4, 0.2]}}])
        (heads[name] / "head.json").write_text(json.dumps({"method": "clover2", "options": {"tree": "eagle_top_8", **options}}))
    tables, stats = build_tables(records, ablation=(bench, heads))
    table, training = tables["ablation"], tables["ablation_training"]
    assert list(table.index) == list(training.index) == list(variants)  # in the order given, the full method first
    assert list(training.loc["clover2", ["order", "projector", "AB layers", "loss"]]) == ["token_first", "ad", 2, "kd"]
    assert list(training.loc["clover_v1_choices", ["order", "projector", "AB layers", "loss"]]) == ["state_first", "mlp", 1, "hard_ce"]
    assert table.loc["clover2", "τ"] == 2.5 and table.loc["clover2", "MT-Bench"] == 2.5 and table.loc["mlp_projector", "τ"] == 1
    tps = [10 / (0.5 + q / 30) for q in range(4)], [10 / (1.0 + q / 10) for q in range(4)]
    assert table.loc["clover2", "speedup"] == pytest.approx(sum(tps[0]) / sum(tps[1]))
    assert table.loc["clover2", "CI low"] <= table.loc["clover2", "speedup"] <= table.loc["clover2", "CI high"]
    assert training.loc["mlp_projector", "minutes"] == 9.0 and training.loc["mlp_projector", "held-out top-1 (%)"] == "40/20"
    write_paper(tables, stats, tmp_path / "paper", "records")
    assert (tmp_path / "paper" / "figures" / "ablation.png").is_file()
    assert r"\input{tables/ablation}" in (tmp_path / "paper" / "main.tex").read_text()
    assert compile_pdf(tmp_path / "paper").is_file()  # both tables fit the page


def _tree_file(path: Path, method: str, nodes: int, tau: float, speedup: float, needed: float = 1.0) -> Path:
    paths = [[0] * (depth + 1) for depth in range(nodes)]
    predicted = {"paths": paths, "tau": tau, "nodes": nodes, "depth": nodes, "speedup": speedup}
    path.write_text(json.dumps({"paths": paths, "predicted": predicted, "needed_acceptance": needed,
                                "inputs": {"head": method, "costs": "costs.json", "acceptance": "acceptance.json"}}))
    return path


def test_chosen_trees_add_their_predictions_beside_the_measured_tau_and_speedups(records, tmp_path):
    trees = [_tree_file(tmp_path / "clover2.json", "clover2", 3, 2.5, 1.6), _tree_file(tmp_path / "eagle.json", "eagle", 0, 1.0, 1.0, 3.2)]
    tables, stats = build_tables(records, trees=trees)
    table = tables["tree_choice"]
    assert table.loc["clover2", "τ predicted"] == 2.5 and table.loc["clover2", "τ measured"] == 3.0  # steps of 3, 4, 2 tokens
    # After the prefill (a quarter of each turn): 9 tokens in 3/4 of the time, against the baseline's same share.
    expected = (4 * 9 / sum(0.75 * (0.5 + q / 20) for q in range(4))) / (4 * 9 / sum(0.75 * (1.0 + q / 10) for q in range(4)))
    assert table.loc["clover2", "after prefill"] == pytest.approx(expected, abs=0.01)
    assert table.loc["clover2", "whole turns"] == pytest.approx(stats.query("method == 'clover2'")["speedup"].mean(), abs=0.05)
    assert table.loc["eagle", "acceptance needed"] == "3.20×" and table.loc["clover2", "acceptance needed"] == ""
    (tmp_path / "broken.json").write_text(json.dumps({"paths": []}))
    with pytest.raises(Clover2Error, match="broken.json: not a clover2 choose-tree file"):
        build_tables(records, trees=[tmp_path / "broken.json"])


def _aa_records(tmp_path, again: float) -> list[Path]:
    """A bench file whose plain decoding decodes its first two questions a second time, `again` times as long."""
    rows = []
    for q in range(4):
        rows += [_row("vanilla", str(q), [_turn(10, 1.0 + q / 10)]), _row("m", str(q), [_turn(10, 0.5 + q / 20, [1, 3, 4, 2])])]
        if q < 2:
            rows.append({**_row("vanilla", str(q), [_turn(10, again * (1.0 + q / 10))]), "replicate": 1})
    return [_file(tmp_path / "aa.jsonl", rows)]


def test_the_aa_check_compares_plain_decoding_with_itself_and_a_noisy_one_is_named_in_the_speedup_captions(tmp_path):
    quiet, _ = build_tables(_aa_records(tmp_path, 1.0))
    assert quiet["aa"].loc[0, "A/A"] == 1.0 and quiet["aa"].loc[0, "questions"] == 2 and quiet["aa"].loc[0, "noisy"] == ""
    assert "A/A check" not in title("speedup_T0", quiet["speedup_T0"])
    noisy, stats = build_tables(_aa_records(tmp_path, 1.1))
    assert noisy["aa"].loc[0, "A/A"] == pytest.approx(1 / 1.1) and noisy["aa"].loc[0, "noisy"] == "|A/A − 1| > 3%"
    assert "A/A check at T = 0: plain decoding against itself 0.91×" in title("speedup_T0", noisy["speedup_T0"])
    assert "A/A check at T = 0" in title("speedup_ci", noisy["speedup_ci"])
    # The second decodes are no run of their own: the plain baseline's tokens/s and every speedup read the first.
    assert stats.set_index("method").loc["vanilla", "tokens_per_s"] == quiet["throughput"].loc[(0, "vanilla"), "MT-Bench"]
    assert noisy["speedup_T0"].equals(quiet["speedup_T0"])


def test_a_chosen_tree_is_compared_with_the_same_heads_other_trees_decoded_in_the_same_jobs(tmp_path):
    rows = []
    for q in range(4):
        rows.append(_row("vanilla", str(q), [_turn(10, 1.0)]))
        for method, seconds in (("eagle", 0.5 + q / 20), ("eagle_top8", 0.6 + q / 10), ("medusa", 0.7)):
            row = _row(method, str(q), [_turn(10, seconds, [1, 3, 4, 2])])
            row["provenance"]["config"]["head"] = ["eagle=heads/eagle", "eagle_top8=heads/eagle", "medusa=heads/medusa"]
            rows.append(row)
    tree = _tree_file(tmp_path / "eagle.json", "eagle", 3, 2.5, 1.6)
    tables, _ = build_tables([_file(tmp_path / "b.jsonl", rows)], trees=[tree])
    table = tables["chosen_vs_fixed"]
    assert list(table.index) == [("eagle", 0, "eagle_top8")]  # medusa drafts with another head
    expected = sum(10 / (0.5 + q / 20) for q in range(4)) / sum(10 / (0.6 + q / 10) for q in range(4))
    row = table.loc[("eagle", 0, "eagle_top8")]
    assert row["× over it"] == pytest.approx(expected) and row["CI low"] <= row["× over it"] <= row["CI high"]
    assert row["questions"] == 4 and row["its drafting"] == "its own"


def test_the_learning_curve_gives_the_chosen_trees_predicted_tau_at_every_evaluation(records, tmp_path):
    profile = {"reached": [10, 5], "hits": [[5, 2], [1, 0]], "positions": 10}  # p(1, ·) = 0.5, 0.2; p(2, 0) = 0.2
    head = _head_dir(tmp_path / "clover2", "clover2", [
        {"step": 2, "seconds": 60.0, "heldout": {"top1": [0.2], "acceptance": profile}}])
    tree = _tree_file(tmp_path / "clover2.json", "clover2", 3, 1.8, 1.2)
    tree.write_text(json.dumps({**json.loads(tree.read_text()), "paths": [[0], [1], [0, 0]],
                                "inputs": {"head": "clover2", "costs": "c.json", "acceptance": str(head / "acceptance.json")}}))
    tables, stats = build_tables(records, heads=[head], trees=[tree])
    assert tables["learning_curve"].loc[("clover2", 2), "τ chosen tree"] == pytest.approx(1 + 0.5 + 0.2 + 0.5 * 0.2)
    assert list(tables["learning_curve"].columns)[-1] == "τ chosen tree"
