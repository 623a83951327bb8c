"""Training a draft head by distillation from the frozen target (the nanoGPT-sized loop of this suite).

The teacher signals (u, h and the target's logits) come from the target run online inside the loop, or
from a teacher cache that `clover2 cache-teacher` wrote once for every head (`clover2.training.teacher`).
Work in progress lives in `OUT.partial/` (checkpoints and the JSONL log); a finished run becomes the
head directory `OUT` atomically, so a directory that exists is complete and an interrupted run
resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm import tqdm
from transformers import SchedulerType, get_scheduler

from clover2.atomic import atomic_write_text, complete_json_lines
from clover2.engine.target import Target
from clover2.errors import Clover2Error
from clover2.heads.acceptance import ACCEPTANCE, head_acceptance
from clover2.heads.directory import LOG, RUN, save_head
from clover2.heads.draft_vocab import frequent_tokens
from clover2.heads.protocol import HeadLoss, head_class
from clover2.training.sharegpt import Example, load_examples
from clover2.training.teacher import CachedTeacher, OnlineTeacher, pad_id

STATE, RESUMES = "state.json", "resumes.json"
CHECKPOINT, FRESH, STALE = "checkpoint", "checkpoint.tmp", "checkpoint.old"  # the current one, and both sides of a swap


class SettingError(Clover2Error):
    """A training setting the loop cannot run with; `setting` names it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"training setting {setting}: {message}")
        self.setting, self.message = setting, message


@dataclass
class TrainConfig:
    method: str
    options: dict = field(default_factory=dict)  # the head's own options (tree, loss weights, ...)
    conversations: int = 68000
    heldout: int = 32  # conversations kept apart for per-head accuracy
    max_length: int = 2048
    batch_size: int = 4
    epochs: int = 21
    max_steps: int | None = None
    minutes: float | None = None  # a wall-time budget; the run ends at the first step past it
    lr: float | None = None  # None: the method's default
    betas: tuple[float, float] | None = None
    warmup_steps: int | None = None
    schedule: str | None = None
    # The schedule's horizon: it decays over this many steps (the official Clover-2 code plans 1.6 M, so
    # the rate stays near its peak over a real run); None: over the run's own steps.
    decay_steps: int | None = None
    clip_value: float = 0.5
    eval_every: int = 200
    acceptance_positions: int = 256  # held-out positions the acceptance profile drafts from, per evaluation
    checkpoint_every: int = 200
    seed: int = 0
    teacher_cache: str | None = None  # a directory from `clover2 cache-teacher`; None: the target runs online

    def resolved(self) -> TrainConfig:
        """This config with the head's own optimiser settings filled in where a value was left None, checked."""
        defaults = head_class(self.method).optimiser
        config = TrainConfig(**{**asdict(self), **{k: v for k, v in defaults.items() if getattr(self, k) is None}})
        schedules = [kind.value for kind in SchedulerType]
        if config.schedule not in schedules:
            raise SettingError("schedule", f"expected one of {', '.join(schedules)}, got {config.schedule!r}")
        if config.decay_steps is not None and (not isinstance(config.decay_steps, int) or config.decay_steps <= config.warmup_steps):
            raise SettingError("decay_steps", f"expected an integer above warmup_steps ({config.warmup_steps}), got {config.decay_steps!r}")
        return config


