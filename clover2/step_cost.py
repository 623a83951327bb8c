"""`clover2 step-cost`: the cost model of this engine, per target shape, method and kernel backend.

A target with random weights is built from a config of a real model's shapes (no download), or a
prepared target is loaded. With random weights τ means nothing (a random target often repeats
itself, and an untrained head may then guess it), but what a step costs does not depend on the
weights, so this measures costs only: ms per plain token, and ms per speculative step split into
draft, verify and bookkeeping, for plain decoding, `generate` and every head method with an
untrained head. The projected speedup puts the paper's τ (the published CSV) on these costs:

    projected = τ_paper × (plain ms per token) / (method ms per step)

Each method decodes every prompt twice, interleaved with the others (the order rotates per
prompt): once with timing "turn" (one device sync per turn: the step cost, and the plain tokens/s)
and once with timing "phases" (a sync around every phase: the split). On a GPU their ratio is what
the syncs cost; on a CPU both are the same. Medians over prompts.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from clover2.engine.decoding import DecodeConfig, TurnRecord
from clover2.engine.kernels import choose_backend
from clover2.engine.kernels.attention import use_backend_attention
from clover2.errors import Clover2Error
from clover2.heads.protocol import head_methods
from clover2.methods import DecodeTurn, method_factory
from clover2.targets import DTYPES, load_target

# LlamaConfig fields of each shape: the paper's two targets, the embedded default, and a tiny one for tests.
SHAPES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True, rope_theta=10000.0),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "vicuna-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False, rope_theta=10000.0),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
}
# Whose published τ a shape's projection uses: its own paper target, else Vicuna-7B's (the paper's headline).
PAPER_TARGETS = {"vicuna-7b": "vicuna-7b-v1.5", "llama3-8b": "llama3-8b-instruct"}
DEFAULT_PAPER_TARGET = "vicuna-7b-v1.5"
PLAIN_METHODS = ("vanilla", "hf-generate")
BASELINE = "vanilla"


@dataclass(frozen=True)
class Settings:
    prompts: int = 3
    prompt_tokens: int = 256
    new_tokens: int = 64
    warmup_tokens: int = 16
    seed: int = 0
    profile: Path | None = None  # also write a torch.profiler trace per (target, method, backend) here


def random_target(shape: str, device: str, dtype: str) -> PreTrainedModel:
    """A Llama of `shape`'s sizes with seeded random weights, in eval mode on `device`."""
    if shape not in SHAPES:
        raise Clover2Error(f"step-cost: unknown shape {shape!r} (known: {', '.join(SHAPES)})")
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=DTYPES[dtype])
    return model.eval()


def targets(shapes: Sequence[str], target_dirs: Sequence[Path], device: str, dtype: str) -> Iterator[tuple[str, PreTrainedModel]]:
    """(name, model) for every shape and every prepared target, built one at a time (7B targets are large)."""
    for shape in shapes:
        yield shape, random_target(shape, device, dtype)
    for directory in target_dirs:
        yield Path(directory).name, load_target(directory, device=device, dtype=dtype).model


def decoders(model: PreTrainedModel, methods: Sequence[str]) -> dict[str, DecodeTurn]:
    """Each method's turn decoder for `model`: a registered method, or the engine with an untrained head."""
    return {method: method_factory(method, untrained=True)(model) for method in methods}


def default_methods() -> list[str]:
    """Plain decoding, transformers' `generate` and every registered head method."""
    return [*PLAIN_METHODS, *head_methods()]


def prompts(vocab_size: int, settings: Settings) -> list[list[int]]:
    """Seeded random prompts: a cost model needs lengths, not meaning."""
    generator = torch.Generator().manual_seed(settings.seed)
    return [torch.randint(3, vocab_size, (settings.prompt_tokens,), generator=generator).tolist() for _ in range(settings.prompts)]


def set_backend(model: PreTrainedModel, backend: str) -> None:
    """Verification kernels for the next decodes: the engine's choice plus the model's attention."""
    choose_backend(backend)
    use_backend_attention(model)


def measure(
    model: PreTrainedModel, name: str, methods: Sequence[str], backends: Sequence[str], settings: Settings, taus: dict[str, float]
) -> list[dict]:
    """One row per (method, backend) on one target: costs per step and per token (medians over prompts)."""
    runs = {(m, b): d for b in backends for m, d in decoders(model, methods).items()}
    inputs = prompts(model.config.vocab_size, settings)
    records: dict[tuple[str, str], list[tuple[TurnRecord, TurnRecord]]] = {run: [] for run in runs}
    order = list(runs)
    with tqdm(total=len(order) * (1 + len(inputs)), desc=f"step-cost {name}", unit="run") as progress:
        for run in order:  # warm-up: kernels compile, autotune and load here
            _decode(model, runs, run, inputs[0], settings.warmup_tokens, "turn")
            progress.update()
        for index, prompt in enumerate(inputs):
            for run in order[index % len(order) :] + order[: index % len(order)]:
                records[run].append(tuple(_decode(model, runs, run, prompt, settings.new_tokens, t) for t in ("turn", "phases")))
                progress.update()
    if settings.profile:
        for run in order:
            _profile(model, runs, run, inputs[0], settings, Path(settings.profile) / f"{name}-{run[0]}-{run[1]}")
    rows = [_row(name, method, backend, pairs) for (method, backend), pairs in records.items()]
    return _with_projection(rows, taus)


