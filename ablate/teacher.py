"""The teacher's privileged context, by richness: what the self-teacher is conditioned on.

Pure string functions; train.py plugs them into TRL's teacher-context builders.
"""

import dataclasses
import re

from ablate.grading import last_boxed

# The paper's teacher prompt (SDPO/verl: prompt + "\nCorrect solution:\n\n{s}\n\n" + "\n\nCorrectly solve ...").
PAPER_TEMPLATE = "{prompt}\nCorrect solution:\n\n{context}\n\n\n\nCorrectly solve the original question.\n"
PAPER_ANSWER_TEMPLATE = "The final answer is \\boxed{{{answer}}}."

CONTENTS = ("none", "answer", "solution_no_thinking", "solution")


def strip_thinking(solution: str) -> str:
    """Remove the reasoning block from a solution.

    Handles `<think>...</think>` and completions whose template opened `<think>` in the prompt
    (DeepSeek-R1-Distill), which carry only the closing tag.
    """
    text = re.sub(r"<think>.*?</think>", "", solution, flags=re.DOTALL)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    return text.strip()


def context_text(solution: str | None, content: str, answer: str | None = None,
                 answer_template: str = PAPER_ANSWER_TEMPLATE) -> str | None:
    """The privileged context for one richness level, or None for `content="none"`.

    `solution` is a correct solution (a successful sibling rollout or the dataset's reference);
    `answer` is the gold answer, used by `content="answer"` when given, else read from the solution's
    last \\boxed{} (else its last line: a custom reward may accept unboxed answers).
    """
    if content == "none":
        return None
    if content == "answer":
        final = answer if answer is not None else (last_boxed(solution) if solution else None)
        if final is None and solution and strip_thinking(solution):
            final = strip_thinking(solution).splitlines()[-1].strip()
        if final is None:
            raise ValueError("richness content 'answer' needs a gold answer or a solution with a \\boxed{} answer")
        return answer_template.format(answer=final)
    if solution is None:
        raise ValueError(f"richness content {content!r} needs a solution, and this problem has none")
    if content == "solution_no_thinking":
        return strip_thinking(solution)
    if content == "solution":
        return solution
    raise ValueError(f"richness.content={content!r}: choose from {', '.join(CONTENTS)}")


def teacher_prompt(prompt: str, solution: str | None, content: str, answer: str | None = None,
                   template: str = PAPER_TEMPLATE, answer_template: str = PAPER_ANSWER_TEMPLATE) -> str:
    """The teacher's user message: the student's prompt rewritten with the privileged context.

    With content="none" the teacher sees exactly the student's prompt (the control).
    """
    context = context_text(solution, content, answer, answer_template)
    if context is None:
        return prompt
    return template.format(prompt=prompt, context=context)


def hinted(problem, solution: str | None, richness: dict, tcfg: dict):
    """`problem` (a Problem) asked with the teacher's prompt: the hint `solution`, cut by richness.

    As for the training teacher, a dataset-sourced context (richness.source=reference) states the gold answer
    and a sibling-sourced one reads it from the solution's last \\boxed{}.
    """
    answer = problem.answer if richness["source"] == "reference" else None
    try:
        prompt = teacher_prompt(problem.prompt, solution, richness["content"], answer, tcfg["template"],
                                tcfg["answer_template"])
    except ValueError as err:
        raise ValueError(f"richness={richness['name']}: problem {problem.id}: {err}") from None
    return dataclasses.replace(problem, prompt=prompt)


def hint(problem, group: list[dict], source: str, origin: str) -> tuple[str | None, dict]:
    """(hint solution, where it came from): the dataset's reference solution (source=reference), or the first
    correct scored sample of `group` (stage `origin`); (None, {}) when there is none."""
    if source == "reference":
        return problem.solution, {"from": "reference"}
    found = next((s for s in group if s["correct"]), None)
    return (found["completion"], {"from": origin, "sample_idx": found["sample_idx"]}) if found else (None, {})
