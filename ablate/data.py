"""Problems from every source (built-in arithmetic, JSON lines, verl parquet, Hugging Face datasets,
reasoning-gym, champ), the held-out split and coverage subsets."""

import json
import random
from pathlib import Path

from ablate import world
from ablate.problem import Problem

INSTRUCTION = "Put your final answer within \\boxed{}."


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


def from_row(row: dict, spec: dict, where: str, at: str, default_id: str) -> Problem:
    """One problem from a mapping; `spec.fields` names the keys holding id/prompt/answer/solution/system.

    `at` locates the row in error messages (file:line, file: row i).
    """
    fields = dict(spec.get("fields") or {})
    for field in ("prompt", "answer"):
        key = fields.get(field, field)
        if key not in row or row[key] is None or str(row[key]).strip() == "":
            raise ValueError(f"{at}: missing column {key!r} (the {field}); "
                             f"set {where}.fields.{field} to one of {sorted(row)}")

    def get(field):
        key = fields.get(field)
        return None if key is None or row.get(key) is None else str(row[key])

    prompt = str(row[fields.get("prompt", "prompt")])
    instruction = spec.get("instruction")
    if instruction and instruction not in prompt:  # hub copies of eval sets lack the answer-format line
        prompt = f"{prompt}\n\n{instruction}"
    return Problem(id=get("id") or default_id, prompt=prompt, answer=str(row[fields.get("answer", "answer")]),
                   solution=get("solution"), system=get("system"), domain=spec.get("domain", "math"),
                   grader=spec.get("grader", "math"))


def read_jsonl(path: str, spec: dict, where: str) -> list[Problem]:
    """Problems from a JSON-lines file; `spec.fields` maps id/prompt/answer/solution/system to its keys."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{where}: {file} does not exist; set {where}.path to a JSON-lines file")
    problems = []
    with file.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{file}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{file}:{lineno}: not a JSON object")
            problems.append(from_row(row, spec, where, f"{file}:{lineno}", f"{file.stem}-{lineno}"))
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


def read_verl_parquet(path: str, where: str, spec: dict | None = None) -> list[Problem]:
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
    problems = [verl_row(row, spec or {}, f"{file}: row {i}", f"{file.stem}-{i}")
                for i, row in enumerate(df.to_dict("records"))]
    if not problems:
        raise ValueError(f"{file}: no problems in file")
    return problems


def verl_row(row: dict, spec: dict, at: str, default_id: str) -> Problem:
    """One problem from a row in verl's RL layout (a file's row or a hub dataset's)."""
    messages = _decoded(row["prompt"])
    system = None
    if isinstance(messages, list):
        users = [m for m in messages if m.get("role") == "user"]
        systems = [m for m in messages if m.get("role") == "system"]
        prompt, system = (users[-1]["content"] if users else None), (systems[0]["content"] if systems else None)
    else:
        prompt = messages
    reward = _decoded(row["reward_model"]) or {}
    answer = reward.get("ground_truth") if isinstance(reward, dict) else None
    if not prompt or answer in (None, ""):
        raise ValueError(f"{at}: no {'prompt (a user message)' if not prompt else 'reward_model.ground_truth'}")
    extra = _decoded(row.get("extra_info")) or {}
    extra = extra if isinstance(extra, dict) else {}
    pid = row.get("problem_id") or extra.get("index") or default_id
    return Problem(str(pid), str(prompt), str(answer), extra.get("solution"), domain=spec.get("domain", "math"),
                   grader=spec.get("grader", "math"), system=system)


