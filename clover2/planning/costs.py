"""The cost model of this machine: what verifying n tokens, a plain step and drafting a tree cost.

Measured on the target the bench decodes with, in its dtype and thread count, behind a prompt as long
as the benchmark's:
- verify(n): the engine's own `verify_forward` over n tokens behind the prompt in the KV cache (n = 1
  ... 64; the sizes take turns within every round, medians over rounds);
- a plain step: plain decoding's ms per token after the prefill;
- per head, draft and bookkeeping ms per step from the engine's own phase clocks, decoding with the
  head's drafter on probe trees of `width` candidates under each of `depth` spine nodes, or for a
  head whose tree is dynamic its own tree `depth` levels deep keeping depth · width nodes (the trees
  take turns; medians over rounds). A static tree's drafter runs one forward per level over the
  level's nodes, and a level's attention reaches the levels above it, so draft and bookkeeping time
  are each fitted as c0 + c1 · depth + c2 · nodes + c3 · nodes² by non-negative least squares on
  relative errors (costs never fall as a tree grows, which the optimiser's exactness needs); each
  fit's largest relative error over the probe trees is recorded beside it. Measured on SmolLM2 in
  float32 with the linear fit alone, EAGLE's draft time was off by up to 35 % (its 36-node probe
  costs more than linearly); with the square term by up to 11 %.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import torch
from scipy.optimize import nnls
from tqdm import tqdm
from transformers import DynamicCache, PreTrainedModel

from clover2.engine.decoding import DecodeConfig, TurnRecord, generate, verify_forward
from clover2.engine.drafter import Drafter
from clover2.engine.tree import DraftTree, TreeShape
from clover2.errors import Clover2Error
from clover2.heads.acceptance import probe_tree
from clover2.heads.protocol import DraftHead

FEATURES = ("constant", "depth", "nodes", "nodes^2")
PHASES = ("draft", "bookkeeping")  # the engine's phase clocks a head's drafter and its tree add to


def features(depth: int, nodes: int) -> tuple[float, ...]:
    return (1.0, float(depth), float(nodes), float(nodes * nodes))


@dataclass
class DraftCost:
    """A head's draft and bookkeeping ms per step as functions of its tree's depth and node count."""

    coefficients: dict[str, list[float]]  # per phase: one per FEATURES
    measured: list[dict] = field(default_factory=list)  # per probe tree: depth, width, nodes, draft_ms, bookkeeping_ms
    max_relative_error: dict[str, float] = field(default_factory=dict)  # per phase, of the fit over the probe trees

    def phase_ms(self, phase: str, depth: int, nodes: int) -> float:
        return float(np.dot(self.coefficients[phase], features(depth, nodes)))


@dataclass
class CostModel:
    verify_ms: dict[int, float]  # tokens verified (root included) -> ms
    plain_ms: float  # plain decoding's ms per token
    heads: dict[str, DraftCost] = field(default_factory=dict)
    prompt_tokens: int = 0

    def verify(self, tokens: int) -> float:
        if tokens not in self.verify_ms:
            raise Clover2Error(f"cost model: no verification cost measured for {tokens} tokens "
                               f"(measured: 1 ... {max(self.verify_ms)})")
        return self.verify_ms[tokens]

    def step_ms(self, head: str, depth: int, nodes: int) -> float:
        """One speculative step of `head` on a tree of `nodes` drafted nodes `depth` deep."""
        cost = self.heads[head]
        return sum(cost.phase_ms(phase, depth, nodes) for phase in PHASES) + self.verify(nodes + 1)

    def to_json(self) -> dict:
        return {"verify_ms": {str(n): ms for n, ms in self.verify_ms.items()}, "plain_ms": self.plain_ms,
                "prompt_tokens": self.prompt_tokens, "features": list(FEATURES),
                "heads": {name: asdict(cost) for name, cost in self.heads.items()}}

    @classmethod
    def from_json(cls, data: dict, source: str = "cost model") -> CostModel:
        try:
            heads = {name: DraftCost(**cost) for name, cost in data["heads"].items()}
            return cls({int(n): float(ms) for n, ms in data["verify_ms"].items()}, float(data["plain_ms"]), heads,
                       int(data.get("prompt_tokens", 0)))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise Clover2Error(f"{source}: not a cost model ({type(error).__name__}: {error})") from None


@torch.inference_mode()
def verify_curve(model: PreTrainedModel, prefix: int, sizes: Sequence[int], repeats: int) -> dict[int, float]:
    """Median ms of one `verify_forward` over n tokens behind `prefix` cached ones, per n in `sizes`.

    The sizes take turns within every round, so drift hits all alike; the first round warms up.
    """
    generator = torch.Generator().manual_seed(0)
    device = model.device
    ids = torch.randint(100, model.config.vocab_size, (1, prefix), generator=generator).to(device)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    trees = {n: DraftTree(torch.randint(100, model.config.vocab_size, (n,), generator=generator), TreeShape.chain(n - 1),
                          torch.zeros(n)) for n in sizes}
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(repeats + 1):
        for n, tree in trees.items():
            _sync(device)
            start = time.perf_counter()
            verify_forward(model, cache, tree)
            _sync(device)
            times[n].append(1000 * (time.perf_counter() - start))
            cache.crop(-n)  # transformers 5.24: a negative count removes that many entries
    return {n: statistics.median(values[1:]) for n, values in times.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Probes:
    """The probe trees a head's draft cost is fitted on, and how long each decode runs."""

    widths: tuple[int, ...] = (1, 3, 6)
    depths: tuple[int, ...] = (1, 3, 5)
    new_tokens: int = 24
    repeats: int = 3


