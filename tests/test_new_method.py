"""Adding a draft method is one file and its registration: a toy head (tests/toy_head.py) trains, decodes
losslessly and is reported through the registry alone, with no edit anywhere else."""

import json
import sys

import pytest

from clover2.cli import main
from clover2.heads import protocol
from clover2.reporting.tables import build_tables
from helpers import prepare_tiny_target, write_sharegpt

CPU = ["--threads", "1", "--device", "cpu"]


@pytest.fixture
def registered_toy(monkeypatch):
    """The one registration a method takes, its module in HEAD_MODULES, for this test only (the toy
    registers into a copy of the registry, so no other test sees it)."""
    monkeypatch.setattr(protocol, "HEAD_MODULES", (*protocol.HEAD_MODULES, "toy_head"))
    monkeypatch.setattr(protocol, "HEADS", dict(protocol.HEADS))
    monkeypatch.delitem(sys.modules, "toy_head", raising=False)


def test_a_registered_toy_head_trains_decodes_and_is_reported(registered_toy, smollm2_dir, tmp_path):
    target = prepare_tiny_target(smollm2_dir, tmp_path)
    data = write_sharegpt(tmp_path / "chats.jsonl.gz", [(f"Say {n}.", f"{n} and {n + 1}.") for n in range(10)])
    head = tmp_path / "toy"
    assert main(["train", "--target", str(target), "--data", str(data), "--method", "toy", "--out", str(head),
                 "--conversations", "8", "--heldout", "2", "--max-length", "64", "--batch-size", "2", "--max-steps", "4",
                 "--eval-every", "2", "--checkpoint-every", "2", *CPU]) == 0
    trained = json.loads((head / "training.json").read_text())
    assert json.loads((head / "head.json").read_text())["options"] == {"width": 3, "draft_vocab": None}
    assert trained["steps"] == 4 and trained["config"]["schedule"] == "constant"  # its own optimiser settings

    bench = tmp_path / "bench.jsonl"
    assert main(["bench", "--target", str(target), "--method", "toy", "--head", str(head), "--baseline", "vanilla",
                 "--draft-option", "width=2", "--task", "qa", "--limit", "2", "--max-new-tokens", "8", "--warmup", "0",
                 *CPU, "--out", str(bench)]) == 0
    rows = [json.loads(line) for line in bench.read_text().splitlines()]
    tokens = {(row["method"], row["question_id"]): [turn["tokens"] for turn in row["turns"]] for row in rows}
    assert len(tokens) == 4 and all(tokens["toy", q] == tokens["vanilla", q] for _, q in tokens)  # lossless at T = 0
    toy_turns = [turn for row in rows if row["method"] == "toy" for turn in row["turns"]]
    assert {size for turn in toy_turns for size in turn["tree_sizes"]} == {2}  # the drafting option reached the drafter

    tables, stats = build_tables([bench])
    assert "toy" in tables["speedup_T0"].index and "toy" in set(stats["method"])
    assert "toy" in protocol.head_methods()  # and train --method, bench --method list it