def read_hf(spec: dict, where: str) -> list[Problem]:
    """Problems through Hugging Face `datasets`: a folder written by save_to_disk, a local data file
    (parquet, json/jsonl, csv) or a hub id (needs network, or the hub cache). `spec.fields` maps columns.

    A local parquet in verl's layout (chat `prompt` + `reward_model`) is read by read_verl_parquet, so one
    config (eval=math500, ...) takes either the hub copy or the paper's file.
    """
    import datasets

    path, split = str(spec["path"]), spec.get("split") or "train"
    local = Path(path).expanduser()
    if local.suffix == ".parquet" and local.is_file():
        import pyarrow.parquet as pq

        try:
            columns = set(pq.read_schema(local).names)
        except Exception as err:  # pyarrow raises several types for a file that is not parquet
            raise ValueError(f"{local}: not a parquet file ({str(err).splitlines()[0]})") from None
        if {"prompt", "reward_model"} <= columns:
            return read_verl_parquet(str(local), where, spec)
    if local.suffix == ".jsonl" and local.is_file():
        return read_jsonl(str(local), spec, where)
    try:
        if local.is_dir():
            ds = datasets.load_from_disk(str(local))
        elif local.is_file():
            builder = {".parquet": "parquet", ".json": "json", ".csv": "csv"}.get(local.suffix)
            if builder is None:
                raise ValueError(f"{where}.path={path}: unknown file type; use .parquet, .json, .jsonl or .csv")
            ds = datasets.load_dataset(builder, data_files=str(local), split="train")
        elif path.startswith((".", "/", "~")) or path.count("/") != 1:
            raise FileNotFoundError(f"{where}.path={path}: no such file or folder")
        else:
            ds = datasets.load_dataset(path, spec.get("subset"), split=split)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as err:  # offline, unknown id, missing split: datasets raises many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConnectionError(
            f"{where}.path={path}: cannot load this dataset ({first}); offline, save it on a machine with "
            f"network (datasets.load_dataset(...).save_to_disk(DIR)) and set {where}.path=DIR") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"{where}.split={split}: not in {path}; choose from {', '.join(ds)}")
        ds = ds[split]
    name = local.stem if local.exists() else path.replace("/", "_")
    verl = {"prompt", "reward_model"} <= set(ds.column_names)  # e.g. DAPO-Math-17k on the hub
    problems = [verl_row(row, spec, f"{path}: row {i}", f"{name}-{i}") if verl
                else from_row(row, spec, where, f"{path}: row {i}", f"{name}-{i}") for i, row in enumerate(ds)]
    if not problems:
        raise ValueError(f"{path}: no problems in this dataset")
    return problems


def read_reasoning_gym(spec: dict, where: str) -> list[Problem]:
    """Problems from a reasoning-gym generator (offline): question, answer, and the worked solution
    when the generator gives one (metadata answer_cot, as gsm_symbolic does)."""
    import reasoning_gym

    try:
        ds = reasoning_gym.create_dataset(spec["task"], size=spec["n"], seed=spec["seed"], **(spec.get("options") or {}))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{where}.task={spec['task']!r}: {err}") from None
    problems = []
    for i, entry in enumerate(ds):
        solution = entry.get("metadata", {}).get("answer_cot")
        if solution:  # gsm_symbolic ends its worked solutions with "#### 70": state it the way we grade
            solution = solution.rsplit("####", 1)[0].rstrip() + f"\n\\boxed{{{entry['answer']}}}"
        row = {"id": f"{spec['task']}-{spec['seed']}-{i}", "prompt": entry["question"], "answer": entry["answer"],
               "solution": solution}
        problems.append(from_row(row, {"fields": {"id": "id", "solution": "solution"}, **spec}, where,
                                 f"reasoning_gym {spec['task']}: entry {i}", row["id"]))
    return problems


def read_champ(spec: dict, where: str) -> list[Problem]:
    """The CHAMP competition problems (champ-dataset, offline): statement, answer, step-by-step solution."""
    import champ_dataset

    ds = champ_dataset.load(spec.get("version") or "v0")
    problems = []
    for pid, p in ds.problems.items():
        if spec.get("categories") and p.category not in spec["categories"]:
            continue
        solution = " ".join(step.text for step in p.solution.steps) + f"\n\\boxed{{{p.answer}}}"
        row = {"id": pid, "prompt": p.text, "answer": p.answer, "solution": solution}
        problems.append(from_row(row, {"fields": {"id": "id", "solution": "solution"}, **spec}, where,
                                 f"champ {pid}", pid))
    if not problems:
        raise ValueError(f"{where}.categories={spec.get('categories')}: no CHAMP problem in these categories")
    return problems


