"""`clover2 step-cost` (the engine's cost model), whole-turn timing, and where a drafter's attention runs."""

import collections
import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import clover2.engine.kernels
from clover2.cli import main
from clover2.engine.decoding import DecodeConfig, Stopwatch, TurnRecord, generate
from clover2.engine.kernels.attention import NAME, use_tree_attention
from clover2.heads.protocol import head_class, head_methods
from clover2.step_cost import PLAIN_METHODS, published_taus
from helpers import use_kernels

PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "clover2_published.csv"
NO_STOP = [511]
SMALL_RUN = ["--shapes", "tiny", "--device", "cpu", "--dtype", "float32", "--prompts", "2", "--prompt-tokens", "24",
             "--new-tokens", "6", "--warmup-tokens", "2", "--threads", "1", "--published", str(PUBLISHED)]


def _step_cost(tmp_path: Path, *extra: str) -> pd.DataFrame:
    out = tmp_path / "cost.json"
    assert main(["step-cost", *SMALL_RUN, *extra, "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["provenance"]["config"]["shapes"] == ["tiny"]
    return pd.DataFrame(document["rows"])


def test_step_cost_times_every_method_on_a_tiny_shape(tmp_path, monkeypatch):
    use_kernels(monkeypatch, "torch")
    rows = _step_cost(tmp_path).set_index("method")
    assert set(rows.index) == {*PLAIN_METHODS, *head_methods()} and set(rows["kernels"]) == {"torch"}
    assert (rows[["ms_per_step", "ms_per_step_synced", "verify_ms", "prefill_ms"]] > 0).all().all()
    assert (rows.loc[list(PLAIN_METHODS), "tree_size"] == 0).all() and (rows.loc[list(PLAIN_METHODS), "tau"] == 1).all()
    heads = rows.drop(list(PLAIN_METHODS))
    assert (heads["tree_size"] > 0).all() and (heads["draft_ms"] > 0).all()
    # The split adds up to the synchronised step (medians of parts against the median of sums: loosely).
    parts = heads[["draft_ms", "verify_ms", "bookkeeping_ms"]].sum(axis=1)
    assert ((parts / heads["ms_per_step_synced"]).between(0.6, 1.4)).all()
    assert (rows["plain_ms_per_token"] == rows.loc["vanilla", "ms_per_step"]).all()


def test_projected_speedup_puts_the_papers_tau_on_the_measured_costs(tmp_path, monkeypatch):
    use_kernels(monkeypatch, "torch")
    rows = _step_cost(tmp_path, "--method", "vanilla", "clover2", "medusa").set_index("method")
    tau = published_taus(PUBLISHED, "tiny")["clover2"]
    clover2 = rows.loc["clover2"]
    assert clover2["paper_tau"] == tau
    assert clover2["projected_speedup"] == pytest.approx(tau * clover2["plain_ms_per_token"] / clover2["ms_per_step"])
    assert pd.isna(rows.loc["medusa", "projected_speedup"])  # the paper gives no τ for Medusa


def test_published_tau_is_one_plus_the_mean_extra_tokens_per_step_of_the_shapes_paper_target():
    table = pd.read_csv(PUBLISHED)
    llama = table[(table["target"] == "llama3-8b-instruct") & (table["temperature"] == 0) & (table["method"] == "eagle")]
    assert published_taus(PUBLISHED, "llama3-8b")["eagle"] == pytest.approx(1 + llama["extra_tokens_per_step"].mean())
    assert published_taus(PUBLISHED, "smollm2-135m") == published_taus(PUBLISHED, "vicuna-7b")
    assert published_taus(None, "vicuna-7b") == {}


def test_step_cost_compares_both_backends(tmp_path, monkeypatch):
    use_kernels(monkeypatch, "torch")
    rows = _step_cost(tmp_path, "--method", "vanilla", "clover2", "--kernels", "torch", "triton")
    assert sorted(zip(rows["method"], rows["kernels"])) == [("clover2", "torch"), ("clover2", "triton"), ("vanilla", "torch"), ("vanilla", "triton")]
    # Each backend's projection divides by its own plain decoding.
    for backend, group in rows.groupby("kernels"):
        assert (group["plain_ms_per_token"] == group.loc[group["method"] == "vanilla", "ms_per_step"].item()).all()


def test_step_cost_profiles_each_run_with_phases_labelled(tmp_path, monkeypatch):
    use_kernels(monkeypatch, "torch")
    _step_cost(tmp_path, "--method", "clover2", "--profile", str(tmp_path / "profile"))
    trace = json.loads((tmp_path / "profile" / "tiny-clover2-torch.trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {"prefill", "draft", "verify", "bookkeeping"} <= names
    assert "aten::" in (tmp_path / "profile" / "tiny-clover2-torch.ops.txt").read_text()


def test_step_cost_refuses_triton_on_a_cpu_outside_the_interpreter(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert main(["step-cost", *SMALL_RUN, "--kernels", "triton"]) != 0
    assert "Triton needs a CUDA device" in capsys.readouterr().err


class _CountingSync:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


@pytest.mark.parametrize(("timing", "per_phase", "exact"), [("phases", 2, True), ("turn", 0, False)])
def test_turn_timing_synchronises_a_gpu_once_per_turn(timing, per_phase, exact):
    clock = Stopwatch(torch.device("cpu"), timing)
    clock.device_sync = sync = _CountingSync()  # stands in for torch.cuda.synchronize: a GPU's queue
    clock.phases_exact = timing == "phases"
    for name in ("draft", "verify", "bookkeeping"):
        with clock.phase(name):
            pass
    record = TurnRecord(prompt_tokens=1)
    clock.finish(record)
    assert sync.calls == 3 * per_phase + 1  # the turn's wall time always waits for the device
    assert record.timing == timing and record.phases_exact is exact


def test_cuda_stopwatch_knows_unsynchronised_phases_are_not_exact():
    assert not Stopwatch(torch.device("cuda"), "turn").phases_exact
    assert Stopwatch(torch.device("cuda"), "phases").phases_exact
    assert Stopwatch(torch.device("cpu"), "turn").phases_exact  # a CPU has no queue: its phases are exact


def test_turn_timing_decodes_the_same_tokens(tiny_llama):
    prompt = [1, 100, 200, 300]
    phases = generate(tiny_llama, prompt, DecodeConfig(max_new_tokens=12), NO_STOP)
    turn = generate(tiny_llama, prompt, DecodeConfig(max_new_tokens=12, timing="turn"), NO_STOP)
    assert turn.tokens == phases.tokens and turn.timing == "turn" and turn.phases_exact
    with pytest.raises(ValueError, match="timing"):
        DecodeConfig(timing="steps")


@pytest.mark.parametrize("method", sorted(head_methods()))
def test_drafter_layers_attend_with_sdpa_while_the_target_runs_the_tree_kernel(tiny_llama, method, monkeypatch):
    """Under the Triton backend only the target's attention runs the tree kernel: a drafter's layers keep
    SDPA (their own config, which switching the target cannot reach), and drafting dispatches no kernel."""
    use_kernels(monkeypatch, "triton")
    model = LlamaForCausalLM(copy.deepcopy(tiny_llama.config)).eval()
    model.load_state_dict(tiny_llama.state_dict())
    torch.manual_seed(0)
    head = head_class(method)(model).eval()
    use_tree_attention(model)  # after the head is built, as `step-cost` and a backend switch do
    for layer in [m for m in head.modules() if hasattr(m, "self_attn")]:
        assert layer.self_attn.config is not model.config and layer.self_attn.config._attn_implementation == "sdpa"
    phase, calls = ["engine"], collections.Counter()
    for name in (NAME, "sdpa"):
        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, name, _counted(ALL_ATTENTION_FUNCTIONS[name], name, phase, calls))
    monkeypatch.setattr(clover2.engine.kernels, "backend_for", _counted(clover2.engine.kernels.backend_for, "dispatch", phase, calls))
    drafter = head.drafter()
    draft = drafter.draft

    def labelled(*args, **kwargs):
        phase[0] = "draft"
        try:
            return draft(*args, **kwargs)
        finally:
            phase[0] = "engine"

    drafter.draft = labelled
    generate(model, [1, 100, 200, 300, 400], DecodeConfig(max_new_tokens=6), NO_STOP, drafter=drafter)
    assert calls[("engine", NAME)] > 0 and calls[("engine", "dispatch")] > 0
    assert not [key for key in calls if key[0] == "draft" and key[1] != "sdpa"]
    assert calls[("draft", "sdpa")] > 0 or method in ("medusa", "clover")  # heads whose drafting runs no layer


def _counted(function, name: str, phase: list[str], calls: collections.Counter):
    def wrapper(*args, **kwargs):
        calls[(phase[0], name)] += 1
        return function(*args, **kwargs)

    return wrapper
