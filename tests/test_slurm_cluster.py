"""The test cluster's script (workflow/profiles/slurm/testing/cluster.sh) beside another test cluster.

Two test clusters cannot share a machine (the ports, the /etc/slurm link). A test session killed
mid-suite leaves its cluster behind: the link, and the daemons running in sessions of their own;
pytest's retention later deletes its directory. The next `start` retires such a cluster, and still
refuses beside one whose owner (the process that started it) runs.
"""

import os
import shutil
import signal
import subprocess

import pytest

from slurm_cluster import CLUSTER, SYSTEM_CONF, alive, cluster_sh, daemon_pids, require_slurm

pytestmark = pytest.mark.slow


def test_start_refuses_beside_a_cluster_whose_owner_runs(tmp_path):
    require_slurm()
    live, second = tmp_path / "live", tmp_path / "second"
    started = cluster_sh("start", live)  # owned by this test session
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        refused = cluster_sh("start", second)
        assert refused.returncode != 0 and f"a test cluster runs at {live} for process {os.getpid()}" in refused.stderr, refused.stderr
        assert not second.exists() and os.readlink(SYSTEM_CONF) == str(live / "slurm.conf")
    finally:
        stopped = cluster_sh("stop", live)
        assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert not SYSTEM_CONF.is_symlink()


@pytest.mark.parametrize("deleted", [False, True], ids=["its directory kept", "its directory deleted"])
def test_start_retires_a_cluster_whose_test_session_was_killed(tmp_path, deleted):
    require_slurm()
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    # Started from a shell that then ends, as a killed session leaves its cluster: running, owned by nobody.
    started = subprocess.run(["bash", "-c", '"$0" start "$1"; exit $?', str(CLUSTER), str(killed)], capture_output=True, text=True, timeout=600)
    pids = daemon_pids(killed)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        if deleted:
            shutil.rmtree(killed)  # what pytest's retention does to an old session's directory; the daemons go on
        restarted = cluster_sh("start", fresh)
        assert restarted.returncode == 0, restarted.stderr[-3000:]
        assert f"retiring the test cluster at {killed}" in restarted.stderr and not killed.exists()
        assert not [pid for pid in pids if alive(pid)], "a daemon of the killed session's cluster outlived the retirement"
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
