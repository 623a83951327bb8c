"""Running the Snakemake workflow from tests: one command line, and the smoke run that several test files compare."""

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "workflow" / "config" / "smoke.yaml"


def snakemake_command(args: list[str], workdir: Path, env: dict | None = None) -> tuple[list[str], dict]:
    """The command line and environment that run this repository's Snakefile in `workdir`."""
    # The venv's bin first, so that rules find `clover2` as a fresh shell would after installation.
    env = {**os.environ, **(env or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), *args], env


def snakemake(*args: str, workdir: Path, timeout: int = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    command, env = snakemake_command(list(args), workdir, env)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=workdir)


def job_counts(stdout: str) -> dict[str, int]:
    """A dry run's "Job stats" table: rule name -> number of jobs."""
    table = stdout[stdout.index("Job stats:") :].splitlines()[3:]
    counts = {}
    for line in table:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def config(name: str) -> dict:
    return yaml.safe_load((ROOT / "workflow" / "config" / f"{name}.yaml").read_text())


@dataclass
class Run:
    workdir: Path
    seconds: float
    result: subprocess.CompletedProcess


def timed_snakemake(*args: str, workdir: Path, timeout: int, env: dict | None = None) -> Run:
    started = time.monotonic()
    result = snakemake(*args, workdir=workdir, timeout=timeout, env=env)
    return Run(workdir, time.monotonic() - started, result)
