"""The decoding loop: prefill a prompt into the target's KV cache, then step until a stopping rule fires.

Plain decoding ("vanilla") is this loop with no drafter. Counting convention (METHODS.md §8): a
*step* is one target forward pass that yields tokens, the prefill included (it yields the first
token), so `steps` counts from 1 and vanilla decoding has tau = new tokens / steps = 1 exactly.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel

from clover2.engine.drafter import Drafter, NoDrafter, TargetStates
from clover2.engine.kernels import compact_kv, visible_keys
from clover2.engine.tree import DraftTree
from clover2.engine.verify import AcceptRule, default_acceptance

PHASES = ("prefill", "draft", "verify", "bookkeeping")
# "phases": every phase ends in a device synchronisation, so GPU work is charged to its own phase
# (4 syncs a step). "turn": no sync inside the turn, one at its end; the phase times are then what the
# host spent in each phase, exact only where the device has no queue of its own (CPU).
TIMINGS = ("phases", "turn")
TOP_LOGITS = 8  # logits kept per new token with DecodeConfig.record_top_logits


@dataclass(frozen=True)
class DecodeConfig:
    """The stopping rules and sampling of METHODS.md §7."""

    temperature: float = 0.0
    max_new_tokens: int = 1024
    max_length: int = 1960  # prompt + new tokens
    seed: int = 0
    record_top_logits: bool = False  # keep each new token's logit and its row's top logits (the losslessness check reads them)
    timing: str = "phases"  # one of TIMINGS

    def __post_init__(self) -> None:
        if self.timing not in TIMINGS:
            raise ValueError(f"timing must be one of {', '.join(TIMINGS)}, got {self.timing!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_new_tokens < 1 or self.max_length < 1:
            raise ValueError("max_new_tokens and max_length must be >= 1")


@dataclass
class TurnRecord:
    """What one assistant turn cost and produced."""

    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)  # new tokens, the stop token included when hit
    accept_lengths: list[int] = field(default_factory=list)  # tokens kept per step; one entry per step
    failed_depths: list[int | None] = field(default_factory=list)  # per speculative step: first rejected depth
    tree_sizes: list[int] = field(default_factory=list)  # per speculative step: drafted nodes, the root excluded
    # With DecodeConfig.record_top_logits, per new token, from the target's logits row that emitted it: the
    # token's own logit, and the row's TOP_LOGITS best token ids and logits (row_tops).
    top_logits: list[tuple[float, list[int], list[float]]] = field(default_factory=list)
    stop_reason: str = ""  # "stop_token" | "max_new_tokens" | "max_length"
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    wall_seconds: float = 0.0
    timing: str = "phases"  # DecodeConfig.timing of the run
    phases_exact: bool = True  # `seconds` charge device work to its own phase (synchronised, or a CPU)

    @property
    def new_tokens(self) -> int:
        return len(self.tokens)

    @property
    def steps(self) -> int:
        return len(self.accept_lengths)

    @property
    def tau(self) -> float:
        """Mean tokens per step, the bonus token included (METHODS.md §8)."""
        return self.new_tokens / self.steps if self.steps else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "new_tokens": self.new_tokens, "steps": self.steps, "tau": self.tau}


class Stopwatch:
    """Wall time per phase and per turn; with timing "phases" it synchronises CUDA around every phase."""

    def __init__(self, device: torch.device, timing: str = "phases") -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.timing = timing
        self.device_sync = torch.cuda.synchronize if device.type == "cuda" else None
        self.phases_exact = timing == "phases" or self.device_sync is None
        self.started = time.perf_counter()

    def sync(self) -> None:
        """Wait for the device's queued work when phases are timed (a no-op on a CPU or with timing "turn")."""
        if self.timing == "phases" and self.device_sync is not None:
            self.device_sync()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.sync()
        start = time.perf_counter()
        with torch.profiler.record_function(name):  # a labelled range in profiles (clover2 step-cost --profile)
            yield
        self.sync()
        self.seconds[name] += time.perf_counter() - start

    def finish(self, record: TurnRecord) -> None:
        """Write the turn's times into `record`; the turn's own wall time always waits for the device."""
        if self.device_sync is not None:
            self.device_sync()
        record.wall_seconds = time.perf_counter() - self.started
        record.seconds = self.seconds
        record.timing, record.phases_exact = self.timing, self.phases_exact


def turn_generator(seed: int, question_id: str, turn: int, device: torch.device) -> torch.Generator:
    """A sampling stream that depends only on (seed, question, turn), not on which questions ran before."""
    stream = zlib.crc32(f"{seed}/{question_id}/{turn}".encode())
    return torch.Generator(device=device).manual_seed(stream)


def sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids from logits [..., V]: argmax at T = 0, else plain sampling at temperature T."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def token_budget(prompt_tokens: int, config: DecodeConfig) -> tuple[int, str]:
    """How many tokens this turn may add, and which rule sets that limit."""
    by_length = config.max_length - prompt_tokens
    if by_length < config.max_new_tokens:
        return max(by_length, 0), "max_length"
    return config.max_new_tokens, "max_new_tokens"


