"""Every metric of METHODS.md §8, defined once, computed from the raw bench records.

A bench file holds rows of one method and, interleaved in the same job, of its baseline; a speedup
is only ever computed between rows of the same file (same job, device, threads and repeat).
Conventions that published numbers got wrong, and that these functions pin:
- steps count every target forward that yields tokens, the prefill included (τ of plain decoding
  is exactly 1; a 0-based count would inflate τ);
- tokens are the engine's own token ids, never re-tokenised text;
- tasks come from each record's `category` via its `task` field, never from line positions;
- warm-up generations are not in the records at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

from clover2.errors import Clover2Error
from clover2.records import BenchRow

KEYS = ["method", "task", "temperature"]
CONFIDENCE = 0.95


def read_bench(paths: Iterable[Path]) -> pd.DataFrame:
    """One row per (file, method, question) with its totals over turns."""
    rows = []
    for path in paths:
        for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            try:
                record = json.loads(line)
                rows.append(_question_row(record, str(path)))
            except (ValueError, KeyError, TypeError, Clover2Error) as error:
                raise Clover2Error(f"{path}:{number}: not a bench record ({error!r})") from None
    if not rows:
        raise Clover2Error("no bench records to summarise")
    return pd.DataFrame(rows)


def _question_row(record: dict, source: str) -> dict:
    row = BenchRow.from_json(record)
    turns, settings = row.turns, row.settings
    # Phase times of unsynchronised GPU turns (timing "turn") say where the host waited, not where the
    # device worked: they are left out (NaN), so the time split and verification cost read exact ones only.
    exact = all(t.phases_exact for t in turns)
    phases = {f"{phase}_seconds": sum(t.seconds[phase] for t in turns) if exact else np.nan for phase in turns[0].seconds}
    steps = [step for t in turns for step in t.drafted]
    return {
        "source": source,
        "method": row.method,
        "task": row.task,
        "category": row.category,
        "question_id": row.question_id,
        "temperature": settings.temperature,
        "dtype": settings.dtype,
        "device": settings.device,
        "repeat": settings.repeat,
        "replicate": row.replicate,
        "head": settings.head,
        "new_tokens": sum(t.new_tokens for t in turns),
        "steps": sum(t.steps for t in turns),
        "wall_seconds": sum(t.wall_seconds for t in turns),
        **phases,
        # Per speculative step (the prefill drafts nothing): tokens kept and first rejected depth.
        "step_lengths": [step.kept for step in steps],
        "failed_depths": [step.failed_depth for step in steps],
        "tree_sizes": [step.tree_size for step in steps if step.tree_size is not None],
        "drafting": settings.drafting_label,
        "answers": [t.text for t in turns],
    }


def tau(new_tokens: pd.Series, steps: pd.Series) -> float:
    """Mean accepted length, bonus token included: Σ new tokens / Σ steps."""
    return float(new_tokens.sum() / steps.sum())


def throughput(frame: pd.DataFrame) -> pd.Series:
    """Tokens per second of each question: Σ_turns new tokens / Σ_turns wall time."""
    return frame["new_tokens"] / frame["wall_seconds"]


def paired(frame: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Each method's question rows beside the baseline's rows for the same question in the same file."""
    base = frame[frame["method"] == baseline]
    others = frame[frame["method"] != baseline]
    on = ["source", "task", "temperature", "repeat", "question_id"]
    merged = others.merge(base[[*on, "new_tokens", "wall_seconds"]], on=on, suffixes=("", "_base"))
    if len(merged) != len(others):
        raise Clover2Error(f"some bench rows have no {baseline} run of the same question in the same file")
    return merged


def between(frame: pd.DataFrame, method: str, other: str) -> dict:
    """`method`'s speedup over `other` (ratio of mean tokens/s) on the questions both decoded in the same
    files, with its bootstrap CI: two methods compared directly, as a method is with the baseline."""
    pairs = paired(frame[frame["method"].isin([method, other])], other)
    result = speedups(pairs)
    return {"questions": len(pairs), "speedup": result["speedup"], "ci_low": result["speedup_ci_low"],
            "ci_high": result["speedup_ci_high"]}


AA_TOLERANCE = 0.03  # |A/A - 1| beyond this: the run's machine was too noisy for speedups that close to 1


