"""Answer quality: GSM8K exact match and HumanEval pass@1 (the sandbox has tests of its own)."""

import pytest

from clover2.reporting.quality import (
    gsm8k_correct,
    gsm8k_prediction,
    gsm8k_reference,
    humaneval_passed,
    humaneval_program,
)
from clover2.tasks import load_questions


def test_gsm8k_reference_is_the_number_after_the_marker():
    assert gsm8k_reference("She pays 3 * 4 = <<3*4=12>>12 dollars.\n#### 1,200") == 1200


@pytest.mark.parametrize("answer,expected", [
    ("So the total is $18.", 18.0),
    ("First 16 - 3 - 4 = 9 eggs, and 9 * 2 = 18. The answer is 18.", 18.0),
    ("#### 18", 18.0),
    ("It is -2.5 degrees", -2.5),
    ("I cannot tell.", None),
])
def test_gsm8k_prediction_takes_the_final_number(answer, expected):
    assert gsm8k_prediction(answer) == expected


def test_gsm8k_scoring_on_a_real_question():
    question = load_questions("gsm8k", limit=1)[0]
    number = gsm8k_reference(question.reference)
    assert gsm8k_correct(f"Working it out, the answer is {number:g}.", question.reference)
    assert not gsm8k_correct(f"The answer is {number + 1:g}.", question.reference)


@pytest.fixture(scope="module")
def problem():
    return load_questions("humaneval_full", ids=["HumanEval/0"])[0].reference  # has_close_elements, imports List


def test_canonical_solution_passes_and_a_wrong_one_fails(problem):
    assert humaneval_passed(problem["canonical_solution"], problem).passed
    assert not humaneval_passed("    return False\n", problem).passed


def test_a_chat_answer_with_the_whole_function_in_a_fence_is_run_as_written(problem):
    full = problem["prompt"] + problem["canonical_solution"]
    body = "\n".join(line for line in full.splitlines() if not line.startswith(("from ", "import ")))
    answer = f"Here is the code:\n```python\n{body}\n```\nIt compares every pair."
    assert "from typing import List" in humaneval_program(answer, problem)
    assert humaneval_passed(answer, problem).passed
