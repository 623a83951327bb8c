"""Is a method lossless? Token-for-token against plain decoding at T = 0, a distribution test at T > 0."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
from scipy.stats import chi2_contingency
from tqdm import tqdm

from clover2.bench import answer_text, turn_prompt
from clover2.engine.decoding import DecodeConfig, TurnRecord, generate, turn_generator
from clover2.engine.target import Target
from clover2.methods import DecodeTurn
from clover2.tasks import Question

CONTEXT_TOKENS = 12  # tokens of each continuation shown after the first difference
HALF_DTYPES = (torch.bfloat16, torch.float16)
NEAR_TIE_ULPS = 4  # see near_tie_tolerance; calibrated on the real target (README "Losslessness")
MIN_EXPECTED = 5  # chi-squared needs expected counts of about 5 or more: rarer outcomes are pooled


@dataclass(frozen=True)
class Divergence:
    question_id: str
    turn: int
    position: int  # index of the first differing new token
    plain: str  # the plain continuation from that position
    method: str  # the method's continuation from that position
    # At that position, in the target's logits row each output's token was emitted from: how much plain's
    # row prefers plain's token to the method's, and the method's row the method's token to plain's.
    # None: the other token is not among that row's top logits, or an output ended first.
    plain_margin: float | None
    method_margin: float | None
    method_chose_argmax: bool  # the method's token is its own row's top logit (a correct verifier's always is)
    tolerance: float  # the near-tie tolerance at this position (near_tie_tolerance)

    @property
    def near_tie(self) -> bool:
        margins = (self.plain_margin, self.method_margin)
        return self.method_chose_argmax and all(m is not None and m <= self.tolerance for m in margins)


@dataclass
class GreedyReport:
    turns_checked: int = 0
    turns_identical: int = 0
    near_ties: list[Divergence] = field(default_factory=list)  # diverged where the target's top two were tied within rounding
    mismatches: list[Divergence] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.turns_checked > 0 and not self.mismatches

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def near_tie_tolerance(dtype: torch.dtype, top_logit: float) -> float:
    """How far apart two logits may be and still swap order between two correct computations in `dtype`.

    Plain decoding runs one token per forward and a speculative step several, so the matrix products
    accumulate in another order. In float32 the difference is ~1e-6 of a logit, far below any margin
    seen in practice, and the tolerance is 0: outputs must be identical. In bf16 and fp16 every
    activation is rounded to eps * |value| (bf16: eps = 2^-7), so the final logits, of magnitude
    |top logit|, carry an error of a few units of that spacing; NEAR_TIE_ULPS of them are allowed.
    """
    if dtype not in HALF_DTYPES:
        return 0.0
    return NEAR_TIE_ULPS * torch.finfo(dtype).eps * max(abs(top_logit), 1.0)


def check_greedy(
    target: Target, runs: Sequence[tuple[str, DecodeTurn]], questions: Sequence[Question], config: DecodeConfig
) -> dict[str, GreedyReport]:
    """Decode every turn with plain decoding (once) and with each method from the same prompt; compare tokens.

    A turn that differs is a near-tie when, at its first differing token, the method's token is its
    own row's argmax and each output's row prefers its token to the other's by at most
    `near_tie_tolerance`; otherwise it is a mismatch, and the check fails. Later turns quote plain
    decoding's answers, so one divergence does not change the prompts after it.
    """
    config = replace(config, temperature=0.0, record_top_logits=True)
    dtype = target.model.dtype
    reports = {name: GreedyReport() for name, _ in runs}
    for question in tqdm(questions, desc="greedy losslessness", unit="q"):
        answers: list[str] = []
        for turn in range(len(question.turns)):
            ids = turn_prompt(target, question, turn, answers, config)
            plain = generate(target.model, ids, config, target.stop_token_ids)
            for name, decode in runs:
                method, report = decode(target.model, ids, config, target.stop_token_ids, None), reports[name]
                report.turns_checked += 1
                if method.tokens == plain.tokens:
                    report.turns_identical += 1
                    continue
                divergence = _divergence(target, question.question_id, turn, plain, method, dtype)
                (report.near_ties if divergence.near_tie else report.mismatches).append(divergence)
            answers.append(answer_text(target, plain))
    return reports


def _divergence(target: Target, question_id: str, turn: int, plain: TurnRecord, method: TurnRecord, dtype: torch.dtype) -> Divergence:
    pairs = zip(plain.tokens, method.tokens)
    position = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(plain.tokens), len(method.tokens)))
    shown = [target.tokenizer.decode(tokens[position : position + CONTEXT_TOKENS]) for tokens in (plain.tokens, method.tokens)]
    if position >= min(len(plain.top_logits), len(method.top_logits)):  # one output is a prefix of the other (or unscored)
        return Divergence(question_id, turn, position, *shown, None, None, False, 0.0)
    a, b = plain.tokens[position], method.tokens[position]
    (plain_own, plain_ids, plain_values), (method_own, method_ids, method_values) = plain.top_logits[position], method.top_logits[position]
    return Divergence(question_id, turn, position, *shown, _preference(plain_own, b, plain_ids, plain_values),
                      _preference(method_own, a, method_ids, method_values), method_own >= method_values[0],
                      near_tie_tolerance(dtype, plain_values[0]))


def _preference(own: float, other: int, ids: list[int], values: list[float]) -> float | None:
    """How far a row's emitted token's logit lies above `other`'s; None when `other` is not among its top logits."""
    return own - values[ids.index(other)] if other in ids else None


