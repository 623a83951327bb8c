"""`clover2 bench` end to end on the real small target, and the CLI's one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

from clover2.chat import prompt_ids
from clover2.cli import main
from clover2.targets import load_target
from clover2.tasks import load_questions


@pytest.fixture(scope="module")
def mt_bench_rows(smollm2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "vanilla.jsonl"
    code = main(
        ["bench", "--target", str(smollm2_dir), "--method", "vanilla", "--task", "mt_bench", "--limit", "2",
         "--max-new-tokens", "24", "--warmup", "1", "--threads", "2", "--out", str(out)]
    )
    assert code == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_bench_writes_one_row_per_question_with_provenance(mt_bench_rows):
    assert [row["question_id"] for row in mt_bench_rows] == ["81", "82"]
    for row in mt_bench_rows:
        assert row["task"] == "mt_bench" and row["method"] == "vanilla"
        assert len(row["turns"]) == 2
        provenance = row["provenance"]
        assert provenance["threads"] == 2 and provenance["seed"] == 0
        assert provenance["device"].startswith("cpu")
        assert provenance["packages"]["transformers"].startswith("5.")
        assert len(provenance["config_hash"]) == 16 and provenance["git_commit"]
        assert provenance["config"]["target_identity"]["name"] == "smollm2-135m-instruct"
        for turn in row["turns"]:
            assert 0 < turn["new_tokens"] <= 24 and turn["steps"] == turn["new_tokens"]
            assert set(turn["seconds"]) == {"prefill", "draft", "verify", "bookkeeping"}
            assert turn["text"]


def test_second_turn_prompt_contains_the_first_answer(mt_bench_rows, smollm2_dir):
    tokenizer = load_target(smollm2_dir).tokenizer
    row = mt_bench_rows[0]
    first_answer = row["turns"][0]["text"]
    question = load_questions("mt_bench", ids=["81"])[0]
    second_prompt = tokenizer.decode(prompt_ids(tokenizer, question.turns, [first_answer]))
    assert first_answer in second_prompt
    assert row["turns"][1]["prompt_tokens"] == len(prompt_ids(tokenizer, question.turns, [first_answer]))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nope", "--task", "qa"], "unknown method 'nope'"),
        (["--method", "vanilla", "--task", "nope"], "unknown task 'nope'"),
        (["--method", "vanilla", "--task", "qa", "--limit", "-1"], "limit must be >= 0"),
        (["--method", "vanilla", "--task", "qa", "--max-new-tokens", "0"], "max_new_tokens"),
    ],
)
def test_bench_bad_input_is_a_one_line_error(smollm2_dir, tmp_path, args, message):
    out = tmp_path / "x.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "clover2.cli", "bench", "--target", str(smollm2_dir), *args, "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and message in run.stderr
    assert not out.exists()


def test_bench_on_a_directory_that_is_not_a_target(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "clover2.cli", "bench", "--target", str(tmp_path), "--method", "vanilla",
         "--task", "qa", "--out", str(tmp_path / "x.jsonl")],
        capture_output=True, text=True,
    )
    assert run.returncode == 2
    assert str(tmp_path) in run.stderr and run.stderr.count("\n") == 1


def test_prepare_target_unknown_name_is_a_one_line_error_and_writes_nothing(tmp_path):
    out = tmp_path / "target"
    run = subprocess.run(
        [sys.executable, "-m", "clover2.cli", "prepare-target", "no-such-model", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "unknown target 'no-such-model'" in run.stderr and run.stderr.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("verb", ["bench", "check-lossless"])
def test_help_lists_every_method_name_under_method(verb, capsys, monkeypatch):
    from clover2.heads.protocol import head_methods
    from clover2.methods import METHODS

    monkeypatch.setenv("COLUMNS", "2000")  # argparse would wrap inside hyphenated names
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = capsys.readouterr().out
    described = text[text.index("--method [NAME=]METHOD ") :]
    assert all(name in described for name in [*METHODS, *head_methods()])


def test_a_head_for_a_method_not_asked_for_is_a_one_line_error(smollm2_dir, tmp_path, capsys):
    code = main(["bench", "--target", str(smollm2_dir), "--method", "vanilla", "--method", "eagle2",
                 "--head", "clover2=somewhere", "--task", "qa", "--out", str(tmp_path / "x.jsonl")])
    assert code == 2 and "'clover2' is not one of the --method values" in capsys.readouterr().err


def test_a_drafting_option_for_a_method_not_asked_for_is_a_one_line_error(smollm2_dir, tmp_path, capsys):
    code = main(["bench", "--target", str(smollm2_dir), "--method", "vanilla", "--method", "eagle2", "--head", "eagle2=somewhere",
                 "--draft-option", "eagle2:depth=6", "--draft-option", "eagle:tree=chain_3", "--task", "qa",
                 "--out", str(tmp_path / "x.jsonl")])
    assert code == 2 and "--draft-option eagle:tree=chain_3: 'eagle' is not one of the --method values" in capsys.readouterr().err


def test_drafting_options_go_to_their_method_and_bare_ones_to_every_method_with_a_head():
    from clover2.cli.decode import _drafting

    pairs = ["total_tokens=30", "eagle2:depth=6", "clover2:tree=chain_3", "eagle2:total_tokens=8"]
    drafting = _drafting(pairs, ["vanilla", "eagle2", "clover2"], ["eagle2"])
    assert drafting == {"eagle2": {"total_tokens": 8, "depth": 6}, "clover2": {"tree": "chain_3"}}  # a later value wins


def _edit_json(path, **changes):
    config = json.loads(path.read_text())
    for key, value in changes.items():
        section, _, field = key.rpartition("__")
        (config[section] if section else config)[field] = value
    path.write_text(json.dumps(config))


def _other_shapes(head_dir):
    from safetensors.torch import load_file, save_file

    weights = head_dir / "head.safetensors"
    save_file({name: torch.zeros(3, *tensor.shape) for name, tensor in load_file(weights).items()}, weights)


BAD_HEADS = {
    "a corrupt head.safetensors": (lambda d: (d / "head.safetensors").write_bytes(b"not a safetensors file"), "head.safetensors: cannot read"),
    "weights of other shapes": (_other_shapes, "head.safetensors: weights do not fit"),
    "a head.json for another hidden size": (lambda d: _edit_json(d / "head.json", hidden_size=64),
                                            "head.json: hidden_size is 64, but the target's is 32"),
    "a head.json for another vocabulary": (lambda d: _edit_json(d / "head.json", vocab_size=1000), "head.json: vocab_size is 1000"),
    "a head of another method": (lambda d: _edit_json(d / "head.json", method="medusa"), "holds a medusa head, not eagle"),
    "an unknown head option": (lambda d: _edit_json(d / "head.json", options__colour="blue"), "head.json: options do not fit"),
    "a head.json that is not JSON": (lambda d: (d / "head.json").write_text("{torn"), "head.json: not a head config"),
    "no head.json": (lambda d: (d / "head.json").unlink(), "head.json: not a head config"),
}


@pytest.fixture(scope="module")
def tiny_target_dir(smollm2_dir, tmp_path_factory):
    from helpers import prepare_tiny_target

    return prepare_tiny_target(smollm2_dir, tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("case", BAD_HEADS, ids=str)
def test_a_bad_head_directory_is_a_one_line_error_naming_the_file(case, tiny_target_dir, tmp_path, capsys):
    from clover2.heads.directory import save_head
    from clover2.heads.protocol import head_class

    target = load_target(tiny_target_dir)
    head_dir = save_head(head_class("eagle")(target.model), tmp_path / "head", target.identity)
    spoil, message = BAD_HEADS[case]
    spoil(head_dir)
    code = main(["bench", "--target", str(tiny_target_dir), "--method", "eagle", "--head", f"eagle={head_dir}", "--task", "qa",
                 "--limit", "1", "--max-new-tokens", "2", "--warmup", "0", "--out", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("clover2: error: ")]  # beside the target's loading bar
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert message in errors[0] and str(head_dir) in errors[0]
