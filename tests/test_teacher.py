"""Teacher-prompt construction per richness level, exact strings."""

import pytest

from ablate import train
from ablate.teacher import PAPER_TEMPLATE, context_text, strip_thinking, teacher_prompt

PROMPT = r"What is 2 + 3? Put your final answer within \boxed{}."
SOLUTION = "<think>2 + 3 = 5. Let me check: 5 - 3 = 2.</think>\n\\boxed{5}"
HEAD = PROMPT + "\nCorrect solution:\n\n"
TAIL = "\n\n\n\nCorrectly solve the original question.\n"


def test_paper_template():
    assert PAPER_TEMPLATE == "{prompt}\nCorrect solution:\n\n{context}\n\n\n\nCorrectly solve the original question.\n"


@pytest.mark.parametrize("content,expected", [
    ("none", PROMPT),
    ("answer", HEAD + "The final answer is \\boxed{5}." + TAIL),
    ("solution_no_thinking", HEAD + "\\boxed{5}" + TAIL),
    ("solution", HEAD + SOLUTION + TAIL),
])
def test_teacher_prompt_per_richness(content, expected):
    assert teacher_prompt(PROMPT, SOLUTION, content, answer="5") == expected


def test_answer_read_from_solution_when_no_gold():
    assert context_text(SOLUTION, "answer") == "The final answer is \\boxed{5}."


def test_strip_thinking_handles_prompt_opened_think():
    # DeepSeek-R1-Distill opens <think> in the prompt: completions carry only the closing tag.
    assert strip_thinking("2 + 3 = 5, wait.\n</think>\n\nThe answer is \\boxed{5}") == "The answer is \\boxed{5}"
    assert strip_thinking("no thinking here") == "no thinking here"


def test_missing_solution_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a solution"):
        context_text(None, "solution", "5")
    with pytest.raises(ValueError, match="choose from"):
        context_text(SOLUTION, "everything")


def _builder(content, source):
    richness = {"name": "x", "content": content, "source": source}
    tcfg = {"template": PAPER_TEMPLATE, "answer_template": "The final answer is \\boxed{{{answer}}}."}
    b = train.RichnessSDPOBuilder.__new__(train.RichnessSDPOBuilder)
    b.richness, b.tcfg = richness, tcfg
    return b


@pytest.mark.parametrize("content,expected", [
    ("none", PROMPT),
    ("answer", HEAD + "The final answer is \\boxed{5}." + TAIL),
    ("solution_no_thinking", HEAD + "\\boxed{5}" + TAIL),
    ("solution", HEAD + SOLUTION + TAIL),
])
def test_sdpo_builder_rewrites_sibling_by_richness(content, expected):
    # TRL hands the builder the raw successful sibling (solution_template="{successful_previous_attempt}").
    assert _builder(content, "sibling")._build_reprompt_text(PROMPT, SOLUTION, "") == expected


def test_dataset_rows_carry_reference_context():
    from ablate.problem import Problem

    rows = train.dataset_rows([Problem("p1", PROMPT, "5", SOLUTION)], {"name": "medium", "content":
                              "solution_no_thinking", "source": "reference"}, {"answer_template": "{answer}"})
    assert rows[0]["privileged_context"] == "\\boxed{5}"
    with pytest.raises(ValueError, match="richness=high with source=reference: problem p2"):
        train.dataset_rows([Problem("p2", PROMPT, "5", None)], {"name": "high", "content": "solution",
                           "source": "reference"}, {"answer_template": "{answer}"})
