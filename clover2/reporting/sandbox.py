"""Running model-written code: one sample per bubblewrap sandbox.

The boundary is bubblewrap (`bwrap`, Debian's package `bubblewrap`): each sample runs in new
mount, PID, network, IPC and UTS namespaces, as the unprivileged user nobody (65534) with no
capabilities and no_new_privs, and sees a private root holding only
- /usr read-only (system libraries and tools), and the interpreter's own prefix read-only with
  every site-packages directory hidden, so the standard library is the only Python it can import;
- its scratch directory /sandbox: a 64 MB tmpfs holding the sample, gone when it exits;
- an empty /tmp, a private /proc (its own processes only) and a minimal /dev.
The host's home, the checkout and every other file are not there to read or write; the network
namespace has only its own loopback. Limits: a wall-time limit (the whole PID namespace dies with
it), as much CPU time per process (and 1 s more: a sample whose runner was killed before it could
kill the sandbox stops computing by itself), an address space of 512 MB, 16 MB per file and per
output stream, and a process cap for nobody (counted over the machine, so a fork bomb stops at a
few dozen processes).

A second layer runs inside the interpreter: an audit hook that refuses processes, sockets, native
libraries and writes outside /sandbox, so such an attempt fails the sample with a reason even where
the namespace would have made it harmless. An in-process hook is no boundary by itself (Python's
documentation says so); it holds its policy in its own defaults and refuses their replacement,
so rebinding names in `__main__` changes nothing.
"""

from __future__ import annotations

import functools
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from clover2.errors import Clover2Error

NOBODY = 65534
SCRATCH = "/sandbox"
SCRATCH_BYTES = 64 * 2**20
FILE_BYTES = 16 * 2**20  # RLIMIT_FSIZE: any file, the captured stdout and stderr included
PROCESS_HEADROOM = 32  # processes nobody may add to what it runs already (RLIMIT_NPROC counts per user)

# Inside the sandbox: drop root (when bwrap ran as root, which keeps nobody's process cap real), seal
# the interpreter with the audit hook, then run the sample as __main__ in a namespace of its own.
_BOOTSTRAP = r"""
import os, sys

def _drop_root(uid):
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if os.geteuid() == 0 or os.getuid() == 0:
        raise SystemExit("sandbox: still root")

def _seal(root, audit):
    denied = ("os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "os.system", "os.kill", "os.killpg",
              "subprocess.Popen", "pty.spawn", "socket.", "ctypes.", "os.putenv", "os.unsetenv")
    writes = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link",
              "os.truncate", "shutil.rmtree", "shutil.move", "os.utime")

    def inside(path, root=root, fsdecode=os.fsdecode, realpath=os.path.realpath, sep=os.sep):
        try:
            full = realpath(fsdecode(path))
        except TypeError:
            return False  # file descriptors and other handles: refuse rather than guess
        return full == root or full.startswith(root + sep)

    def hook(event, args, denied=denied, writes=writes, inside=inside, writing_flags=os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        if event.startswith(denied):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "object.__setattr__" and args[1] in ("__code__", "__defaults__", "__kwdefaults__"):
            raise PermissionError(f"sandbox: setting a function's {args[1]} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in mode for c in "wax+")) or (flags or 0) & writing_flags
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing {path} is not allowed")
        elif event.startswith(writes) and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
            raise PermissionError(f"sandbox: {event} outside the sandbox is not allowed")

    if audit:
        sys.addaudithook(hook)

_drop_root(int(sys.argv[2]))
with open(sys.argv[1]) as _file:
    _code = compile(_file.read(), "sample.py", "exec")
_seal(os.path.realpath(os.getcwd()), sys.argv[3] == "audit")
del _drop_root, _seal, _file
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
"""


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    reason: str  # "passed", "timeout (10 s)", "failed (exit 1): MemoryError", "output over 16 MB", ...
    output: str = ""  # the tail of stderr, for a reader wondering why


def run_sandboxed(program: str, timeout: float = 10.0, memory_mb: int = 512, audit_hook: bool = True) -> SandboxResult:
    """Run `program` in a bubblewrap sandbox; passed when it exits 0 within the limits.

    `audit_hook=False` leaves out the in-process second layer (the tests do, to show that the
    namespaces alone contain each attack). Without a working bubblewrap this raises, never runs
    the program unisolated.
    """
    _check_bubblewrap()
    return _run(program, timeout, memory_mb, audit_hook)


def _run(program: str, timeout: float, memory_mb: int, audit_hook: bool) -> SandboxResult:
    with tempfile.TemporaryDirectory(prefix="clover2-sandbox-") as host_dir:
        sample = Path(host_dir) / "sample.py"
        sample.write_text(program, encoding="utf-8")
        command = [*_bwrap_command(sample), _interpreter(), "-I", "-S", "-c", _BOOTSTRAP, f"{SCRATCH}/sample.py", str(NOBODY),
                   "audit" if audit_hook else "none"]
        limits = functools.partial(_limit, memory_mb * 2**20, _tasks_of(_sandbox_uid()) + PROCESS_HEADROOM, math.ceil(timeout) + 1)
        with tempfile.TemporaryFile(dir=host_dir) as stdout, tempfile.TemporaryFile(dir=host_dir) as stderr:
            process = subprocess.Popen(command, cwd=host_dir, env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                                       stdout=stdout, stderr=stderr, start_new_session=True, preexec_fn=limits)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return SandboxResult(False, f"timeout ({timeout:g} s)", _tail(stderr))
            finally:
                _kill(process)
            return _verdict(process.returncode, stdout, stderr)