KINDS = ("arithmetic", "jsonl", "verl_parquet", "hf", "reasoning_gym", "champ", "world")


def load(spec: dict, where: str, name: str = "arith") -> list[Problem]:
    """Problems described by one config block at `where` (`data.source` or an `eval.suites` entry).

    `name` prefixes the ids of generated problems; `spec.limit` keeps the first n problems (quick runs).
    """
    kind = spec.get("kind")
    if kind == "arithmetic":
        problems = arithmetic(n=spec["n"], digits=spec["digits"], ops=tuple(spec["ops"]),
                              terms=spec.get("terms", 2), seed=spec["seed"], name=name)
    elif kind == "jsonl":
        problems = read_jsonl(spec["path"], spec, where)
    elif kind == "verl_parquet":
        problems = read_verl_parquet(spec["path"], where, spec)
    elif kind == "hf":
        problems = read_hf(spec, where)
    elif kind == "reasoning_gym":
        problems = read_reasoning_gym(spec, where)
    elif kind == "champ":
        problems = read_champ(spec, where)
    elif kind == "world":
        problems = world.generate(**{k: v for k, v in spec.items() if k not in ("kind", "limit")}, name=name)
    else:
        raise ValueError(f"{where}.kind={kind!r}: choose one of {', '.join(KINDS)}")
    if spec.get("limit") is not None:
        if spec["limit"] < 1:
            raise ValueError(f"{where}.limit={spec['limit']}: must be >= 1 (or null for all problems)")
        problems = problems[: spec["limit"]]
    return problems


def split_heldout(problems: list[Problem], n_heldout: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """(training pool, in-domain held-out problems), disjoint by problem id and deterministic in `seed`.

    Rows repeated in a file (the paper's seen_1x64 is one problem x 64) are held out or kept together.
    """
    first: dict[str, Problem] = {}
    for p in problems:
        first.setdefault(p.id, p)
    unique = list(first.values())
    if n_heldout < 0 or n_heldout >= len(unique):
        raise ValueError(f"data.heldout={n_heldout} leaves no training problems out of {len(unique)} distinct "
                         "ones; lower it (0 = no in-domain evaluation)")
    random.Random(f"heldout:{seed}").shuffle(unique)
    held = unique[:n_heldout]
    held_ids = {p.id for p in held}
    if len(unique) == len(problems):
        return unique[n_heldout:], held
    return [p for p in problems if p.id not in held_ids], held


VALIDATION = "validation"  # the eval set of the validation split: search trials are scored on it (ablate/search.py)


def split_validation(pool: list[Problem], n: int, coverage: dict) -> list[Problem]:
    """`n` problems of the training pool held out to score search trials: never an in-domain or out-of-domain
    evaluation problem (the pool has none), so tuning does not leak into what the report compares.

    They are the last `n` distinct problems in select_coverage's order (`coverage.seed`), and the pool is left as
    it is: a trial trains on exactly the problems of the grid cell with the same coverage. A coverage subset that
    reaches into them is refused."""
    if n == 0:
        return []
    order = list({p.id: p for p in _coverage_order(pool, coverage["seed"])}.values())
    if n < 0 or n >= len(order):
        raise ValueError(f"data.validation={n}: the training pool has {len(order)} distinct problems; hold out "
                         "fewer (0 = no validation split)")
    held = order[-n:]
    ids = {p.id for p in held}
    if any(p.id in ids for p in select_coverage(pool, coverage["unique"], coverage["copies"], coverage["seed"])):
        room = len(order) - n
        raise ValueError(f"coverage={coverage['name']} with data.validation={n}: the training problems would include "
                         f"validation ones; choose a coverage of at most {room} problems or a smaller data.validation")
    return held


def _coverage_order(pool: list[Problem], seed: int) -> list[Problem]:
    order = sorted(pool, key=lambda p: p.id)
    random.Random(f"coverage:{seed}").shuffle(order)
    return order


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
    order = _coverage_order(pool, seed)
    chosen = order if unique is None else order[:unique]
    if not chosen:
        raise ValueError("coverage selects no problems: the training pool is empty")
    return [p for p in chosen for _ in range(copies)]