@dataclass(frozen=True)
class SamplingReport:
    samples: int  # per method
    tokens: int  # length of each sampled continuation
    outcomes: int  # distinct continuations seen
    statistic: float
    dof: int
    p_value: float
    alpha: float

    @property
    def passed(self) -> bool:
        return self.p_value >= self.alpha

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def check_sampling(
    target: Target,
    runs: Sequence[tuple[str, DecodeTurn]],
    prompt: Sequence[int],
    temperature: float,
    samples: int,
    tokens: int,
    alpha: float = 0.01,
    seed: int = 0,
) -> dict[str, SamplingReport]:
    """Chi-squared homogeneity test per method: do plain and speculative sampling give the same first `tokens` tokens?

    Plain decoding is sampled once and compared with every method. Each draw uses its own seeded
    stream, so the samples are independent and reproducible.
    """
    config = DecodeConfig(temperature=temperature, max_new_tokens=tokens, seed=seed)
    device = target.model.device
    stops = target.stop_token_ids

    def draw(name: str, run: DecodeTurn) -> Counter:
        streams = (turn_generator(seed, f"{name}/{i}", 0, device) for i in range(samples))
        return Counter(
            tuple(run(target.model, prompt, config, stops, stream).tokens)
            for stream in tqdm(streams, total=samples, desc=f"sampling {name}", unit="draw")
        )

    plain = draw("plain", generate)
    return {name: _homogeneity(plain, draw("method", decode), samples, tokens, alpha) for name, decode in runs}


def _homogeneity(plain: Counter, method: Counter, samples: int, tokens: int, alpha: float) -> SamplingReport:
    table = _pooled_table(plain, method)
    if len(table[0]) < 2:  # one outcome only: both samplers agree, and there is nothing to test
        return SamplingReport(samples, tokens, len(plain | method), 0.0, 0, 1.0, alpha)
    statistic, p_value, dof, _ = chi2_contingency(table)
    return SamplingReport(samples, tokens, len(plain | method), float(statistic), int(dof), float(p_value), alpha)


def _pooled_table(first: Counter, second: Counter) -> list[list[int]]:
    """A 2 x C table of outcome counts; outcomes too rare for the test are pooled into one column."""
    total = sum(first.values()) + sum(second.values())
    share = min(sum(first.values()), sum(second.values())) / total
    frequent = [o for o in first | second if (first[o] + second[o]) * share >= MIN_EXPECTED]
    rare = [o for o in first | second if o not in frequent]
    columns = [[first[o], second[o]] for o in frequent]
    if rare:
        columns.append([sum(first[o] for o in rare), sum(second[o] for o in rare)])
    return [[column[0] for column in columns], [column[1] for column in columns]]
