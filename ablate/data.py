"""Problems: the built-in arithmetic task, JSON-lines files, held-out split and coverage subsets."""

import json
import random
from dataclasses import dataclass
from pathlib import Path

INSTRUCTION = "Put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str  # the user message
    answer: str  # gold final answer
    solution: str | None = None  # a reference solution, possibly with <think>...</think>


def arithmetic(n: int, digits: int = 2, ops: tuple[str, ...] = ("+", "-"), terms: int = 2, seed: int = 0,
               name: str = "arith") -> list[Problem]:
    """Procedural integer arithmetic with worked reference solutions (the default task)."""
    rng = random.Random(f"{name}:{seed}")
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"arithmetic task {name!r}: cannot draw {n} distinct problems; lower n or raise digits")
        nums = [rng.randint(lo, hi) for _ in range(terms)]
        chosen = [rng.choice(list(ops)) for _ in range(terms - 1)]
        expr = str(nums[0]) + "".join(f" {o} {x}" for o, x in zip(chosen, nums[1:]))
        if expr in seen:
            continue
        seen.add(expr)
        steps, total = [], nums[0]
        for o, x in zip(chosen, nums[1:]):
            # One place value at a time (57 + 31: 57 + 30 = 87, 87 + 1 = 88): short steps a small model can learn.
            parts = [int(d) * 10**i for i, d in enumerate(reversed(str(x))) if d != "0"][::-1] or [0]
            for part in parts:
                new = total + part if o == "+" else total - part
                steps.append(f"{total} {o} {part} = {new}")
                total = new
        inverse = "-" if chosen[-1] == "+" else "+"
        before = total - nums[-1] if chosen[-1] == "+" else total + nums[-1]
        check = f"Let me check: {total} {inverse} {nums[-1]} = {before}."
        solution = f"<think>{', '.join(steps)}. {check}</think>\n\\boxed{{{total}}}"
        problems.append(Problem(f"{name}-{seed}-{len(problems)}", f"What is {expr}? {INSTRUCTION}", str(total), solution))
    return problems


def read_jsonl(path: str, fields: dict[str, str | None], name: str) -> list[Problem]:
    """Problems from a JSON-lines file; `fields` maps id/prompt/answer/solution to the file's keys."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{name}: {file} does not exist; set its path to a JSON-lines file")
    problems = []
    with file.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{file}:{lineno}: not valid JSON ({err.msg})") from None
            for field in ("prompt", "answer"):
                key = fields[field]
                if key not in row or row[key] in (None, ""):
                    raise ValueError(f"{file}:{lineno}: missing column {key!r} (the {field}); "
                                     f"set {name}.fields.{field} to one of {sorted(row)}")
            sol_key, id_key = fields.get("solution"), fields.get("id")
            problems.append(Problem(
                id=str(row[id_key]) if id_key and id_key in row else f"{file.stem}-{lineno}",
                prompt=str(row[fields["prompt"]]),
                answer=str(row[fields["answer"]]),
                solution=row.get(sol_key) if sol_key else None,
            ))
    if not problems:
        raise ValueError(f"{file}: no problems in file")
    return problems


def _decoded(value):
    """verl files store chat messages and structs either as objects or as JSON strings."""
    if isinstance(value, (bytes, str)):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if hasattr(value, "tolist"):  # numpy arrays of messages
        return value.tolist()
    return value


def read_verl_parquet(path: str, where: str) -> list[Problem]:
    """Problems from a verl RL parquet: chat `prompt`, `reward_model.ground_truth`, optional
    `extra_info.solution` (reference) and `problem_id` / `extra_info.index` (id)."""
    import pandas as pd

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{where}: {file} does not exist; set its path to a verl parquet file")
    try:
        df = pd.read_parquet(file)
    except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise ValueError(f"{file}: not a parquet file ({str(err).splitlines()[0]})") from None
    missing = [c for c in ("prompt", "reward_model") if c not in df.columns]
    if missing:
        raise ValueError(f"{file}: missing column {missing[0]!r}; a verl parquet has prompt and "
                         f"reward_model.ground_truth (columns: {', '.join(df.columns)})")
    problems = []
    for i, row in enumerate(df.to_dict("records")):
        prompt = _decoded(row["prompt"])
        if isinstance(prompt, list):
            users = [m for m in prompt if m.get("role") == "user"]
            prompt = users[-1]["content"] if users else None
        reward = _decoded(row["reward_model"]) or {}
        answer = reward.get("ground_truth") if isinstance(reward, dict) else None
        if not prompt or answer in (None, ""):
            field = "prompt (a user message)" if not prompt else "reward_model.ground_truth"
            raise ValueError(f"{file}: row {i}: no {field}")
        extra = _decoded(row.get("extra_info")) or {}
        extra = extra if isinstance(extra, dict) else {}
        pid = row.get("problem_id") or extra.get("index") or f"{file.stem}-{i}"
        problems.append(Problem(str(pid), str(prompt), str(answer), extra.get("solution")))
    if not problems:
        raise ValueError(f"{file}: no problems in file")
    return problems


def load(spec: dict, where: str, name: str = "arith") -> list[Problem]:
    """Problems described by one config block at `where` (`data.source` or an `eval.suites` entry).

    `name` prefixes the ids of generated problems.
    """
    kind = spec.get("kind")
    if kind == "arithmetic":
        return arithmetic(n=spec["n"], digits=spec["digits"], ops=tuple(spec["ops"]), terms=spec.get("terms", 2),
                          seed=spec["seed"], name=name)
    if kind == "jsonl":
        return read_jsonl(spec["path"], dict(spec["fields"]), where)
    if kind == "verl_parquet":
        return read_verl_parquet(spec["path"], where)
    if kind == "world":
        from ablate import world  # the CPU testbed (it imports Problem from here)

        return world.generate(**{k: v for k, v in spec.items() if k != "kind"}, name=name)
    raise ValueError(f"{where}.kind={kind!r}: choose 'arithmetic', 'jsonl', 'verl_parquet' or 'world'")


def split_heldout(problems: list[Problem], n_heldout: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """(training pool, in-domain held-out problems), disjoint and deterministic in `seed`."""
    if n_heldout >= len(problems):
        raise ValueError(f"data.heldout={n_heldout} leaves no training problems out of {len(problems)}; lower it")
    order = list(problems)
    random.Random(f"heldout:{seed}").shuffle(order)
    return order[n_heldout:], order[:n_heldout]


def select_coverage(pool: list[Problem], unique: int | None, copies: int, seed: int) -> list[Problem]:
    """The paper's task coverage: `unique` distinct problems, each repeated `copies` times.

    Subsets are drawn from one seeded permutation, so for a fixed seed each subset contains every
    smaller one (1 < 8 < 64 < 128 < 512 < full). unique=None takes the whole pool.
    """
    if unique is not None and unique < 1 or copies < 1:
        raise ValueError(f"coverage.unique={unique}, coverage.copies={copies}: both must be >= 1")
    if unique is not None and unique > len(pool):
        raise ValueError(f"coverage.unique={unique} but the training pool has only {len(pool)} problems; "
                         "choose a smaller coverage or a larger data set")
    order = sorted(pool, key=lambda p: p.id)
    random.Random(f"coverage:{seed}").shuffle(order)
    chosen = order if unique is None else order[:unique]
    if not chosen:
        raise ValueError("coverage selects no problems: the training pool is empty")
    return [p for p in chosen for _ in range(copies)]