def _batches(examples: list[Example], size: int, seed: int, epoch: int) -> list[list[Example]]:
    order = list(range(len(examples)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return [[examples[i] for i in order[start : start + size]] for start in range(0, len(order), size)]


def _accuracy(results: list[HeadLoss]) -> dict:
    heads = len(results[0].counted)
    counted = [sum(r.counted[i] for r in results) for i in range(heads)]
    share = lambda hits: [sum(r_hits) / max(n, 1) for r_hits, n in zip(hits, counted)]  # noqa: E731
    top1 = [[r.top1[i] for r in results] for i in range(heads)]
    top5 = [[r.top5[i] for r in results] for i in range(heads)]
    return {"top1": share(top1), "top5": share(top5), "positions": counted}


def train(target: Target, data: Path | None, out: Path, config: TrainConfig) -> Path:
    """Train `config.method`'s head for `target` on ShareGPT conversations from `data`; return the head directory."""
    config = config.resolved()
    out, work = Path(out), Path(f"{out}.partial")
    on_cpu = target.model.device.type == "cpu"
    # cpu=True is what makes accelerate run several CPU processes (accelerate launch) as gloo data parallel.
    accelerator = Accelerator(cpu=on_cpu, mixed_precision="no" if on_cpu else "bf16")
    torch.manual_seed(config.seed)
    model = target.model.to(accelerator.device).requires_grad_(False).eval()
    teacher = CachedTeacher(Path(config.teacher_cache), target) if config.teacher_cache else OnlineTeacher(model, pad_id(target))
    wanted = config.conversations + config.heldout
    examples = teacher.examples[:wanted] if config.teacher_cache else load_examples(target.tokenizer, data, wanted, config.max_length)
    if config.teacher_cache and len(examples) < wanted:
        raise SettingError("conversations", f"{config.teacher_cache} holds {len(examples)} conversations, fewer than "
                                            f"conversations + heldout = {wanted}")
    heldout, examples = examples[: config.heldout], examples[config.heldout :]
    size = config.options.get("draft_vocab")
    ids = None if size is None else frequent_tokens(examples, size, model.config.vocab_size, target.stop_token_ids)
    # Trainable weights stay fp32 whatever the target's dtype; autocast handles mixed precision.
    head = head_class(config.method)(model, vocab_ids=ids, **config.options).float()
    # batch_size is per process: each step takes one global batch and every process trains its share.
    world, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = max(1, len(examples) // (config.batch_size * world))  # whole global batches only
    total_steps = config.max_steps or per_epoch * config.epochs
    trainable = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=config.betas)
    scheduler = get_scheduler(config.schedule, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=config.decay_steps or total_steps)
    head, optimizer, scheduler = accelerator.prepare(head, optimizer, scheduler)
    step = _resume(accelerator, work)

    def batch_of(items: list[Example]):
        return teacher.batch(items, accelerator.device)

    def evaluate() -> dict:
        head.eval()
        batches = lambda: (batch_of(b) for b in _batches(heldout, config.batch_size, 0, 0))  # noqa: E731 - read twice, held never
        with torch.no_grad():
            results = [head(batch) for batch in batches()]
        profile = head_acceptance(accelerator.unwrap_model(head), batches(), config.acceptance_positions)
        head.train()
        return {"loss": sum(float(r.total) for r in results) / len(results), **_accuracy(results),
                "acceptance": profile.to_json()}

    started = time.monotonic()
    main = accelerator.is_main_process  # with several processes, only the first writes files
    log = (work / LOG).open("a", encoding="utf-8") if main else open(os.devnull, "w")
    progress = tqdm(total=total_steps, initial=step, desc=f"train {config.method}", unit="step", disable=not main)
    head.train()
    record: dict = {}
    try:
        while step < total_steps and not _out_of_time(config, started, accelerator):
            epoch, index = divmod(step, per_epoch)
            items = _batches(examples, config.batch_size * world, config.seed, epoch)[index][rank::world]
            with accelerator.autocast():
                result = head(batch_of(items))
            accelerator.backward(result.total)
            accelerator.clip_grad_value_(trainable, config.clip_value)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            progress.update()
            record = {"step": step, "epoch": epoch, **_global_losses(accelerator, result),
                      "lr": scheduler.get_last_lr()[0], "seconds": round(time.monotonic() - started, 2)}
            if step % config.eval_every == 0 or step == total_steps:
                record["heldout"] = evaluate()
            log.write(json.dumps(record) + "\n")
            log.flush()
            if step % config.checkpoint_every == 0:
                _checkpoint(accelerator, work, step)
                accelerator.wait_for_everyone()  # the swapped-in checkpoint exists for every process
        if "heldout" not in record:
            record = {"step": step, "heldout": evaluate()}
            log.write(json.dumps(record) + "\n")
    finally:
        log.close()
        progress.close()
    if main:
        training = {"config": asdict(config), "steps": step, "seconds": round(time.monotonic() - started, 1),
                    "examples": len(examples), "heldout": len(heldout), "processes": world,
                    "resumed_from": _resumes(work)}
        extra = {LOG: (work / LOG).read_text(encoding="utf-8"), RUN: json.dumps(training, indent=2) + "\n",
                 ACCEPTANCE: json.dumps({**record["heldout"]["acceptance"], "step": step}, indent=2) + "\n"}
        save_head(accelerator.unwrap_model(head), out, target.identity, extra)
        shutil.rmtree(work)
        print(f"head ready: {out}", flush=True)
    accelerator.wait_for_everyone()
    return out


def _global_losses(accelerator: Accelerator, result: HeadLoss) -> dict[str, float]:
    """The step's loss and its parts averaged over the processes: what one process on the global batch logs."""
    names = ["loss", *result.parts]
    values = torch.tensor([float(result.total.detach()), *result.parts.values()], device=accelerator.device)
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, "mean")
    return dict(zip(names, values.tolist()))


def _out_of_time(config: TrainConfig, started: float, accelerator: Accelerator) -> bool:
    """The wall-time budget is spent (every process stops at the same step: the latest one decides)."""
    late = config.minutes is not None and time.monotonic() - started >= 60 * config.minutes
    if accelerator.num_processes == 1:
        return late
    return bool(accelerator.reduce(torch.tensor(float(late), device=accelerator.device), "max"))


def _resume(accelerator: Accelerator, work: Path) -> int:
    """Load the last checkpoint of an interrupted run (if any) and return its step.

    A checkpoint resumes under any number of processes: the step counts global batches, and
    accelerate's state holds one set of weights and optimiser moments (and per-process RNG states,
    which a process without its own file leaves as they are).
    """
    main = accelerator.is_main_process
    if main:
        work.mkdir(parents=True, exist_ok=True)
        _settle_checkpoint(work)
    accelerator.wait_for_everyone()
    state = work / CHECKPOINT / STATE
    if not state.exists():
        if main:
            (work / LOG).write_text("", encoding="utf-8")
            (work / RESUMES).unlink(missing_ok=True)
        return 0
    accelerator.load_state(str(work / CHECKPOINT))
    step = json.loads(state.read_text(encoding="utf-8"))["step"]
    if main:
        # The log may run past the checkpoint, its last line torn by a kill: keep the records up to it.
        records = [r for r in complete_json_lines(work / LOG) if r["step"] <= step] if (work / LOG).exists() else []
        atomic_write_text(work / LOG, "".join(json.dumps(r) + "\n" for r in records))
        atomic_write_text(work / RESUMES, json.dumps([*_resumes(work), step]) + "\n")
        print(f"resuming from step {step} ({work / CHECKPOINT})", file=sys.stderr, flush=True)
    return step


def _settle_checkpoint(work: Path) -> None:
    """After a kill at any point of a swap, the newest complete checkpoint (one with its state file,
    written last) becomes `checkpoint`, and the others go."""
    candidates = [work / name for name in (CHECKPOINT, FRESH, STALE)]
    complete = [c for c in candidates if (c / STATE).is_file()]
    newest = max(complete, key=lambda c: json.loads((c / STATE).read_text(encoding="utf-8"))["step"], default=None)
    for candidate in candidates:
        if candidate != newest:
            shutil.rmtree(candidate, ignore_errors=True)
    if newest is not None and newest.name != CHECKPOINT:
        newest.rename(work / CHECKPOINT)


def _resumes(work: Path) -> list[int]:
    """The steps this run resumed from, in order (a head trained through preemptions records them)."""
    path = work / RESUMES
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def _checkpoint(accelerator: Accelerator, work: Path, step: int) -> None:
    """Save optimiser, scheduler, head and RNG states beside the old checkpoint, then swap them in by two
    renames: a complete checkpoint exists at every moment, and `_settle_checkpoint` finds the newest."""
    fresh = work / FRESH
    if accelerator.is_main_process:
        shutil.rmtree(fresh, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(fresh))  # every process takes part; accelerate writes the shared files once
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(fresh / STATE, json.dumps({"step": step}) + "\n")  # last: it marks the checkpoint complete
        if (work / CHECKPOINT).exists():
            (work / CHECKPOINT).rename(work / STALE)
        fresh.rename(work / CHECKPOINT)
        shutil.rmtree(work / STALE, ignore_errors=True)
