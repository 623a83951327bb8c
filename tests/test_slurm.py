"""The SLURM profile on a real one-node Slurm cluster (workflow/profiles/slurm/testing/cluster.sh).

The smoke workflow runs as Slurm jobs, each seen by sacct with the resources the profile asked for,
and its greedy decodes and losslessness reports equal the local smoke run's. A training job that
Slurm cancels after a checkpoint runs again (the profile's retry) and resumes from that checkpoint.
Without Slurm these tests skip, saying why; with CLOVER2_REQUIRE_SLURM=1 (CI) they fail instead.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from clover2.workflow import train_flags
from slurm_cluster import alive, cluster_sh, daemon_pids, require_slurm
from workflow_runs import (
    ROOT,
    SMOKE,
    config,
    job_counts,
    snakemake,
    snakemake_command,
    timed_snakemake,
)

PROFILE = ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"
SACCT = ["sacct", "-X", "--parsable2", "--noheader", "--starttime", "now-1days",
         "--format=JobIDRaw,JobName,State,Partition,AllocCPUS,ReqMem,Timelimit,ReqTRES,Comment"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The environment that reaches the test cluster, started for this module and stopped after it."""
    require_slurm()
    directory = tmp_path_factory.mktemp("slurm") / "cluster"
    started = cluster_sh("start", directory)
    pids = daemon_pids(directory)
    try:
        if started.returncode != 0:
            pytest.fail(f"the test cluster did not start:\n{started.stderr[-3000:]}")
        yield {"SLURM_CONF": str(directory / "slurm.conf")}
    finally:
        stopped = cluster_sh("stop", directory)
        assert stopped.returncode == 0, stopped.stderr[-3000:]
        assert not [pid for pid in pids if alive(pid)], "a daemon of the test cluster outlived `cluster.sh stop`"
        assert subprocess.run(["pgrep", "slurmstepd"], capture_output=True).returncode == 1, "a job step outlived the cluster"


@pytest.fixture(scope="module")
def site_profile(tmp_path_factory) -> Path:
    """The SLURM profile as a site would adapt it: its own partition. Polling a controller on this
    machine costs nothing, so the first status check comes after 5 s instead of 40."""
    profile = yaml.safe_load(PROFILE.read_text())
    profile["default-resources"]["slurm_partition"] = "cpu"
    profile["slurm-init-seconds-before-status-checks"] = 5
    directory = tmp_path_factory.mktemp("site-profile")
    (directory / "config.yaml").write_text(yaml.safe_dump(profile))
    return directory


