"""Data-parallel training under `accelerate launch`: 2 CPU processes (gloo) train as 1 process on their joint batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clover2.targets import load_target
from clover2.training.loop import _batches
from clover2.training.sharegpt import load_examples
from helpers import prepare_tiny_target, write_sharegpt

TESTS = Path(__file__).resolve().parent
PER_PROCESS_BATCH, STEPS = 2, 4
# 14 conversations of one shape (2 held out): every example has the same length and the same scored
# positions, so the mean of the per-process losses is the loss of their joint batch exactly.
CONVERSATIONS = [(f"Say {n}.", f"{n} and {n + 1}.") for n in range(21, 35)]


@pytest.fixture(scope="module")
def workspace(smollm2_dir, tmp_path_factory) -> Path:
    """A tiny random Llama over SmolLM2's vocabulary, prepared as a target, and its ShareGPT file."""
    root = tmp_path_factory.mktemp("data_parallel")
    target = prepare_tiny_target(smollm2_dir, root)
    write_sharegpt(root / "chats.jsonl.gz", CONVERSATIONS)
    examples = load_examples(load_target(target).tokenizer, root / "chats.jsonl.gz", len(CONVERSATIONS), 64)
    assert len({len(e.input_ids) for e in examples}) == len({sum(e.loss_mask) for e in examples}) == 1
    return root


def _train(workspace: Path, out: Path, processes: int, stop_after: int | None = None) -> subprocess.CompletedProcess:
    """`clover2 train` in `processes` processes on a global batch of 4; `stop_after`: preempted after that checkpoint."""
    flags = ["--target", str(workspace / "target"), "--data", str(workspace / "chats.jsonl.gz"), "--method", "clover2",
             "--out", str(out), "--conversations", "12", "--heldout", "2", "--max-length", "64",
             "--batch-size", str(4 // processes), "--max-steps", str(STEPS), "--checkpoint-every", "2", "--eval-every", "2",
             "--warmup-steps", "0", "--schedule", "constant", "--lr", "0.003", "--threads", "1", "--device", "cpu"]
    program = [str(TESTS / "preempted_train.py")] if stop_after else ["-m", "clover2.cli", "train"]
    if processes == 1:
        command = [sys.executable, *program]
    else:  # accelerate's --multi_gpu is the flag that starts N processes (torchrun); on a CPU they use gloo
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *program]
    env = {**os.environ, "CLOVER2_TEST_STOP_AFTER": str(stop_after or 0), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, *flags], capture_output=True, text=True, env=env, timeout=600)


def _log(head: Path) -> list[dict]:
    return [json.loads(line) for line in (head / "train_log.jsonl").read_text().splitlines()]


def _losses(head: Path) -> list[float]:
    return [record["loss"] for record in _log(head)[:STEPS]]


@pytest.fixture(scope="module")
def single(workspace) -> Path:
    result = _train(workspace, workspace / "single", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    return workspace / "single"


@pytest.fixture(scope="module")
def parallel(workspace) -> tuple[Path, subprocess.CompletedProcess]:
    result = _train(workspace, workspace / "parallel", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    return workspace / "parallel", result


def test_each_process_takes_its_share_of_the_one_process_batch():
    examples = list(range(12))
    for epoch in range(3):
        joint = _batches(examples, 4, seed=0, epoch=epoch)
        shares = [[batch[rank::2] for batch in _batches(examples, 2 * 2, seed=0, epoch=epoch)] for rank in range(2)]
        assert [sorted(a + b) for a, b in zip(*shares)] == [sorted(batch) for batch in joint]


def test_two_processes_train_as_one_on_the_doubled_batch(single, parallel):
    head, _ = parallel
    assert json.loads((head / "training.json").read_text())["processes"] == 2
    assert json.loads((single / "training.json").read_text())["processes"] == 1
    one, two = _losses(single), _losses(head)
    assert len(set(one)) == STEPS  # every step saw other examples, so equal losses mean the same batches
    assert two == pytest.approx(one, rel=1e-5)
    first, second = load_file(single / "head.safetensors"), load_file(head / "head.safetensors")
    assert all(torch.allclose(first[name], second[name], atol=1e-5) for name in first)


def test_only_the_main_process_writes_and_shows_progress(parallel):
    head, result = parallel
    assert sorted(path.name for path in head.iterdir()) == ["acceptance.json", "head.json", "head.safetensors", "train_log.jsonl", "training.json"]
    assert [record["step"] for record in _log(head)] == list(range(1, STEPS + 1))  # one writer: no line twice
    assert result.stdout.count("head ready") == 1
    bars = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith("train clover2:")]
    assert sum(f" 0/{STEPS} " in line for line in bars) == 1  # one bar started, not one per process
    assert sum(line.startswith("Loading weights: 100%") for line in result.stderr.replace("\r", "\n").splitlines()) == 1


@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)], ids=["2-to-1", "1-to-2"])
def test_a_checkpoint_resumes_under_another_number_of_processes(workspace, single, first, then):
    out = workspace / f"resumed-{first}-to-{then}"
    stopped = _train(workspace, out, first, stop_after=2)
    assert stopped.returncode != 0 and not out.exists()
    assert json.loads((Path(f"{out}.partial") / "checkpoint" / "state.json").read_text())["step"] == 2
    resumed = _train(workspace, out, then)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 2" in resumed.stderr
    training = json.loads((out / "training.json").read_text())
    assert training["resumed_from"] == [2] and training["processes"] == then
    assert _losses(out) == pytest.approx(_losses(single), rel=1e-5)
    expected, got = load_file(single / "head.safetensors"), load_file(out / "head.safetensors")
    assert all(torch.allclose(expected[name], got[name], atol=1e-5) for name in expected)
