"""Answer quality next to speed: GSM8K exact match and HumanEval pass@1 (one greedy sample per problem).

Speculative decoding is lossless, so at T = 0 every method must score exactly what plain decoding
scores; these numbers show the answers are real answers and catch a method that is not lossless.
"""

from __future__ import annotations

import re

from clover2.reporting.sandbox import SandboxResult, run_sandboxed

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_FENCE = re.compile(r"```(?:[A-Za-z0-9_+-]*)\n(.*?)(?:```|$)", re.DOTALL)


def _number(text: str) -> float | None:
    cleaned = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        return float(cleaned)
    except ValueError:
        return None


def gsm8k_prediction(answer: str) -> float | None:
    """The model's final number: after "####" when it wrote one, else the last number in its answer."""
    tail = answer.rsplit("####", 1)[1] if "####" in answer else answer
    numbers = _NUMBER.findall(tail)
    return _number(numbers[-1]) if numbers else None


def gsm8k_reference(solution: str) -> float:
    """The number after "#### " in a GSM8K solution."""
    if "####" not in solution:
        raise ValueError(f"GSM8K solution without '####': {solution[-80:]!r}")
    value = _number(solution.rsplit("####", 1)[1].strip())
    if value is None:
        raise ValueError(f"GSM8K answer is not a number: {solution.rsplit('####', 1)[1].strip()!r}")
    return value


def gsm8k_correct(answer: str, solution: str) -> bool:
    predicted = gsm8k_prediction(answer)
    return predicted is not None and abs(predicted - gsm8k_reference(solution)) < 1e-6


def humaneval_program(answer: str, problem: dict) -> str:
    """A runnable program: the model's code (its first fenced block, if any) with the problem's tests.

    A chat model either restates the whole function (then the prompt's imports go first) or
    continues the prompt's body (then the prompt goes first).
    """
    fenced = _FENCE.search(answer)
    code = fenced.group(1) if fenced else answer
    if f"def {problem['entry_point']}" in code:
        imports = "".join(line + "\n" for line in problem["prompt"].splitlines() if line.startswith(("import ", "from ")))
        body = imports + code
    else:
        body = problem["prompt"] + code
    return f"{body}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def humaneval_passed(answer: str, problem: dict, timeout: float = 10.0) -> SandboxResult:
    return run_sandboxed(humaneval_program(answer, problem), timeout=timeout)
