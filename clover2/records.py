"""Bench records: the row `clover2 bench` writes per (question, method), and the typed view readers take of it.

A row is JSON: task, question_id, category, method, the turns (`TurnRecord.to_json()` plus the
answer text) and the provenance of the job (its settings are the CLI's, `provenance.config`). Readers
never reach into that layout themselves: `BenchRow.from_json` checks it once and gives the run's
settings as fields (drafting options parsed) and each turn's speculative steps as one list, so that
a step's kept tokens, first rejected depth and tree size cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clover2.options import key_values, method_option


def bench_row(task: str, question_id: str, category: str, method: str, turns: list[dict], provenance: dict,
              replicate: int = 0) -> dict:
    """The record of one question decoded by one method, as `clover2 bench` writes it; `replicate` 1 marks
    the baseline's second decode of a question (the A/A noise check), which readers keep apart."""
    return {"task": task, "question_id": question_id, "category": category, "method": method, "turns": turns,
            "provenance": provenance, **({"replicate": replicate} if replicate else {})}


@dataclass(frozen=True)
class RunSettings:
    """What a bench job decoded with, from its provenance."""

    temperature: float
    dtype: str
    repeat: int
    drafting: dict  # the drafting options the job changed for this row's method (--draft-option), parsed
    head: str | None = None  # the head directory this row's method drafted with (--head)
    chosen_trees: dict = field(default_factory=dict)  # tree file -> its chosen tree and prediction (clover2 choose-tree)
    device: str = ""  # the machine it ran on, as the provenance describes it (a CPU: its model and bf16 flags)

    @classmethod
    def from_config(cls, config: dict, method: str, device: str = "") -> RunSettings:
        return cls(float(config["temperature"]), config["dtype"], int(config.get("repeat", 0)),
                   drafting_options(config.get("draft_option") or [], method), _head_of(config.get("head") or [], method),
                   config.get("chosen_trees") or {}, device)

    @property
    def drafting_label(self) -> str:
        """The drafting options as KEY=VALUE: a static tree's file as `chosen (N nodes)`, a dynamic tree's
        settings read from a file as their values, marked `(chosen)`."""
        labels = []
        for key, value in self.drafting.items():
            chosen = self.chosen_trees.get(value, {})
            if "drafting" in chosen:
                labels.append(f"{key}={chosen['drafting'][key]} (chosen)")
            elif "predicted" in chosen:
                labels.append(f"{key}=chosen ({chosen['predicted']['nodes']} nodes)")
            else:
                labels.append(f"{key}={value}")
        return " ".join(labels)


def _head_of(pairs: list[str], method: str) -> str | None:
    """--head [METHOD=]DIR: the directory of `method`'s head (a bare DIR is the only method's)."""
    for pair in pairs:
        owner, sep, directory = pair.partition("=")
        if not sep or owner == method:
            return directory if sep else owner
    return None


def drafting_options(pairs: list[str], method: str) -> dict:
    """The --draft-option values that apply to `method`: its own and those given to every method, a later
    value of an option winning, as in the CLI."""
    return key_values([option for owner, option in map(method_option, pairs) if owner in (None, method)], "--draft-option")


@dataclass(frozen=True)
class Step:
    """One draft-verify step after the prefill."""

    kept: int  # tokens the step added: accepted drafted tokens and the bonus token
    failed_depth: int | None  # the first rejected depth; None when every drafted token was accepted
    tree_size: int | None  # drafted nodes, the root excluded; None in records written before tree sizes were


@dataclass(frozen=True)
class BenchTurn:
    new_tokens: int
    steps: int  # target forwards that yielded tokens, the prefill included
    wall_seconds: float
    seconds: dict[str, float]  # per phase
    phases_exact: bool
    drafted: list[Step]  # the engine's steps; empty for a method that does not report them (transformers' generate)
    text: str

    @classmethod
    def from_json(cls, turn: dict) -> BenchTurn:
        return cls(turn["new_tokens"], turn["steps"], turn["wall_seconds"], turn["seconds"], turn.get("phases_exact", True),
                   _steps(turn), turn.get("text", ""))


def _steps(turn: dict) -> list[Step]:
    lengths, failed, sizes = turn["accept_lengths"][1:], turn["failed_depths"], turn.get("tree_sizes")
    if not failed and not sizes:
        return []  # plain decoding of a single step, or a black-box generate
    if len(failed) != len(lengths) or (sizes is not None and len(sizes) != len(lengths)):
        raise ValueError(f"per-step lists disagree: {len(lengths)} steps after the prefill, {len(failed)} failed depths, "
                         f"{'no' if sizes is None else len(sizes)} tree sizes (a record of another version: rerun the bench)")
    return [Step(kept, depth, size) for kept, depth, size in zip(lengths, failed, sizes or [None] * len(lengths))]


@dataclass(frozen=True)
class BenchRow:
    task: str
    question_id: str
    category: str
    method: str
    settings: RunSettings
    turns: list[BenchTurn]
    replicate: int = 0  # 1: the baseline decoding a question a second time (the A/A check)

    @classmethod
    def from_json(cls, row: dict) -> BenchRow:
        """The typed row; KeyError, TypeError or ValueError when `row` is not a bench record."""
        settings = RunSettings.from_config(row["provenance"]["config"], row["method"], row["provenance"].get("device", ""))
        turns = [BenchTurn.from_json(turn) for turn in row["turns"]]
        return cls(row["task"], row["question_id"], row["category"], row["method"], settings, turns, int(row.get("replicate", 0)))