def _prompt(model: PreTrainedModel, tokens: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(100, model.config.vocab_size, (tokens,), generator=generator).tolist()


def _decode(model: PreTrainedModel, prompt: list[int], tokens: int, drafter=None) -> TurnRecord:
    never = [model.config.vocab_size]  # a stop token no logits row can emit: every turn decodes exactly `tokens`
    config = DecodeConfig(max_new_tokens=tokens, max_length=len(prompt) + tokens, timing="phases")
    return generate(model, prompt, config, never, None, drafter)


def _per_step_ms(record: TurnRecord, seconds: float) -> float:
    """ms per step after the prefill (a step of its own)."""
    return 1000 * seconds / max(record.steps - 1, 1)


def plain_step_ms(model: PreTrainedModel, prompt_tokens: int, new_tokens: int, repeats: int) -> float:
    records = [_decode(model, _prompt(model, prompt_tokens, seed), new_tokens) for seed in range(repeats + 1)][1:]
    return statistics.median(_per_step_ms(r, r.wall_seconds - r.seconds["prefill"]) for r in records)


def draft_cost(model: PreTrainedModel, head: DraftHead, prompt_tokens: int, probes: Probes, desc: str = "draft cost") -> DraftCost:
    """Measure `head`'s drafter on every probe tree it can draft and fit its draft time."""
    shapes = _probe_drafters(head, probes)
    if not shapes:
        raise Clover2Error(f"{head.method}: no probe tree fits (depths {probes.depths}, the head drafts {head.deepest_tree()} levels)")
    draft: dict[int, list[float]] = {i: [] for i in range(len(shapes))}
    bookkeeping: dict[int, list[float]] = {i: [] for i in range(len(shapes))}
    sizes: dict[int, list[int]] = {i: [] for i in range(len(shapes))}
    _decode(model, _prompt(model, prompt_tokens, 0), 4, shapes[-1][2]())  # warm-up
    with tqdm(total=probes.repeats * len(shapes), desc=desc, unit="decode") as progress:
        for round_ in range(probes.repeats):
            prompt = _prompt(model, prompt_tokens, round_ + 1)
            for i in [*range(round_ % len(shapes), len(shapes)), *range(round_ % len(shapes))]:
                record = _decode(model, prompt, probes.new_tokens, shapes[i][2]())
                draft[i].append(_per_step_ms(record, record.seconds["draft"]))
                bookkeeping[i].append(_per_step_ms(record, record.seconds["bookkeeping"]))
                sizes[i] += record.tree_sizes
                progress.update()
    measured = [{"depth": d, "width": w, "nodes": int(statistics.median(sizes[i])), "draft_ms": statistics.median(draft[i]),
                 "bookkeeping_ms": statistics.median(bookkeeping[i])} for i, (d, w, _) in enumerate(shapes)]
    return _fit(measured)


def _probe_drafters(head: DraftHead, probes: Probes) -> list[tuple[int, int, Callable[[], Drafter]]]:
    """(depth, width, a maker of its drafter) per probe: the static probe trees the head can draft, or
    for a head whose tree is dynamic its own tree at depth d keeping d · width nodes (the sizes a
    dynamic tree is chosen among); the node count fitted on is what the drafted trees held."""
    if head.dynamic_trees:
        return [(d, w, partial(head.dynamic_drafter, d, d * w)) for d in probes.depths for w in probes.widths]
    deepest = head.deepest_tree()
    return [(d, w, partial(head.drafter, probe_tree(d, w))) for d in probes.depths for w in probes.widths
            if deepest is None or d <= deepest]


def _fit(measured: list[dict]) -> DraftCost:
    """Non-negative least squares of each phase's ms on relative errors (rows scaled by 1 / observed)."""
    matrix = np.array([features(m["depth"], m["nodes"]) for m in measured])
    coefficients, errors = {}, {}
    for phase in PHASES:
        observed = np.array([m[f"{phase}_ms"] for m in measured])
        weight = 1.0 / np.maximum(observed, 1e-9)
        fitted, _ = nnls(matrix * weight[:, None], observed * weight)
        coefficients[phase] = [float(c) for c in fitted]
        errors[phase] = float(np.max(np.abs(matrix @ fitted - observed) * weight))
    return DraftCost(coefficients, measured, errors)
