"""Answer grading: math-verify on the boxed answer (math), a letter for multiple choice (choice), plus a
plain exact-match column. Training rewards and evaluation call the same `is_correct`."""

import re

from math_verify import LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException


def last_boxed(text: str) -> str | None:
    r"""Content of the last \boxed{...} in `text` (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def choice_letter(text: str) -> str | None:
    r"""The option letter a response chose: from its last <answer>...</answer>, else its last \boxed{},
    else "answer is X"; None when it states none."""
    text = after_thinking(text)
    tagged = re.findall(r"<answer>(.*?)</answer>", text, flags=re.S | re.I)
    stated = tagged[-1] if tagged else last_boxed(text)
    if stated is None:
        said = re.findall(r"answer is[:\s]*\(?([A-Za-z])\b", text)
        stated = said[-1] if said else None
    if stated is None:
        return None
    m = re.fullmatch(r"\s*(?:\\text\{)?\(?([A-Za-z])\)?[.:]?\}?(?:\s.*)?", stated.strip(), flags=re.S)
    return m.group(1).upper() if m else None


def _normalize(answer: str) -> str:
    return answer.strip().strip("$").replace(" ", "").rstrip(".")


def exact_match(completion: str, gold: str, grader: str = "math") -> bool:
    """The stated answer equals the gold answer as a string (whitespace and $ ignored)."""
    if grader == "choice":
        return choice_letter(completion) == gold.strip().upper()
    boxed = last_boxed(after_thinking(completion))
    return boxed is not None and _normalize(boxed) == _normalize(gold)


def after_thinking(text: str) -> str:
    """The part of a response after its reasoning (after the last </think>, if any)."""
    return text.rsplit("</think>", 1)[-1]


GRADERS = ("math", "choice")


def is_correct(completion: str, gold: str, grader: str = "math") -> bool:
    """Is the response's answer right? grader=choice: the chosen letter is `gold`; grader=math: math-verify,
    the last \\boxed{} answer after the thinking equals `gold` mathematically.

    A response without a boxed answer is wrong. math-verify's timeouts use SIGALRM, which works on the
    main thread only (elsewhere they are skipped); its TimeoutException derives from BaseException, so it is
    caught by name.
    """
    if grader == "choice":
        return choice_letter(completion) == gold.strip().upper()
    if grader != "math":
        raise ValueError(f"grader={grader!r}: choose one of {', '.join(GRADERS)} (set it in the data or suite config)")
    boxed = last_boxed(after_thinking(completion))
    if boxed is None:
        return False
    gold_text = gold if "\\boxed" in gold or "$" in gold else f"${gold}$"
    try:
        gold_parsed = parse(gold_text)
        pred = parse(f"\\boxed{{{boxed}}}", extraction_config=[LatexExtractionConfig(boxed_match_priority=0)])
        if not gold_parsed or not pred:
            return _normalize(boxed) == _normalize(gold)
        return bool(verify(gold_parsed, pred))
    except TimeoutException:
        return False


def reward(completions, answer, grader=None, **_) -> list[float]:
    """TRL reward function: 1.0 for a correct answer, else 0.0 (the paper's binary reward)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    graders = grader or ["math"] * len(texts)
    return [float(is_correct(t, a, g)) for t, a, g in zip(texts, answer, graders, strict=True)]
