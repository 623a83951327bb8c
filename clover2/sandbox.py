"""Running model-written code: one subprocess per sample, contained.

Layers, each of which alone turns the listed attack into a failed sample:
- a fresh throwaway working directory, an empty environment, its own session (killed as a group);
- a wall-time limit (infinite loops) and an address-space limit (memory hogs);
- a network namespace with no interfaces (`unshare -rn`) where the machine allows one;
- an audit hook installed before the sample runs, which cannot be removed from Python and refuses
  processes (fork, exec, subprocess: fork bombs), sockets, native-library loading (ctypes), and any
  write, removal or rename outside the working directory.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# The bootstrap runs the sample file given as argv[1] after sealing the interpreter.
_BOOTSTRAP = r"""
import os, sys
root = os.path.realpath(os.getcwd())
DENIED = ("os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "os.system", "os.kill", "os.killpg",
          "subprocess.Popen", "pty.spawn", "socket.", "ctypes.", "os.putenv", "os.unsetenv")
WRITES = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link",
          "os.truncate", "shutil.rmtree", "shutil.move", "os.utime")

def inside(path):
    try:
        path = os.fsdecode(path)
    except TypeError:
        return False  # file descriptors and other handles: refuse rather than guess
    full = os.path.realpath(path)
    return full == root or full.startswith(root + os.sep)

def hook(event, args):
    if event.startswith(DENIED):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in mode for c in "wax+")) or (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writing and not inside(path):
            raise PermissionError(f"sandbox: writing {path} is not allowed")
    elif event.startswith(WRITES) and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
        raise PermissionError(f"sandbox: {event} outside the sandbox is not allowed")

source = open(sys.argv[1]).read()
code = compile(source, "sample.py", "exec")
sys.addaudithook(hook)
exec(code, {"__name__": "__main__"})
"""


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    reason: str  # "passed", "failed (exit N)", "timeout", ...
    output: str = ""  # the tail of stderr, for a reader wondering why


def run_sandboxed(program: str, timeout: float = 10.0, memory_mb: int = 512) -> SandboxResult:
    """Run `program` contained; passed when it exits 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="clover2-sandbox-") as workdir:
        sample = Path(workdir) / "sample.py"
        sample.write_text(program, encoding="utf-8")
        command = [*_network_isolation(), sys.executable, "-I", "-S", "-c", _BOOTSTRAP, str(sample)]
        limits = functools.partial(_limit, memory_mb * 2**20)
        process = subprocess.Popen(command, cwd=workdir, env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                   preexec_fn=limits)  # fmt: skip
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(process)
            return SandboxResult(False, "timeout")
        finally:
            _kill(process)
        tail = stderr.decode("utf-8", "replace")[-2000:]
        if process.returncode == 0:
            return SandboxResult(True, "passed", tail)
        return SandboxResult(False, f"failed (exit {process.returncode})", tail)


def _limit(memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**24, 2**24))  # 16 MB per file, even inside the sandbox
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


@functools.cache
def _network_isolation() -> tuple[str, ...]:
    """`unshare -rn` (a user and network namespace: no interfaces) when this machine allows it."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode == 0:
        return (unshare, "-rn")
    return ()
