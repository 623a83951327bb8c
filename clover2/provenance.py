"""Where a result came from: config hash, code version, packages, device, threads, seed."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("clover2-bench", "torch", "transformers", "tokenizers", "accelerate", "triton")


def config_hash(config: dict) -> str:
    """A short stable hash of a JSON-able config (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _git(directory: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, check=True).stdout.strip()


def git_commit(directory: Path = Path(__file__).resolve().parent) -> str:
    """The commit of the code that ran, with "-dirty" when the work tree has uncommitted changes."""
    try:
        commit = _git(directory, "rev-parse", "HEAD")
        dirty = _git(directory, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bf16 in hardware
CPUINFO = Path("/proc/cpuinfo")


def cpu_facts(cpuinfo: Path = CPUINFO) -> tuple[str, list[str]]:
    """The CPU's model name and which of BF16_CPU_FLAGS it has (machines of one kind differ in them)."""
    text = cpuinfo.read_text(encoding="utf-8", errors="replace") if cpuinfo.is_file() else ""
    model = next((line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = set(text.split())
    return model or platform.processor() or platform.machine(), [flag for flag in BF16_CPU_FLAGS if flag in flags]


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model, bf16 = cpu_facts()
    return f"cpu: {model} ({', '.join(bf16) if bf16 else 'no bf16 in hardware'})"


def provenance(config: dict, device: torch.device, seed: int) -> dict:
    """The record every result file carries."""
    return {
        "config": config,
        "config_hash": config_hash(config),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "device": device_description(device),
        "threads": torch.get_num_threads(),
        "seed": seed,
        "host": platform.node(),
    }
