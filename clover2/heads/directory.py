"""A head directory: what `save_head` writes, `load_head` rebuilds, and the readers of what training added.

`head.safetensors` holds the trainable weights (and a draft vocabulary's token ids), `head.json`
the method, its options, the target's identity and sizes; a trained head also holds `training.json`
(steps, seconds, settings) and `train_log.jsonl` (one record per logged step, held-out evaluations
included).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from clover2.atomic import atomic_directory
from clover2.errors import Clover2Error
from clover2.heads.draft_vocab import IDS
from clover2.heads.protocol import DraftHead, head_class, trainable_state

WEIGHTS, CONFIG, RUN, LOG = "head.safetensors", "head.json", "training.json", "train_log.jsonl"


def save_head(head: DraftHead, directory: Path, target_identity: dict, extra_files: dict[str, str] | None = None) -> Path:
    """Write the head's trainable weights and config atomically (a directory that exists is complete)."""
    config = {
        "method": head.method,
        "options": head.options,
        "recorded": head.recorded,
        "hidden_size": head.hidden_size,
        "vocab_size": head.vocab_size,
        "target": target_identity,
    }
    with atomic_directory(directory) as tmp:
        save_file(trainable_state(head), tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(directory)


def load_head(
    directory: Path, target: PreTrainedModel, method: str | None = None, drafting: dict | None = None
) -> DraftHead:
    """Rebuild a head for `target` and load its trained weights; mismatches are errors naming the file.

    `method` (default: the one that trained it) may name another method that shares its weights;
    `drafting` overrides the head's drafting options (its tree) for this decoding only.
    """
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG, directory / WEIGHTS
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        trained, options = config["method"], config["options"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise Clover2Error(f"{config_path}: not a head config ({error})") from None
    method = method or trained
    if method != trained and trained not in head_class(method).shares_weights_with:
        raise Clover2Error(f"{directory}: holds a {trained} head, not {method}")
    for key, actual in (("hidden_size", target.config.hidden_size), ("vocab_size", target.config.vocab_size)):
        if config.get(key) != actual:
            raise Clover2Error(f"{config_path}: {key} is {config.get(key)}, but the target's is {actual}: a head for another target")
    drafting = drafting or {}
    unknown = sorted(set(drafting) - head_class(method).drafting_options)
    if unknown:
        allowed = ", ".join(sorted(head_class(method).drafting_options))
        raise Clover2Error(f"drafting option {unknown[0]!r}: not one a {method} head can change at decoding time ({allowed})")
    try:
        state = load_file(weights_path)
    except (OSError, SafetensorError) as error:
        raise Clover2Error(f"{weights_path}: cannot read the head's weights ({error})") from None
    try:
        own = options if method == trained else head_class(method).options_from(trained, options)
        head = head_class(method)(target, vocab_ids=state.get(IDS), **(own | drafting))
    except TypeError as error:
        raise Clover2Error(f"{config_path}: options do not fit a {method} head ({error})") from None
    missing = set(trainable_state(head)) - set(state)
    if missing:
        raise Clover2Error(f"{weights_path}: lacks {len(missing)} weights of a {method} head (e.g. {sorted(missing)[0]})")
    try:
        head.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of another shape: torch lists every one; the first says enough
        first = next(line.strip() for line in str(error).splitlines()[1:] if line.strip())
        raise Clover2Error(f"{weights_path}: weights do not fit a {method} head for this target ({first})") from None
    return head


def read_json(path: Path) -> dict:
    """A JSON file as a dict; a file that cannot be read or parsed is an error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise Clover2Error(f"{path}: cannot read ({error})") from None


def head_config(directory: Path) -> dict:
    return read_json(Path(directory) / CONFIG)


def training_run(directory: Path) -> dict:
    """What training recorded about the run: steps, seconds, settings."""
    return read_json(Path(directory) / RUN)


def training_log(directory: Path) -> list[dict]:
    """The training log, one record per line."""
    return [json.loads(line) for line in (Path(directory) / LOG).read_text(encoding="utf-8").splitlines()]


def last_heldout(directory: Path) -> dict:
    """The last held-out evaluation in the training log."""
    return next(r["heldout"] for r in reversed(training_log(directory)) if "heldout" in r)


def stored_parameters(directory: Path) -> int:
    """Trainable weights in the head file (a draft vocabulary's stored token ids are not weights)."""
    with safe_open(str(Path(directory) / WEIGHTS), "pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys() if name != IDS)
