"""A problem: what every data source yields, every grader checks and every eval set holds."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str  # the user message
    answer: str  # gold final answer
    solution: str | None = None  # a reference solution, possibly with <think>...</think>
    domain: str = "math"  # a label carried into the database with the eval set
    grader: str = "math"  # how answers are graded: math (math-verify on \boxed{}) | choice (a letter)
    system: str | None = None  # a system message sent before the prompt (e.g. answer-format instructions)

    def messages(self) -> list[dict]:
        """The chat the model sees: the optional system message, then the user prompt."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": "user", "content": self.prompt}]
