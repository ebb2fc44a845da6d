"""The testbed world: running sums on a CPU, where verbalized uncertainty does work.

A problem is a chain like "37+8+5=?", evaluated left to right (values stay in 10..99). The solver's worked
trace folds one move per step ("<think>45+5=50</think>"). A step whose units carry (or borrow) is *hard*: a small
left-to-right model must get the tens digit right before it has written the units. On some steps, more
often hard ones, the solver is *tentative*: it writes a first value (sometimes the classic slip, the carry
forgotten), flags it with a marker, recomputes the units digit alone and, if the first value was wrong,
says "wait" and corrects it:

    37+8+5=?  <think>35? check 7+8 is 15, wait 45+5=50</think>     (a slip, caught)
              <think>45? check 7+8 is 15, ok 45+5=50</think>       (a doubt, confirmed)

The world's explicit assumption, the paper's Sec. 3 premise about real LLMs: given a correct solution (the
project's teacher prompt, by richness), the solver reasons confidently: no tentative steps, no markers.

Difficulty knob: `steps` (chain length) and `ops`. Families: the in-domain one (2-3 additions) and OOD ones
(longer chains; subtraction, which borrows). `split` partitions the problem space by a hash of the
question, so the base model's corpus ("base") never holds an RL or evaluation problem ("study"), not even
inside a hinted prompt.
"""

import hashlib
import random

from ablate import teacher
from ablate.problem import Problem

LO, HI = 10, 99  # every running value stays a two-digit number
SPLITS = ("base", "study")


def apply(value: int, op: str, x: int) -> int:
    if op == "+":
        return value + x
    if op == "-":
        return value - x
    raise ValueError(f"world op {op!r}: choose '+' or '-'")


def is_hard(value: int, op: str, x: int) -> bool:
    """A carry (addition) or a borrow (subtraction) in the units digit."""
    return value % 10 + x >= 10 if op == "+" else value % 10 < x


def _units_check(value: int, op: str, x: int) -> str:
    """The recomputation of one step's units digit, the part that decides the carry: "7+8 is 15", "15-9 is 6"."""
    u = value % 10
    if op == "+":
        return f"{u}+{x} is {u + x}"
    top = u + 10 if u < x else u
    return f"{top}-{x} is {top - x}"


def _slip(value: int, op: str, x: int, rng: random.Random) -> int:
    """A plausible wrong first value: the carry/borrow forgotten on a hard step, else a units digit off by one."""
    right = apply(value, op, x)
    if is_hard(value, op, x):
        wrong = right - 10 if op == "+" else right + 10
    else:
        wrong = right + rng.choice((-1, 1))
    return wrong if LO <= wrong <= HI and wrong != right else right + (1 if right < HI else -1)


def trace(start: int, moves: list[tuple[str, int]], rng: random.Random | None = None,
          tentative: tuple[float, float] = (0.0, 0.0), wrong: float = 0.0) -> str:
    """The solver's worked solution: `<think>` the chain rewritten one move at a time `</think>`, boxed answer.

    "37+8+5=?" -> "<think>45+5=50</think>" (each line folds the first move into the running value and copies
    the rest, so every step reads its operands from the line before). A step is tentative with probability
    tentative[1] when hard, tentative[0] when easy; its first value is a slip with probability `wrong`.
    tentative=(0, 0) gives the confident trace.
    """
    rng = rng or random.Random(0)
    value, lines = start, []
    for k, (op, x) in enumerate(moves):
        right = apply(value, op, x)
        line = f"{right}" + "".join(f"{o}{y}" for o, y in moves[k + 1:])
        if rng.random() < tentative[is_hard(value, op, x)]:
            first = _slip(value, op, x, rng) if rng.random() < wrong else right
            line = f"{first}? check {_units_check(value, op, x)}, {'ok' if first == right else 'wait'} {line}"
        lines.append(line)
        value = right
    return f"<think>{'='.join(lines)}</think>\n\\boxed{{{value}}}"


def question(start: int, moves: list[tuple[str, int]]) -> str:
    return f"{start}" + "".join(f"{op}{x}" for op, x in moves) + "=?"


def _split_of(text: str) -> str:
    return SPLITS[int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 2]


