"""The sandbox that runs model-written code: each attack is contained by bubblewrap alone, and with the
audit hook as well it scores as a failure with its reason."""

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from clover2.errors import Clover2Error
from clover2.reporting import sandbox
from clover2.reporting.sandbox import run_sandboxed

CHECKOUT = Path(__file__).resolve().parents[1]
TOKEN = uuid.uuid4().hex[:12]  # names every file an attack aims at, and marks the processes it starts
SLEEP = "417.5"  # a sleep no other process on the machine runs: a survivor is found by it

ESCAPE = "open({escape!r}, 'w').write('escaped')\n"
ATTACKS = {
    "policy rebound in __main__": (
        "import sys, os\nm = sys.modules['__main__']\nm.inside = lambda p: True\nm.DENIED = ('x.',)\n"
        "open('../escaped.txt', 'w').write('x')\nos.system('id > {escape}')\n" + ESCAPE
    ),
    "hook's defaults replaced": (
        "import gc\nhooks = [f for f in gc.get_objects() if getattr(f, '__name__', '') == 'hook']\n"
        "hooks[0].__defaults__ = ((), (), lambda p: True, 0)\n" + ESCAPE
    ),
    "ctypes": "import ctypes\nctypes.CDLL(None).system(b'touch {escape}')\n" + ESCAPE,
    "os.fork": "import os\nif os.fork() == 0:\n    open({escape!r}, 'w').write('x')\n    os._exit(0)\nos.wait()\n",
    "subprocess": "import subprocess\nsubprocess.run(['touch', {escape!r}])\n" + ESCAPE,
    "os.exec": "import os\nos.execv('/bin/sh', ['sh', '-c', 'touch {escape}'])\n",
    "a daemon left behind": f"import os\nos.system('setsid sleep {SLEEP} > /dev/null 2>&1 &')\n" + ESCAPE,
    "write to the checkout": ESCAPE,
    "write to $HOME": ESCAPE,
    "read $HOME": "import sys\nsys.stderr.write(open({secret!r}).read())\n",
    "read the checkout": "import sys\nsys.stderr.write(open({checkout_file!r}).read())\n",
    "socket to 127.0.0.1": "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n",
    "/proc/self/mem": "mem = open('/proc/self/mem', 'r+b')\n" + ESCAPE,
    "signal to a host process": "import os, signal\nos.kill({victim}, signal.SIGKILL)\n",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "memory exhaustion": "hog = []\nwhile True:\n    hog.append(bytearray(10**8))\n",
    "1 GB of output": "import sys\nchunk = 'x' * 2**20\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n",
    "infinite loop": "while True:\n    pass\n",
}
# Where each attack aims its write: the checkout, $HOME, or a host directory the sandbox does not have.
TARGETS = {"write to the checkout": CHECKOUT, "write to $HOME": Path.home()}
SECRET = "the host's secret " + TOKEN


@pytest.fixture
def host(tmp_path):
    """What an attack may aim at on the host, and a way to check afterwards that nothing there changed."""
    secret = Path.home() / f".clover2-sandbox-secret-{TOKEN}"
    secret.write_text(SECRET)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    victim = subprocess.Popen(["sleep", "60"])
    yield {"tmp": tmp_path, "secret": secret, "listener": listener, "victim": victim}
    victim.kill()
    victim.wait()
    listener.close()
    secret.unlink()


def _survivors() -> list[str]:
    """Host processes an attack started that outlived its sandbox."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if "/sandbox/sample.py" in text or SLEEP in text:
            found.append(text)
    return found


@pytest.mark.parametrize("audit_hook", [True, False], ids=["with the audit hook", "bubblewrap alone"])
@pytest.mark.parametrize("attack", ATTACKS, ids=str)
def test_attacks_are_contained(attack, audit_hook, host):
    escape = TARGETS.get(attack, host["tmp"]) / f"escaped-{TOKEN}.txt"
    program = ATTACKS[attack].format(escape=str(escape), secret=str(host["secret"]), port=host["listener"].getsockname()[1],
                                     checkout_file=str(CHECKOUT / "pyproject.toml"), victim=host["victim"].pid)
    try:
        result = run_sandboxed(program + "print('survived')\n", timeout=3, audit_hook=audit_hook)
        assert not escape.exists()
    finally:
        escape.unlink(missing_ok=True)
    assert not (host["tmp"].parent / "escaped.txt").exists()
    assert SECRET not in result.output and "clover2-bench" not in result.output
    with pytest.raises(BlockingIOError):
        host["listener"].accept()
    assert host["victim"].poll() is None
    deadline = time.monotonic() + 5
    while _survivors() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _survivors()
    if audit_hook:
        assert not result.passed and result.reason not in ("", "passed")


@pytest.mark.parametrize("attack,reason", [
    ("fork bomb", "timeout (3 s)"),
    ("infinite loop", "timeout (3 s)"),
    ("memory exhaustion", "failed (exit 1): MemoryError"),
    ("1 GB of output", "output over 16 MB"),
    ("subprocess", "failed (exit 1): PermissionError: sandbox: subprocess.Popen is not allowed"),
])
def test_a_failed_sample_says_why(attack, reason):
    assert run_sandboxed(ATTACKS[attack].format(escape="/nonexistent"), timeout=3).reason == reason


def test_the_sample_sees_the_standard_library_and_nothing_installed():
    program = ("import json, hashlib, math, typing, collections, itertools, re, os\n"
               "assert os.getuid() == 65534 and os.getcwd() == '/sandbox' and os.listdir('.') == ['sample.py']\n"
               "try:\n    import torch\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('torch is importable')\n"
               "try:\n    import pytest\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('pytest is importable')\n")
    result = run_sandboxed(program)
    assert result.passed, result.reason


def test_writes_inside_the_sandbox_directory_work_and_vanish():
    program = "open('notes.txt', 'w').write('kept')\nassert open('notes.txt').read() == 'kept'\n"
    assert run_sandboxed(program).passed
    assert not any(Path("/tmp").glob("clover2-sandbox-*/notes.txt"))


def test_without_bubblewrap_scoring_refuses_naming_the_package(monkeypatch):
    sandbox._check_bubblewrap.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")
    try:
        with pytest.raises(Clover2Error, match="install Debian's package 'bubblewrap'"):
            run_sandboxed("print('never run')\n")
    finally:
        monkeypatch.undo()
        sandbox._check_bubblewrap.cache_clear()


def test_each_sample_process_may_compute_for_its_wall_time_and_a_second_more():
    """What bounds a sample whose runner was killed before it could kill the sandbox: SIGXCPU after
    the wall-time limit (+1 s) of CPU time, SIGKILL a second later."""
    program = "import resource, sys\nsys.stderr.write(repr(resource.getrlimit(resource.RLIMIT_CPU)))\n"
    assert run_sandboxed(program, timeout=2.5).output == "(4, 5)"


def test_a_sandbox_killed_from_outside_leaves_no_process():
    """The whole PID namespace goes with bwrap: SIGKILL to the sandbox's group leaves nothing running."""
    command = [*sandbox._bwrap_command(Path(__file__)), sandbox._interpreter(), "-I", "-S", "-c",
               f"import os, time\nos.system('setsid sleep {SLEEP} &')\ntime.sleep(30)"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not any(SLEEP in s for s in _survivors()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(SLEEP in s for s in _survivors())
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 5
    while _survivors() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _survivors()
