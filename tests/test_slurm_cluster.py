"""The test cluster's script (workflow/profiles/slurm/testing/cluster.sh) after a run that never stopped it.

A test run killed mid-suite leaves /etc/slurm/slurm.conf linking to its cluster, and that cluster's
daemons running in sessions of their own; pytest's retention later deletes its directory. The next
`start` retires such a cluster instead of refusing to run, and still refuses beside a live one.
"""

import os
import shutil
import signal
import subprocess

import pytest

from slurm_cluster import SYSTEM_CONF, alive, cluster_sh, daemon_pids, require_slurm

pytestmark = pytest.mark.slow


def test_start_retires_a_cluster_whose_run_was_killed_and_refuses_beside_a_live_one(tmp_path):
    require_slurm()
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    started = cluster_sh("start", killed)
    pids = daemon_pids(killed)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        beside_live = cluster_sh("start", fresh)
        assert beside_live.returncode != 0 and f"a test cluster runs at {killed}" in beside_live.stderr, beside_live.stderr
        assert not fresh.exists() and os.readlink(SYSTEM_CONF) == str(killed / "slurm.conf")

        shutil.rmtree(killed)  # what pytest's retention does to an old run's directory; the daemons go on
        restarted = cluster_sh("start", fresh)
        assert restarted.returncode == 0, restarted.stderr[-3000:]
        assert f"retiring the test cluster at {killed}" in restarted.stderr
        assert not [pid for pid in pids if alive(pid)], "a daemon of the killed run's cluster outlived the retirement"
        assert os.readlink(SYSTEM_CONF) == str(fresh / "slurm.conf")
        nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                               env={**os.environ, "SLURM_CONF": str(fresh / "slurm.conf")})
        assert nodes.stdout.split() == ["idle"], nodes.stderr
    finally:
        for pid in pids:
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
        stopped = cluster_sh("stop", fresh)
        cluster_sh("stop", killed)
        assert stopped.returncode == 0, stopped.stderr[-3000:]
        assert not SYSTEM_CONF.is_symlink()