def _draw(rng: random.Random, steps: tuple[int, int], ops: tuple[str, ...],
          carry: float | None = None) -> tuple[int, list[tuple[str, int]]]:
    n = rng.randint(*steps)
    # With one operator the start leaves room for n moves; with both, one of them always fits.
    value = start = rng.randint(LO + (9 * n if ops == ("-",) else 0), HI - (9 * n if ops == ("+",) else 0))
    moves = []
    for _ in range(n):
        if carry is None:
            x = rng.randint(1, 9)
            op = rng.choice([op for op in ops if LO <= apply(value, op, x) <= HI])
        else:  # each move is a hard one (a carry or borrow) with probability `carry`, where one fits
            fits = [(op, x) for op in ops for x in range(1, 10) if LO <= apply(value, op, x) <= HI]
            hard = rng.random() < carry
            op, x = rng.choice([m for m in fits if is_hard(value, *m) == hard] or fits)
        moves.append((op, x))
        value = apply(value, op, x)
    return start, moves


def generate(n: int, steps=(2, 3), ops=("+",), seed: int = 0, split: str = "study", tentative=(0.15, 0.6),
             wrong: float = 0.5, hint: dict | None = None, name: str = "world", carry: float | None = None) -> list[Problem]:
    """`n` distinct problems of one family with solver traces, deterministic in `seed`.

    carry: the chance that a move is drawn hard (a carry or a borrow: the steps where slips happen and checks
    matter) when both kinds fit, the dose knob of the OOD suites; None draws moves uniformly. On 5-addition
    chains the realised share of hard moves runs from about 0.28 (carry 0) to 0.72 (carry 1), 0.49 uniform.
    tentative=(0, 0) gives confident traces only: the control corpus, with no verbalized checks.

    hint: {template, answer_template, contents, fraction}: also emit, for that fraction of the problems, the
    same question wrapped in the teacher prompt (context cut by a richness content drawn from `contents`,
    the solution being another solver trace, as a successful sibling would be) with the confident trace.
    """
    steps, ops = tuple(steps), tuple(ops)
    if split not in SPLITS:
        raise ValueError(f"world split={split!r}: choose from {', '.join(SPLITS)}")
    if not (1 <= steps[0] <= steps[1]) or not ops or set(ops) - {"+", "-"}:
        raise ValueError(f"world steps={list(steps)}, ops={list(ops)}: need 1 <= steps[0] <= steps[1] and ops from '+', '-'")
    if len(ops) == 1 and LO + 9 * steps[1] > HI:
        raise ValueError(f"world steps={list(steps)}: one operator keeps values in {LO}..{HI} for at most 9 steps")
    if carry is not None and not 0 <= carry <= 1:
        raise ValueError(f"world carry={carry}: a share of hard moves, from 0 to 1 (or null for uniform moves)")
    if hint and "none" in hint["contents"]:
        raise ValueError("world hint.contents: 'none' is not a hint; choose from answer, solution_no_thinking, solution")
    rng = random.Random(f"world:{name}:{seed}")
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(seen) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise ValueError(f"world {name!r}: cannot draw {n} distinct {split} problems; lower n or widen steps")
        start, moves = _draw(rng, steps, ops, carry)
        q = question(start, moves)
        # Every operator of the family in every problem: a "+"-only chain of the minus family is in-domain.
        if q in seen or _split_of(q) != split or {op for op, _ in moves} != set(ops):
            continue
        seen.add(q)
        pid, answer = f"{name}-{seed}-{len(seen) - 1}", str(_value(start, moves))
        problems.append(Problem(pid, q, answer, trace(start, moves, rng, tuple(tentative), wrong)))
        if hint and rng.random() < hint["fraction"]:
            sibling = trace(start, moves, rng, tuple(tentative), wrong)
            content = rng.choice(list(hint["contents"]))
            hinted = teacher.teacher_prompt(q, sibling, content, answer, hint["template"], hint["answer_template"])
            problems.append(Problem(pid + "-hinted", hinted, answer, trace(start, moves)))
    return problems


def _value(start: int, moves: list[tuple[str, int]]) -> int:
    for op, x in moves:
        start = apply(start, op, x)
    return start
