"""The frozen target as teacher: one forward gives the states and distributions a head learns from."""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import PreTrainedModel

from clover2.atomic import atomic_directory
from clover2.engine.decoding import StateTap
from clover2.engine.target import Target
from clover2.errors import Clover2Error
from clover2.heads.protocol import TrainBatch
from clover2.training.sharegpt import Example, collate


@torch.no_grad()
def teacher_batch(
    target: PreTrainedModel, input_ids: torch.Tensor, loss_mask: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> TrainBatch:
    """Run the target over [B, T] sequences and collect u, h and its logits at every position."""
    attention_mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    tap = StateTap(target, enabled=True, batched=True)
    try:
        logits = target(input_ids=input_ids, attention_mask=attention_mask.long(), use_cache=False).logits
        states = tap.take()
    finally:
        tap.close()
    return TrainBatch(input_ids, loss_mask.bool() & attention_mask, attention_mask, states.u, states.h, logits)


class OnlineTeacher:
    """The default: the frozen target runs inside the training loop (nothing is written to disk)."""

    def __init__(self, target: PreTrainedModel, pad_id: int) -> None:
        self.target, self.pad_id = target, pad_id

    def batch(self, items: list[Example], device: torch.device) -> TrainBatch:
        ids, loss_mask, attention = (t.to(device) for t in collate(items, self.pad_id))
        return teacher_batch(self.target, ids, loss_mask, attention)


# --------------------------------------------------------------------------- cached teacher shards
# As the papers did: the target's states and distributions computed once and stored, u and h in
# fp16 and p as its top-k logits, so training no longer runs the target. Big: see cache_bytes.

MANIFEST, SHARD_EXAMPLES = "teacher.json", 256


@dataclass(frozen=True)
class CachedExample(Example):
    key: str = ""  # "<shard file>:<index>"


def cache_bytes(tokens: int, hidden_size: int, top_k: int) -> int:
    """Disk size of a cache: per token u and h (fp16), top-k logits (fp16) and ids (int32), the token and mask."""
    return tokens * (2 * hidden_size * 2 + top_k * (2 + 4) + 4 + 1)


def write_teacher_cache(
    target: Target, examples: list[Example], out: Path, top_k: int, batch_size: int, source: dict | None = None
) -> Path:
    """Run the target over `examples` once and store what training needs, in shards, atomically.

    `source` says where the text came from (recorded in the manifest)."""
    config = target.model.config
    tokens = sum(len(e.input_ids) for e in examples)
    size = cache_bytes(tokens, config.hidden_size, top_k)
    warnings.warn(f"teacher cache {out}: {len(examples)} conversations, {tokens} tokens, about {size / 2**30:.2f} GiB on disk", stacklevel=2)
    online = OnlineTeacher(target.model, pad_id(target))
    device = target.model.device
    with atomic_directory(out) as tmp:
        shards = []
        for first in tqdm(range(0, len(examples), SHARD_EXAMPLES), desc="teacher cache", unit="shard"):
            part = examples[first : first + SHARD_EXAMPLES]
            tensors = {}
            for start in range(0, len(part), batch_size):
                items = part[start : start + batch_size]
                tensors |= _stored(online.batch(items, device), items, first + start, top_k)
            shards.append(f"shard-{len(shards):05d}.safetensors")
            save_file(tensors, str(tmp / shards[-1]))
        manifest = {"target": target.identity, "source": source or {}, "top_k": top_k, "examples": len(examples), "tokens": tokens,
                    "vocab_size": config.vocab_size, "hidden_size": config.hidden_size, "shards": shards}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return Path(out)


def pad_id(target: Target) -> int:
    pad = target.tokenizer.pad_token_id
    return pad if pad is not None else target.stop_token_ids[0]


def _stored(batch: TrainBatch, items: list[Example], first: int, top_k: int) -> dict[str, torch.Tensor]:
    top = batch.teacher_logits.float().topk(top_k, dim=-1)
    tensors = {}
    for row, example in enumerate(items):
        length, name = len(example.input_ids), str(first + row)
        tensors |= {f"{name}.input_ids": batch.input_ids[row, :length].int(), f"{name}.loss_mask": batch.loss_mask[row, :length],
                    f"{name}.u": batch.u[row, :length].half(), f"{name}.h": batch.h[row, :length].half(),
                    f"{name}.top_logits": top.values[row, :length].half(), f"{name}.top_ids": top.indices[row, :length].int()}
    return {key: value.contiguous().cpu() for key, value in tensors.items()}


class CachedTeacher:
    """Training batches from a cache written by `write_teacher_cache` for the same target."""

    def __init__(self, directory: Path, target: Target) -> None:
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            shards = self.manifest["shards"]
        except (OSError, ValueError, KeyError) as error:
            raise Clover2Error(f"{manifest_path}: not a teacher cache ({error})") from None
        for key, actual in (("hidden_size", target.model.config.hidden_size), ("vocab_size", target.model.config.vocab_size)):
            if self.manifest.get(key) != actual:
                raise Clover2Error(f"{manifest_path}: {key} is {self.manifest.get(key)}, the target's is {actual}: a cache of another target")
        self.vocab_size = self.manifest["vocab_size"]
        self.pad_id = pad_id(target)
        self.examples = [example for shard in shards for example in self._examples(shard)]

    def _examples(self, shard: str) -> list[CachedExample]:
        path = self.directory / shard
        try:
            with safe_open(str(path), "pt") as tensors:
                names = sorted({key.split(".")[0] for key in tensors.keys()}, key=int)
                return [CachedExample(tensors.get_tensor(f"{n}.input_ids").tolist(), tensors.get_tensor(f"{n}.loss_mask").tolist(),
                                      f"{shard}:{n}") for n in names]
        except (OSError, SafetensorError) as error:
            raise Clover2Error(f"{path}: cannot read the teacher shard ({error})") from None

    def batch(self, items: list[CachedExample], device: torch.device) -> TrainBatch:
        ids, loss_mask, attention = collate(items, self.pad_id)
        fields = [self._fields(item) for item in items]
        u, h = (_padded([f[name] for f in fields], ids.shape[1]).float() for name in ("u", "h"))
        # p as its top-k, renormalised: logits -inf elsewhere; padding rows stay all zero (uniform, masked out).
        logits = torch.zeros(*ids.shape, self.vocab_size)
        for row, f in enumerate(fields):
            length = f["top_ids"].shape[0]
            logits[row, :length] = float("-inf")
            logits[row, :length].scatter_(-1, f["top_ids"].long(), f["top_logits"].float())
        batch = TrainBatch(ids, loss_mask & attention, attention, u, h, logits)
        return TrainBatch(*(t.to(device) for t in dataclasses.astuple(batch)))

    def _fields(self, item: CachedExample) -> dict[str, torch.Tensor]:
        shard, name = item.key.split(":")
        with safe_open(str(self.directory / shard), "pt") as tensors:
            return {field: tensors.get_tensor(f"{name}.{field}") for field in ("u", "h", "top_logits", "top_ids")}


def _padded(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    out = torch.zeros(len(rows), length, *rows[0].shape[1:], dtype=rows[0].dtype)
    for index, row in enumerate(rows):
        out[index, : row.shape[0]] = row
    return out