def aa_ratio(frame: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per temperature, the A/A check: the baseline's second decode of a question (replicate 1) over its
    first, as a speedup (ratio of mean tokens/s, bootstrap CI); `noisy` when |ratio - 1| > AA_TOLERANCE."""
    first = frame[(frame["method"] == baseline) & (frame["replicate"] == 0)]
    rows = []
    for temperature, again in frame[frame["replicate"] > 0].groupby("temperature"):
        result = between(pd.concat([again.assign(method="A/A"), first[first["temperature"] == temperature]]), "A/A", baseline)
        rows.append({"temperature": temperature, "questions": result["questions"], "ratio": result["speedup"],
                     "ci_low": result["ci_low"], "ci_high": result["ci_high"], "noisy": abs(result["speedup"] - 1) > AA_TOLERANCE})
    return pd.DataFrame(rows)


def speedup_ratio_of_means(method_tps: np.ndarray, base_tps: np.ndarray) -> float:
    """mean over questions of the method's throughput / mean of the baseline's (Spec-Bench, Clover-2)."""
    return float(np.mean(method_tps) / np.mean(base_tps))


def speedup_total(frame: pd.DataFrame) -> float:
    """Total tokens over total time of the method, divided by the same for its paired baseline."""
    method = frame["new_tokens"].sum() / frame["wall_seconds"].sum()
    base = frame["new_tokens_base"].sum() / frame["wall_seconds_base"].sum()
    return float(method / base)


def bootstrap_ci(method_tps: np.ndarray, base_tps: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the ratio of means, resampling questions (pairs kept)."""
    if len(method_tps) < 2 or np.ptp(method_tps / base_tps) == 0:
        return float("nan"), float("nan")
    result = bootstrap(
        (method_tps, base_tps), lambda m, b, axis=-1: np.mean(m, axis=axis) / np.mean(b, axis=axis), paired=True,
        vectorized=True, confidence_level=CONFIDENCE, n_resamples=2000, method="percentile", rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def depth_acceptance(failed_depths: Iterable[int | None], step_lengths: Iterable[int]) -> list[float]:
    """Per tree depth k: of the steps whose path reached depth k, the share that accepted a token there.

    A step with first rejected depth d accepted depths 1..d-1 and tried d; a step without a rejection
    accepted every depth its path had (its kept tokens less the bonus).
    """
    tried, accepted = np.zeros(64), np.zeros(64)
    for failed, kept in zip(failed_depths, step_lengths):
        depth = failed if failed is not None else kept - 1
        ok = depth - 1 if failed is not None else depth
        tried[:depth] += 1
        accepted[:ok] += 1
    reached = int(np.count_nonzero(tried))
    return [float(a / t) for a, t in zip(accepted[:reached], tried[:reached])]


def tree_size_curve(frame: pd.DataFrame) -> pd.DataFrame:
    """τ against tree size: per (method, drafting options) run, the mean drafted nodes per step and τ."""
    rows = []
    for (method, drafting), group in frame.groupby(["method", "drafting"], sort=True):
        sizes = _flat(group["tree_sizes"])
        if not sizes:
            raise Clover2Error(f"{method} {drafting}: no tree sizes in the records (plain decoding, or records of an older version)")
        rows.append({"method": method, "drafting": drafting, "tree_size": float(np.mean(sizes)),
                     "tau": tau(group["new_tokens"], group["steps"]), "questions": len(group)})
    return pd.DataFrame(rows).sort_values(["method", "tree_size"], ignore_index=True)


def verify_cost(frame: pd.DataFrame) -> pd.DataFrame:
    """Milliseconds per verification (the target's forward over a tree) against the tokens it verifies,
    per (method, drafting options) run: Σ verify time / Σ speculative steps, at the mean drafted nodes
    per step + 1 (the root), pooled over every file, task and temperature the run appears in.

    A run whose trees are the root alone (plain decoding) gives the one-token step; `vs_plain` is each
    run's time over the mean of those. Rows without per-step tree sizes (a black-box `generate`) are left out.
    """
    rows = []
    stepped = frame[(frame["tree_sizes"].map(len) > 0) & frame["verify_seconds"].notna()]
    for (method, drafting), group in stepped.groupby(["method", "drafting"], sort=True):
        sizes = _flat(group["tree_sizes"])
        rows.append({"method": method, "drafting": drafting, "tokens": 1 + float(np.mean(sizes)),
                     "ms_per_verify": 1000 * float(group["verify_seconds"].sum()) / len(sizes), "steps": len(sizes)})
    table = pd.DataFrame(rows, columns=["method", "drafting", "tokens", "ms_per_verify", "steps"])
    plain = table.loc[table["tokens"] == 1, "ms_per_verify"].mean()
    table.insert(4, "vs_plain", table["ms_per_verify"] / plain)
    return table.sort_values(["tokens", "method"], ignore_index=True)


def summary(frame: pd.DataFrame, baseline: str = "vanilla") -> pd.DataFrame:
    """Per (method, task, temperature): τ, tokens/s, speedups with CI, spread over repeats, time split."""
    rows = []
    pairs = paired(frame, baseline)
    for (method, task, temperature), group in frame.groupby(KEYS, sort=True):
        tps = throughput(group)
        row = {"method": method, "task": task, "temperature": temperature, "questions": group["question_id"].nunique(),
               "repeats": group["repeat"].nunique(), "tau": tau(group["new_tokens"], group["steps"]),
               "tokens_per_s": float(tps.mean())}
        row["extra_tokens_per_step"] = row["tau"] - 1
        row["depth_acceptance"] = depth_acceptance(_flat(group["failed_depths"]), _flat(group["step_lengths"]))
        phases = [c for c in group.columns if c.endswith("_seconds") and c != "wall_seconds"]
        row |= {c.removesuffix("_seconds") + "_share": float(group[c].sum(min_count=1) / group["wall_seconds"].sum()) for c in phases}
        if method != baseline:
            row |= speedups(pairs[(pairs["method"] == method) & (pairs["task"] == task) & (pairs["temperature"] == temperature)])
        rows.append(row)
    return pd.DataFrame(rows)


def speedups(pairs: pd.DataFrame) -> dict:
    """The speedup of paired rows (ratio of mean tokens/s), its bootstrap CI, the total-time ratio and the spread over repeats."""
    method_tps, base_tps = _tps(pairs)
    low, high = bootstrap_ci(method_tps, base_tps)
    per_repeat = [speedup_ratio_of_means(*_tps(g)) for _, g in pairs.groupby("repeat")]
    return {"speedup": speedup_ratio_of_means(method_tps, base_tps), "speedup_ci_low": low, "speedup_ci_high": high,
            "speedup_total": speedup_total(pairs), "speedup_repeat_sd": float(np.std(per_repeat, ddof=1)) if len(per_repeat) > 1 else 0.0}


def _flat(column: pd.Series) -> list:
    return [item for items in column for item in items]


def _tps(pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return (pairs["new_tokens"] / pairs["wall_seconds"]).to_numpy(), (pairs["new_tokens_base"] / pairs["wall_seconds_base"]).to_numpy()
