"""`clover2 train` and `clover2 bench` killed with SIGKILL at seeded random moments: each rerun resumes, and
the last one ends with what an uninterrupted run makes (the same weights; one record per question and
method, with the same tokens). The checkpoint swap is also interrupted at each of its steps."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clover2.training import loop as training
from helpers import prepare_tiny_target, write_sharegpt

KILLS = 4
CONVERSATIONS = [(f"Count from {n}.", f"{n}, {n + 1}, {n + 2}.") for n in range(20)]


@pytest.fixture(scope="module")
def workspace(smollm2_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("killed")
    prepare_tiny_target(smollm2_dir, root)
    write_sharegpt(root / "chats.jsonl.gz", CONVERSATIONS)
    return root


def _command(verb: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "clover2.cli", verb, *flags, "--threads", "1", "--device", "cpu"]


def _run(command: list[str], started: Path, kill_after: float | None = None) -> float | None:
    """Run `command` until it ends, or SIGKILL it `kill_after` seconds after `started` appears. The seconds
    from `started` appearing to its end, or None when it was killed."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    began = time.monotonic()
    try:
        _, stderr = process.communicate(timeout=kill_after if kill_after is not None else 600)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.communicate()
        return None
    assert process.returncode == 0, stderr.decode()[-3000:]
    return time.monotonic() - began


def _killed_then_finished(command: list[str], out: Path, started: Path, seed: int, span: float) -> int:
    """Kill the command KILLS times at seeded moments (fewer if it finishes first), then let it finish;
    the number of kills that landed. Each moment is at most a fifth of the uninterrupted run's `span`
    of work, so that the kills together leave it unfinished however the machine's speed varies."""
    moments = [span * random.Random(seed + i).uniform(0.02, 0.2) for i in range(KILLS)]
    landed = 0
    for moment in moments:
        if out.exists():
            break
        landed += _run(command, started, moment) is None
    if not out.exists():
        _run(command, started)
    return landed


def test_training_killed_anywhere_ends_with_the_uninterrupted_weights(workspace):
    def train(out: Path) -> list[str]:
        return _command("train", "--target", str(workspace / "target"), "--data", str(workspace / "chats.jsonl.gz"),
                        "--method", "eagle", "--out", str(out), "--conversations", "16", "--heldout", "2", "--max-length", "64",
                        "--batch-size", "2", "--max-steps", "24", "--checkpoint-every", "1", "--eval-every", "6",
                        "--warmup-steps", "0", "--schedule", "constant", "--lr", "0.003")

    whole, killed = workspace / "whole", workspace / "killed"
    span = _run(train(whole), Path(f"{whole}.partial/train_log.jsonl"))
    landed = _killed_then_finished(train(killed), killed, Path(f"{killed}.partial/train_log.jsonl"), seed=0, span=span)
    assert landed >= 2  # most kills landed while it trained, not after it had finished
    expected, got = load_file(whole / "head.safetensors"), load_file(killed / "head.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[name], got[name]) for name in expected)
    steps = [json.loads(line)["step"] for line in (killed / "train_log.jsonl").read_text().splitlines() if "loss" in line]
    assert steps == list(range(1, 25))
    assert not Path(f"{killed}.partial").exists()


def test_a_bench_killed_anywhere_ends_with_one_record_per_question_and_method(workspace):
    def bench(out: Path) -> list[str]:
        return _command("bench", "--target", str(workspace / "target"), "--method", "vanilla", "--method", "prompt-lookup",
                        "--task", "qa", "--limit", "12", "--max-new-tokens", "32", "--warmup", "0", "--out", str(out))

    whole, killed = workspace / "whole.jsonl", workspace / "killed.jsonl"
    span = _run(bench(whole), Path(f"{whole}.partial"))
    landed = _killed_then_finished(bench(killed), killed, Path(f"{killed}.partial"), seed=1, span=span)
    assert landed >= 2

    def tokens(path: Path) -> dict:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        keyed = {(r["question_id"], r["method"]): [turn["tokens"] for turn in r["turns"]] for r in rows}
        assert len(keyed) == len(rows) == 24  # one record per question and method, none twice
        return keyed

    assert tokens(killed) == tokens(whole)
    assert not Path(f"{killed}.partial").exists()


@pytest.mark.parametrize("crash_at", [1, 2, 3], ids=["after the fresh state", "after moving the old one aside", "after swapping in"])
def test_a_checkpoint_swap_interrupted_at_any_step_resumes_from_the_newest_complete_one(tmp_path, monkeypatch, crash_at):
    """Two checkpoints on a toy model; the second swap is cut short at one of its renames or removals."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    training._checkpoint(accelerator, tmp_path, 1)
    with torch.no_grad():
        model.weight.fill_(2.0)
    calls = {"n": 0}
    real_rename, real_rmtree = Path.rename, training.shutil.rmtree

    def cut(step):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise KeyboardInterrupt  # as a kill between two file operations leaves the directory
            return step(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(Path, "rename", cut(real_rename))
    monkeypatch.setattr(training.shutil, "rmtree", cut(real_rmtree))
    calls["n"] = -1  # the swap's first removal is of a leftover fresh directory (none here): not counted
    with pytest.raises(KeyboardInterrupt):
        training._checkpoint(accelerator, tmp_path, 2)
    monkeypatch.undo()
    with torch.no_grad():
        model.weight.fill_(0.0)
    step = training._resume(accelerator, tmp_path)
    assert step == 2 and torch.all(model.weight == 2.0)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