class StateTap:
    """Reads the target's last-layer states off its final norm: input u (pre-norm), output h."""

    def __init__(self, model: PreTrainedModel, enabled: bool, batched: bool = False) -> None:
        self._states: TargetStates | None = None
        self._batched = batched  # keep [B, T, H]; decoding runs batch 1 and keeps [T, H]
        norm = model.get_decoder().norm
        self._handle = norm.register_forward_hook(self._capture) if enabled else None

    def _capture(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._states = TargetStates(u=args[0], h=output) if self._batched else TargetStates(u=args[0][0], h=output[0])

    def take(self, index: list[int] | slice = slice(None)) -> TargetStates | None:
        """The states of the last forward (rows `index`), or None when no drafter asked for them."""
        if self._states is None:
            return None
        return TargetStates(u=self._states.u[index], h=self._states.h[index])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()


def verify_forward(model: PreTrainedModel, cache: DynamicCache, tree: DraftTree) -> torch.Tensor:
    """One target forward over every tree node; returns the logits after each node [N, V].

    Each node sits at position prefix + depth and attends to the whole prefix, its ancestors and
    itself; its K/V entries land in the cache after the prefix, in node order.
    """
    prefix = cache.get_seq_length()
    device = model.device
    shape = tree.shape
    visible = visible_keys(shape.mask, prefix).view(1, 1, shape.size, -1).to(device)
    if model.config._attn_implementation == "eager":  # eager attention adds its mask to the scores
        visible = torch.zeros(visible.shape, dtype=model.dtype, device=device).masked_fill(~visible, torch.finfo(model.dtype).min)
    output = model(
        input_ids=tree.tokens.view(1, -1).to(device),
        position_ids=(prefix + shape.depths).view(1, -1).to(device),
        attention_mask=visible,
        tree_mask=shape.mask.to(device),  # read by the tree-attention kernel, ignored by SDPA
        cache=cache,
        use_cache=True,
    )
    return output.logits[0]


def keep_path(cache: DynamicCache, prefix: int, path: list[int]) -> None:
    """Keep the K/V entries of the accepted path, moved right behind the prefix; drop every other node."""
    compact_kv(cache.layers, prefix, path)
    excess = cache.get_seq_length() - prefix - len(path)
    if excess:
        cache.crop(-excess)  # transformers 5.24: a negative count removes that many entries


def row_tops(rows: torch.Tensor, tokens: list[int], k: int = TOP_LOGITS) -> list[tuple[float, list[int], list[float]]]:
    """Per token emitted from one logits row: its own logit, and the row's top-k token ids and logits."""
    rows = rows.float()
    own = rows.gather(-1, torch.tensor(tokens, device=rows.device).view(-1, 1)).view(-1).tolist()
    top = rows.topk(k, dim=-1)
    return list(zip(own, top.indices.tolist(), top.values.tolist()))


def _take_tokens(record: TurnRecord, tokens: list[int], stops: set[int], budget: int) -> bool:
    """Append a step's tokens up to the first stop token or the budget; True when the turn is over."""
    kept = 0
    for token in tokens:
        record.tokens.append(token)
        kept += 1
        if token in stops:
            record.stop_reason = "stop_token"
            break
        if len(record.tokens) >= budget:
            break
    record.accept_lengths.append(kept)
    return record.stop_reason == "stop_token" or len(record.tokens) >= budget


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    prompt_ids: Sequence[int],
    config: DecodeConfig,
    stop_token_ids: Sequence[int],
    generator: torch.Generator | None = None,
    drafter: Drafter | None = None,
    acceptance: AcceptRule | None = None,
) -> TurnRecord:
    """Decode one turn: prefill, then draft -> verify -> accept until a stopping rule fires.

    Without a drafter every tree is the root alone, which is plain decoding.
    """
    drafter = drafter or NoDrafter()
    acceptance = acceptance or default_acceptance
    record = TurnRecord(prompt_tokens=len(prompt_ids))
    budget, limit_reason = token_budget(len(prompt_ids), config)
    record.stop_reason = limit_reason
    if budget == 0:
        return record
    device = model.device
    stops = set(stop_token_ids)
    clock = Stopwatch(device, config.timing)
    tap = StateTap(model, drafter.needs_states)
    cache = DynamicCache(config=model.config)
    try:
        with clock.phase("prefill"):
            prompt = torch.tensor(list(prompt_ids), device=device)
            logits = model(input_ids=prompt.view(1, -1), cache=cache, use_cache=True, logits_to_keep=1).logits[0]
            root = int(sample(logits[-1], config.temperature, generator))
            drafter.prefill(prompt, tap.take())
        finished = _take_tokens(record, [root], stops, budget)
        if config.record_top_logits:
            record.top_logits += row_tops(logits[-1:], [root])
        while not finished:
            with clock.phase("draft"):
                tree = drafter.draft(root, config.temperature, generator)
            with clock.phase("verify"):
                prefix = cache.get_seq_length()
                logits = verify_forward(model, cache, tree)
            with clock.phase("bookkeeping"):
                result = acceptance(tree, logits, config.temperature, generator)
                keep_path(cache, prefix, result.path)
                kept = tree.tokens[result.path]
                drafter.accept(kept, tap.take(result.path))
                record.failed_depths.append(result.failed_depth)
                record.tree_sizes.append(len(tree.tokens) - 1)
                emitted = [*kept[1:].tolist(), result.bonus]  # emitted[i] is chosen from logits[result.path[i]]
                finished = _take_tokens(record, emitted, stops, budget)
                if config.record_top_logits:
                    kept_now = record.accept_lengths[-1]
                    record.top_logits += row_tops(logits[result.path[:kept_now]], emitted[:kept_now])
                root = result.bonus
    finally:
        tap.close()
    clock.finish(record)
    return record