def _verdict(status: int, stdout, stderr) -> SandboxResult:
    tail = _tail(stderr)
    if status == 0:
        return SandboxResult(True, "passed", tail)
    if max(os.fstat(stdout.fileno()).st_size, os.fstat(stderr.fileno()).st_size) >= FILE_BYTES:
        return SandboxResult(False, f"output over {FILE_BYTES // 2**20} MB", tail)
    if status > 128:  # bwrap reports a sample killed by a signal as 128 + the signal
        return SandboxResult(False, f"killed by {signal.Signals(status - 128).name}", tail)
    last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
    return SandboxResult(False, f"failed (exit {status})" + (f": {last.strip()[:200]}" if last else ""), tail)


def _tail(handle, size: int = 2000) -> str:
    handle.seek(max(0, os.fstat(handle.fileno()).st_size - size))
    return handle.read().decode("utf-8", "replace")


def _limit(memory_bytes: int, processes: int, cpu_seconds: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))  # SIGXCPU, then SIGKILL
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _sandbox_uid() -> int:
    """The real user the sample runs as: nobody when this process is root, else this process's user
    (then nobody only inside the user namespace), which RLIMIT_NPROC counts."""
    return NOBODY if os.geteuid() == 0 else os.getuid()


def _tasks_of(uid: int) -> int:
    """Threads of real user `uid` on this machine: what RLIMIT_NPROC compares with its limit."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue  # a process that ended while we looked
        if int(fields["Uid"].split()[0]) == uid:
            count += int(fields["Threads"])
    return count


def _interpreter() -> str:
    """This Python's real executable (not a virtual environment's link to it)."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _bwrap_command(sample: Path) -> list[str]:
    """bwrap's arguments up to the command: namespaces, identity, the private root, and `sample` in it."""
    return [_bwrap(), *_private_root(), "--ro-bind", str(sample), f"{SCRATCH}/sample.py", "--chdir", SCRATCH]


@functools.cache
def _private_root() -> tuple[str, ...]:
    """The namespaces, the identity and the mounts every sample gets: this machine's, found once."""
    if os.geteuid() == 0:
        # No user namespace: the bootstrap becomes the real nobody, whose process cap the kernel enforces.
        identity = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                    "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        identity = ["--unshare-all", "--uid", str(NOBODY), "--gid", str(NOBODY), "--cap-drop", "ALL"]
    mounts = ["--ro-bind", "/usr", "/usr", *_top_level_links()]
    prefix = os.path.realpath(sys.base_prefix)
    if not prefix.startswith("/usr/"):
        # Its parents are made traversable: bwrap would copy a 0700 home's mode, which nobody cannot enter.
        parents = [str(p) for p in reversed(Path(prefix).parents) if str(p) != "/"]
        mounts += [*(a for parent in parents for a in ("--perms", "0755", "--dir", parent)), "--ro-bind", prefix, prefix]
    for site in _site_directories():
        mounts += ["--perms", "0555", "--tmpfs", site]
    mounts += ["--size", str(SCRATCH_BYTES), "--perms", "0777", "--tmpfs", SCRATCH,
               "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    # No --new-session: it put the namespace's init in a session of its own, out of reach of a killpg on
    # the sandbox's group, and --die-with-parent did not always take it down (CI, kernel 6.18: bwrap and
    # the sample outlived their killed parent). Popen's start_new_session already leaves the sample
    # without a controlling terminal, which is what --new-session guarded.
    return ("--die-with-parent", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", *identity, *mounts)


def _top_level_links() -> list[str]:
    """/bin, /lib, /lib64, /sbin as the host has them: links into /usr (merged /usr) or read-only binds."""
    arguments = []
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(name):
            arguments += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            arguments += ["--ro-bind", name, name]
    return arguments


def _site_directories() -> list[str]:
    """Every directory of installed Python packages the sandbox can see: hidden under an empty tmpfs."""
    base = {"base": sys.base_prefix, "platbase": sys.base_prefix}
    candidates = {sysconfig.get_path(kind, vars=base) for kind in ("purelib", "platlib")}
    candidates |= {str(p) for p in Path("/usr/lib").glob("python3*/*-packages")}
    candidates |= {str(p) for p in Path("/usr/local/lib").glob("python3*/*-packages")}
    return sorted(os.path.realpath(c) for c in candidates if os.path.isdir(c))


def _bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise Clover2Error(
            "HumanEval scoring runs model-written code under bubblewrap, which is not installed: "
            "install Debian's package 'bubblewrap' (apt-get install bubblewrap)"
        )
    return path


@functools.cache
def _check_bubblewrap() -> None:
    """bwrap is installed and can build the sandbox here; otherwise an error, never unisolated code."""
    result = _run("print('ok')\n", timeout=30, memory_mb=512, audit_hook=True)
    if not result.passed:
        raise Clover2Error(f"bubblewrap cannot build the sandbox on this machine ({result.reason}); "
                           f"check that Debian's package 'bubblewrap' works here: {result.output.strip()[:300]}")