def _profile(model, runs, run: tuple[str, str], prompt: list[int], settings: Settings, stem: Path) -> None:
    """One synchronised decode under torch.profiler: a Chrome trace (phases are labelled ranges) and the
    operators' self times, to find where a phase's time goes."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if model.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=True) as profiler:
        _decode(model, runs, run, prompt, settings.new_tokens, "phases")
    stem.parent.mkdir(parents=True, exist_ok=True)
    profiler.export_chrome_trace(str(stem.with_suffix(".trace.json")))
    sort = "self_cuda_time_total" if model.device.type == "cuda" else "self_cpu_time_total"
    stem.with_suffix(".ops.txt").write_text(profiler.key_averages().table(sort_by=sort, row_limit=40), encoding="utf-8")


def _decode(model, runs, run: tuple[str, str], prompt: list[int], tokens: int, timing: str) -> TurnRecord:
    method, backend = run
    set_backend(model, backend)
    config = DecodeConfig(max_new_tokens=tokens, max_length=len(prompt) + tokens, timing=timing)
    never = [model.config.vocab_size]  # a stop token no logits row can emit: every turn decodes exactly `tokens`
    return runs[run](model, prompt, config, never, None)


def _row(target: str, method: str, backend: str, pairs: list[tuple[TurnRecord, TurnRecord]]) -> dict:
    """Step costs exclude the prefill (its own column): ms per step after it, from each timing."""
    turn = [_per_step(t, t.wall_seconds - t.seconds["prefill"]) for t, _ in pairs]
    synced = [_per_step(p, p.wall_seconds - p.seconds["prefill"]) for _, p in pairs]
    split = {phase: statistics.median(_per_step(p, p.seconds[phase]) for _, p in pairs) for phase in ("draft", "verify", "bookkeeping")}
    sizes = [n for t, _ in pairs for n in t.tree_sizes]
    tokens, steps = sum(t.new_tokens for t, _ in pairs), sum(t.steps for t, _ in pairs)
    return {"target": target, "method": method, "kernels": backend, "tree_size": statistics.mean(sizes) if sizes else 0.0,
            "tau": tokens / steps, "ms_per_step": statistics.median(turn), "ms_per_step_synced": statistics.median(synced),
            **{f"{phase}_ms": ms for phase, ms in split.items()},
            "prefill_ms": statistics.median(1000 * p.seconds["prefill"] for _, p in pairs)}


def _per_step(record: TurnRecord, seconds: float) -> float:
    """Milliseconds per step after the prefill (the prefill is a step of its own)."""
    return 1000 * seconds / max(record.steps - 1, 1)


def _with_projection(rows: list[dict], taus: dict[str, float]) -> list[dict]:
    """Add the plain ms per token of the same backend, the sync overhead and the projected speedup."""
    plain = {r["kernels"]: r["ms_per_step"] for r in rows if r["method"] == BASELINE}
    for row in rows:
        row["plain_ms_per_token"] = plain.get(row["kernels"], float("nan"))
        row["sync_overhead"] = row["ms_per_step_synced"] / row["ms_per_step"]
        tau = taus.get(row["method"])
        row["paper_tau"] = tau
        row["projected_speedup"] = tau * row["plain_ms_per_token"] / row["ms_per_step"] if tau else None
    return rows


def published_taus(published: Path | None, target: str) -> dict[str, float]:
    """τ at T = 0 per method for the paper target a shape stands for: 1 + mean extra tokens per step over its tasks."""
    if published is None:
        return {}
    paper_target = PAPER_TARGETS.get(target, DEFAULT_PAPER_TARGET)
    try:
        table = pd.read_csv(published)
    except (OSError, ValueError) as error:
        raise Clover2Error(f"{published}: cannot read the published numbers ({error})") from None
    missing = {"target", "temperature", "method", "extra_tokens_per_step"} - set(table.columns)
    if missing:
        raise Clover2Error(f"{published}: no column {sorted(missing)[0]!r}")
    chosen = table[(table["target"] == paper_target) & (table["temperature"] == 0)]
    return {method: 1.0 + float(group["extra_tokens_per_step"].mean()) for method, group in chosen.groupby("method")}


def run_step_cost(
    shapes: Sequence[str], target_dirs: Sequence[Path], methods: Sequence[str], backends: Sequence[str],
    device: str, dtype: str, settings: Settings, published: Path | None,
    on_target: Callable[[list[dict]], None] = lambda rows: None,
) -> list[dict]:
    """Every target's rows; `on_target` sees the rows so far after each target (to save partial results)."""
    rows: list[dict] = []
    for name, model in targets(shapes, target_dirs, device, dtype):
        rows += measure(model, name, methods, backends, settings, published_taus(published, name))
        on_target(rows)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows
