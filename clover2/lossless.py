"""Is a method lossless? Token-for-token against plain decoding at T = 0, a distribution test at T > 0."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from scipy.stats import chi2_contingency
from tqdm import tqdm

from clover2.bench import answer_text
from clover2.chat import prompt_ids
from clover2.decoding import DecodeConfig, generate, turn_generator
from clover2.methods import DecodeTurn
from clover2.targets import Target
from clover2.tasks import Question

CONTEXT_TOKENS = 12  # tokens of each continuation shown after the first difference
MIN_EXPECTED = 5  # chi-squared needs expected counts of about 5 or more: rarer outcomes are pooled


@dataclass(frozen=True)
class Mismatch:
    question_id: str
    turn: int
    position: int  # index of the first differing new token
    plain: str  # the plain continuation from that position
    method: str  # the method's continuation from that position


@dataclass
class GreedyReport:
    turns_checked: int = 0
    turns_identical: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.turns_checked > 0 and self.turns_identical == self.turns_checked

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def check_greedy(
    target: Target, runs: Sequence[tuple[str, DecodeTurn]], questions: Sequence[Question], config: DecodeConfig
) -> dict[str, GreedyReport]:
    """Decode every turn with plain decoding (once) and with each method from the same prompt; compare tokens.

    Later turns quote plain decoding's answers, so one mismatch does not change the prompts after it.
    """
    config = replace(config, temperature=0.0)
    reports = {name: GreedyReport() for name, _ in runs}
    for question in tqdm(questions, desc="greedy losslessness", unit="q"):
        answers: list[str] = []
        for turn in range(len(question.turns)):
            ids = prompt_ids(target.tokenizer, question.turns[: turn + 1], answers)
            plain = generate(target.model, ids, config, target.stop_token_ids)
            for name, decode in runs:
                method, report = decode(target.model, ids, config, target.stop_token_ids, None), reports[name]
                report.turns_checked += 1
                if method.tokens == plain.tokens:
                    report.turns_identical += 1
                else:
                    report.mismatches.append(_mismatch(target, question.question_id, turn, plain.tokens, method.tokens))
            answers.append(answer_text(target, plain))
    return reports


def _mismatch(target: Target, question_id: str, turn: int, plain: list[int], method: list[int]) -> Mismatch:
    position = next((i for i, (a, b) in enumerate(zip(plain, method)) if a != b), min(len(plain), len(method)))
    show = lambda tokens: target.tokenizer.decode(tokens[position : position + CONTEXT_TOKENS])  # noqa: E731
    return Mismatch(question_id, turn, position, show(plain), show(method))


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
