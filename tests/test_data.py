import json

import pytest

from ablate.data import arithmetic, load, read_jsonl, select_coverage, split_heldout
from ablate.grading import is_correct

FIELDS = {"id": "id", "prompt": "prompt", "answer": "answer", "solution": "solution"}


def test_arithmetic_is_deterministic_and_solved():
    a, b = arithmetic(50, seed=3), arithmetic(50, seed=3)
    assert a == b and a != arithmetic(50, seed=4)
    assert len({p.prompt for p in a}) == 50
    for p in a + arithmetic(20, digits=3, ops=("+",), terms=3, seed=1):
        assert eval(p.prompt.split("What is ")[1].split("?")[0]) == int(p.answer)
        assert is_correct(p.solution, p.answer)


def test_coverage_subsets_are_nested_and_deterministic():
    pool, _ = split_heldout(arithmetic(700), 32, seed=0)
    sizes = [1, 8, 64, 128, 512]
    subsets = [select_coverage(pool, n, 1, seed=0) for n in sizes]
    for small, big in zip(subsets, subsets[1:]):
        assert {p.id for p in small} <= {p.id for p in big}
    assert select_coverage(pool, 64, 1, seed=0) == subsets[2]
    assert select_coverage(pool, 64, 1, seed=1) != subsets[2]
    x8 = select_coverage(pool, 8, 8, seed=0)
    assert len(x8) == 64 and len({p.id for p in x8}) == 8
    assert len(select_coverage(pool, None, 1, seed=0)) == len(pool)


def test_heldout_is_disjoint():
    pool, held = split_heldout(arithmetic(100), 10, seed=0)
    assert len(held) == 10 and not {p.id for p in pool} & {p.id for p in held}


def test_coverage_errors_name_the_fix():
    pool = arithmetic(20)
    with pytest.raises(ValueError, match="coverage.unique=64 but the training pool has only 20"):
        select_coverage(pool, 64, 1, 0)
    with pytest.raises(ValueError, match="training pool is empty"):
        select_coverage([], None, 1, 0)


def test_jsonl_loads_and_reports_missing_columns(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"id": "a", "prompt": "1+1?", "answer": "2"}) + "\n")
    assert read_jsonl(str(f), {"fields": FIELDS}, "data.source")[0].answer == "2"
    f.write_text(json.dumps({"id": "a", "question": "1+1?", "answer": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"train.jsonl:1: missing column 'prompt'.*data.source.fields.prompt"):
        read_jsonl(str(f), {"fields": FIELDS}, "data.source")
    f.write_text("{not json\n")
    with pytest.raises(ValueError, match="train.jsonl:1: not valid JSON"):
        read_jsonl(str(f), {"fields": FIELDS}, "data.source")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load({"kind": "jsonl", "path": str(tmp_path / "none.jsonl"), "fields": FIELDS}, "data.source")


def test_warm_start_never_sees_evaluation_problems():
    from ablate.models import warmup_problems

    build = {"task": [{"kind": "arithmetic", "n": 60, "digits": 1, "ops": ["+"], "terms": 2, "seed": 100}]}
    everything = {p.prompt for p in warmup_problems(build, frozenset())}
    held = frozenset(p.prompt for p in arithmetic(20, digits=1, ops=("+",), seed=0))
    assert everything & held  # the one-digit space is small: the draws overlap...
    assert not {p.prompt for p in warmup_problems(build, held)} & held  # ...and the overlap is removed
