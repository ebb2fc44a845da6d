"""Answer grading: math-verify on the boxed answer (math), a letter for multiple choice (choice), plus a
plain exact-match column. Training rewards and evaluation call the same `is_correct`.

`is_correct` works from any thread or process and never raises for a response: math-verify's own timeouts use
SIGALRM (main thread only), so they are off and `_within` bounds each answer instead; an answer that takes
longer than SECONDS, or that math-verify fails on, is graded wrong.
"""

import ctypes
import functools
import math
import re
import threading
import time

import math_verify.grader
import math_verify.parser
from math_verify import LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException
from sympy import Basic, Pow, factorial, preorder_traversal

SECONDS = 5.0  # at most this long to grade one answer (math-verify's own limit per operation)
MAX_CHARS = 1000  # a longer boxed answer is compared as a string only (MATH500's longest gold has 53 characters)
MAX_BITS = 10**7  # nor is one holding a power or factorial larger than 2^MAX_BITS (see _too_large)
_BOXED = [LatexExtractionConfig(boxed_match_priority=0)]
# math-verify warns once that its timeouts are off and the caller must bound the time: `_within` does.
math_verify.parser.TIMEOUT_WARNING_SHOWN = math_verify.grader.TIMEOUT_WARNING_SHOWN = True


class GradingTimeout(BaseException):
    """Raised into a thread whose grading ran past its deadline. Not an Exception (as math-verify's own
    TimeoutException), so that no handler inside math-verify or sympy swallows it."""


class _Watchdog:
    """One daemon thread that raises GradingTimeout into threads whose grading is past its deadline (starting a
    thread per graded answer cost about 150 us, more than math-verify on a short answer)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.deadlines: dict[int, float] = {}  # thread ident -> monotonic deadline of the grading it is in
        self.thread: threading.Thread | None = None

    def run(self):
        with self.cond:
            while True:
                now = time.monotonic()
                for ident, deadline in list(self.deadlines.items()):
                    if deadline <= now:
                        del self.deadlines[ident]
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                                                   ctypes.py_object(GradingTimeout))
                nearest = min(self.deadlines.values(), default=None)
                self.cond.wait(None if nearest is None else max(nearest - now, 0.0))

    def start(self, ident: int, seconds: float) -> None:
        with self.cond:
            if self.thread is None or not self.thread.is_alive():  # also after a fork
                self.thread = threading.Thread(target=self.run, daemon=True, name="grading-deadline")
                self.thread.start()
            self.deadlines[ident] = time.monotonic() + seconds
            self.cond.notify()

    def stop(self, ident: int) -> None:
        with self.cond:
            self.deadlines.pop(ident, None)
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)  # one raised too late is dropped


_WATCHDOG = _Watchdog()


def _within(seconds: float, fn, *args):
    """fn(*args) in this thread, interrupted with GradingTimeout after `seconds`: what SIGALRM does for
    math-verify on the main thread, for any thread. Like SIGALRM, it cannot stop a single long C call."""
    ident = threading.get_ident()
    _WATCHDOG.start(ident, seconds)
    try:
        return fn(*args)
    finally:
        _WATCHDOG.stop(ident)


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

    A response without a boxed answer is wrong, as is one that math-verify fails on or that takes longer than
    SECONDS to grade; from any thread. The gold is read as a boxed answer too, so that currency, units and
    \\text{} in it are normalised as in the response (gold \\$36 accepts \\boxed{36.00}).
    """
    if grader == "choice":
        return choice_letter(completion) == gold.strip().upper()
    if grader != "math":
        raise ValueError(f"grader={grader!r}: choose one of {', '.join(GRADERS)} (set it in the data or suite config)")
    boxed = last_boxed(after_thinking(completion))
    if boxed is None:
        return False
    if len(boxed) > MAX_CHARS:
        return _normalize(boxed) == _normalize(gold)
    try:
        return _within(SECONDS, _math_equal, boxed, gold)
    except (Exception, TimeoutException, GradingTimeout):  # a malformed or pathological answer is wrong, not an error
        return False


def _too_large(parsed: list) -> bool:
    """Does a parsed answer hold a power or factorial of numbers beyond 2^MAX_BITS (10^{10^{10}}, 9!!!!!!)?
    sympy computes such a number in one C call, which neither SIGALRM nor `_within` can interrupt."""
    for expr in parsed:
        if not isinstance(expr, Basic):
            continue
        for node in preorder_traversal(expr):
            if isinstance(node, Pow) and node.is_number:
                base, power = abs(complex(node.base.evalf(30))), abs(complex(node.exp.evalf(30)))
                bits = power * abs(math.log2(base)) if base else 0.0
            elif isinstance(node, factorial) and node.is_number:
                n = abs(complex(node.args[0].evalf(30)))
                bits = n * math.log2(max(n, 2.0))
            else:
                continue
            if not bits <= MAX_BITS:  # nan and inf too
                return True
    return False


@functools.lru_cache(maxsize=4096)
def _parse_gold(text: str) -> tuple:
    """A gold answer is graded against k samples: parsed once (sympy expressions are immutable)."""
    return tuple(parse(text, extraction_config=_BOXED, parsing_timeout=None))


def _math_equal(boxed: str, gold: str) -> bool:
    # The gold as a boxed answer (one already boxed as is): math-verify then applies its normalisation of
    # currency, units and \\text{} to it; a gold inside $...$ loses the dollars first.
    text = gold.strip()
    if len(text) > 1 and text.startswith("$") and text.endswith("$") and not text.endswith("\\$"):
        text = text[1:-1]
    gold_parsed = list(_parse_gold(text if "\\boxed" in text else f"\\boxed{{{text}}}"))
    pred = parse(f"\\boxed{{{boxed}}}", extraction_config=_BOXED, parsing_timeout=None)
    if not gold_parsed or not pred or _too_large(gold_parsed) or _too_large(pred):
        return _normalize(boxed) == _normalize(gold)
    return bool(verify(gold_parsed, pred, timeout_seconds=None))


def reward(completions, answer, grader=None, **_) -> list[float]:
    """TRL reward function: 1.0 for a correct answer, else 0.0 (the paper's binary reward)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    graders = grader or ["math"] * len(texts)
    return [float(is_correct(t, a, g)) for t, a, g in zip(texts, answer, graders, strict=True)]