@pytest.fixture(scope="module")
def slurm_run(cluster, site_profile, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke-slurm")
    run = timed_snakemake("--profile", str(site_profile), "--configfile", str(SMOKE), workdir=workdir, timeout=3600, env=cluster)
    assert run.result.returncode == 0, run.result.stderr[-5000:]
    print(f"\nsmoke workflow: {run.seconds:.0f} s as Slurm jobs")
    return run


def _slurm_jobs(cluster: dict) -> list[dict]:
    result = subprocess.run(SACCT, capture_output=True, text=True, env={**os.environ, **cluster}, check=True)
    keys = ["id", "name", "state", "partition", "cpus", "mem", "limit", "tres", "comment"]
    return [dict(zip(keys, line.split("|"))) for line in result.stdout.splitlines()]


def _rule(job: dict) -> str:
    """The rule of a job, from the comment the executor gives it: rule_<name>_wildcards_<...>."""
    return job["comment"].removeprefix("rule_").split("_wildcards_")[0]


def _slurm_time(minutes: int) -> str:
    days, rest = divmod(minutes, 24 * 60)
    clock = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{clock}" if days else clock


def _planned_jobs(site_profile: Path, cluster: dict, workdir: Path) -> dict[str, int]:
    """Rule -> jobs of the smoke DAG that run as Slurm jobs (the target rule `all` runs in Snakemake itself)."""
    flags = ["-n", "--forceall", "--profile", str(site_profile), "--configfile", str(SMOKE)]
    result = snakemake(*flags, workdir=workdir, env=cluster)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    counts.pop("all"), counts.pop("total")
    return counts


def test_every_smoke_job_is_a_slurm_job_with_the_resources_asked(slurm_run, cluster, site_profile):
    jobs = _slurm_jobs(cluster)
    jobs = [job for job in jobs if job["name"] == _run_name(jobs)]
    planned = _planned_jobs(site_profile, cluster, slurm_run.workdir)
    assert {rule: sum(_rule(job) == rule for job in jobs) for rule in planned} == planned
    assert len(jobs) == sum(planned.values())
    profile, settings = yaml.safe_load(PROFILE.read_text()), config("smoke")
    for job in jobs:
        asked = profile["set-resources"].get(_rule(job), {})
        assert job["state"] == "COMPLETED" and job["partition"] == "cpu", job
        assert job["mem"] == f"{asked.get('mem_mb', settings.get('job_mem_mb', 8000))}M", job
        assert job["limit"] == _slurm_time(asked.get("runtime", profile["default-resources"]["runtime"])), job
        assert "gpu" not in job["tres"], job  # a CPU config asks no GPU
        if _rule(job) != "teacher":  # the teacher takes every core it is given
            assert int(job["cpus"]) == settings["threads"], job


def _run_name(jobs: list[dict]) -> str:
    """The Slurm job name of the smoke run's jobs (the executor names them by its run's UUID): the most common one."""
    names = [job["name"] for job in jobs if job["comment"].startswith("rule_")]
    return max(set(names), key=names.count)


def _greedy_tokens(root: Path) -> dict:
    tokens = {}
    for path in sorted(root.rglob("*.jsonl")):
        if path.name in ("T0.jsonl", "bench.jsonl") or "sweep" in path.parts:  # every greedy decode of the run
            for row in map(json.loads, path.read_text().splitlines()):
                for number, turn in enumerate(row["turns"]):
                    tokens[(str(path.relative_to(root)), row["method"], row["question_id"], number)] = turn["tokens"]
    return tokens


def test_slurm_outputs_equal_the_local_run_where_deterministic(slurm_run, smoke_run):
    print(f"\nsmoke workflow: {slurm_run.seconds:.0f} s as Slurm jobs, {smoke_run.seconds:.0f} s locally (--cores 2)")
    name = config("smoke")["target"]["name"]
    local, slurm = smoke_run.workdir / "results" / name, slurm_run.workdir / "results" / name
    expected = _greedy_tokens(local)
    assert len(expected) > 20
    assert _greedy_tokens(slurm) == expected
    for path in sorted(local.glob("lossless/*/T*.json")):
        here = json.loads(path.read_text())["reports"]
        there = json.loads((slurm / path.relative_to(local)).read_text())["reports"]
        if path.name == "T0.json":
            assert there == here  # token for token, every method
        else:  # sampled: the verdicts
            assert {m: r["passed"] for m, r in there.items()} == {m: r["passed"] for m, r in here.items()}


def test_a_cancelled_training_job_resumes_from_its_checkpoint(cluster, site_profile, tmp_path):
    """Clover-2's head of the smoke config trained for 60 steps as a Slurm job (after the target and the
    teacher jobs), cancelled once it has checkpointed: the retry finishes it from the checkpoint."""
    settings = config("smoke")
    settings["training"].update(max_steps=60, checkpoint_every=5, eval_every=60)
    (tmp_path / "preempt.yaml").write_text(yaml.safe_dump(settings))
    head = Path("results") / settings["target"]["name"] / "heads" / "clover2"
    env = {**os.environ, **cluster}
    run = _background_snakemake([str(head), "--profile", str(site_profile), "--configfile", "preempt.yaml"], tmp_path, env)
    try:
        state = tmp_path / f"{head}.partial" / "checkpoint" / "state.json"
        _wait(lambda: state.exists(), 900, "the training job's first checkpoint", run, tmp_path / "snakemake.log")
        job = _running_job(env, "rule_train_wildcards_clover2")
        killed_at = json.loads(state.read_text())["step"]
        subprocess.run(["scancel", job], env=env, check=True)
        run.wait(timeout=900)
    finally:
        run.kill()
    assert run.returncode == 0, (tmp_path / "snakemake.log").read_text()[-5000:]
    training = json.loads((tmp_path / head / "training.json").read_text())
    assert len(training["resumed_from"]) == 1 and killed_at <= training["resumed_from"][0] < 60
    print(f"\ncancelled at step >= {killed_at}, resumed from step {training['resumed_from'][0]} of 60")
    trains = [job for job in _slurm_jobs(cluster) if job["comment"].startswith("rule_train_wildcards_clover2")][-2:]
    assert [job["state"].split()[0] for job in trains] == ["CANCELLED", "COMPLETED"]
    log = tmp_path / "results" / settings["target"]["name"] / "logs" / "train" / "clover2.log"
    assert f"resuming from step {training['resumed_from'][0]}" in log.read_text()
    expected = load_file(_uninterrupted(tmp_path, settings) / "head.safetensors")
    got = load_file(tmp_path / head / "head.safetensors")
    assert all(torch.allclose(got[key], value, atol=1e-5) for key, value in expected.items())


def _background_snakemake(args: list[str], workdir: Path, env: dict) -> subprocess.Popen:
    """Snakemake started and left running; its output goes to workdir/snakemake.log (a pipe could fill up)."""
    command, env = snakemake_command(args, workdir, env)
    with (workdir / "snakemake.log").open("w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)


def _wait(ready, seconds: float, what: str, run: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert run.poll() is None, f"Snakemake ended before {what}:\n{log.read_text()[-5000:]}"
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.2)


def _running_job(env: dict, comment: str) -> str:
    rows = subprocess.run(["squeue", "-h", "-t", "running", "-o", "%i|%k"], capture_output=True, text=True, env=env, check=True)
    jobs = [line.split("|")[0] for line in rows.stdout.splitlines() if line.split("|")[1].startswith(comment)]
    assert len(jobs) == 1, rows.stdout
    return jobs[0]


def _uninterrupted(workdir: Path, settings: dict) -> Path:
    """The same head trained in one go, outside Slurm, from the same teacher cache."""
    root = workdir / "results" / settings["target"]["name"]
    out = workdir / "uninterrupted"
    flags = train_flags(settings, "clover2").split() + ["--teacher-cache", str(root / "teacher")]
    command = [sys.executable, "-m", "clover2.cli", "train", "--target", str(root / "target"), "--method", "clover2",
               "--out", str(out), *flags, "--threads", str(settings["threads"]), "--device", settings["device"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return out
