"""The one-node test cluster (workflow/profiles/slurm/testing/cluster.sh) as the SLURM tests drive it."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from workflow_runs import ROOT

CLUSTER = ROOT / "workflow" / "profiles" / "slurm" / "testing" / "cluster.sh"
DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "sacct", "munged", "mariadbd")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")


def require_slurm() -> None:
    """Skip where the test cluster cannot run, saying why; fail instead under CLOVER2_REQUIRE_SLURM=1 (CI)."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    reason = None
    if missing:
        reason = f"Slurm is not installed here ({', '.join(missing)} missing; README 'Running on a cluster')"
    elif os.geteuid() != 0:
        reason = "the test cluster's daemons run as root"
    if reason and os.environ.get("CLOVER2_REQUIRE_SLURM") == "1":
        pytest.fail(f"CLOVER2_REQUIRE_SLURM=1 but {reason}")
    if reason:
        pytest.skip(reason)


def cluster_sh(action: str, directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLUSTER), action, str(directory)], capture_output=True, text=True, timeout=600)


def daemon_pids(directory: Path) -> list[int]:
    """The PIDs `start` recorded for the cluster's daemons (each the leader of its own session)."""
    run = directory / "run"
    return [int(path.read_text()) for path in run.glob("*.pid")] if run.is_dir() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
