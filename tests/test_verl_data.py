"""The verl parquet adapter on the paper's real files in ../shared/data (skipped when absent)."""

import pandas as pd
import pytest

from ablate.data import read_verl_parquet
from ablate.grading import is_correct
from tests.conftest import SHARED_DATA

VERL = SHARED_DATA / "verl-math"
FILES = sorted(VERL.glob("*/*.parquet")) if VERL.is_dir() else []
needs_data = pytest.mark.skipif(not FILES, reason="../shared/data/verl-math is not present")


@needs_data
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_file_loads_and_every_gold_answer_grades(path):
    problems = read_verl_parquet(str(path), "data.source")
    assert problems and all(p.prompt and p.answer for p in problems)
    for p in problems:
        assert is_correct(f"\\boxed{{{p.answer}}}", p.answer), (p.id, p.answer)
        assert not is_correct(f"\\boxed{{{p.answer}+1}}", p.answer), (p.id, p.answer)


@needs_data
def test_paper_subsets_are_nested():
    ids = {n: {p.id for p in read_verl_parquet(str(VERL / "section_6_2" / f"seen_{n}.parquet"), "x")}
           for n in ("64", "128", "512")}
    assert len(ids["64"]) == 64 and len(ids["512"]) == 512
    assert ids["64"] <= ids["128"] <= ids["512"]
    one = read_verl_parquet(str(VERL / "section_6_2" / "seen_1x64.parquet"), "x")
    assert len(one) == 64 and len({p.id for p in one}) == 1


@needs_data
def test_math500_carries_reference_solutions():
    problems = read_verl_parquet(str(VERL / "evaluation" / "math500.parquet"), "x")
    assert len(problems) == 500 and all("\\boxed" in p.solution for p in problems)


def test_bad_parquet_input_names_file_row_and_field(tmp_path):
    f = tmp_path / "bad.parquet"
    pd.DataFrame({"prompt": ["[]"], "answer": ["1"]}).to_parquet(f)
    with pytest.raises(ValueError, match="bad.parquet: missing column 'reward_model'"):
        read_verl_parquet(str(f), "data.source")
    pd.DataFrame({"prompt": ['[{"role": "user", "content": "1+1?"}]'] * 2,
                  "reward_model": ['{"ground_truth": "2"}', '{"style": "rule"}']}).to_parquet(f)
    with pytest.raises(ValueError, match="bad.parquet: row 1: no reward_model.ground_truth"):
        read_verl_parquet(str(f), "data.source")
    text = tmp_path / "text.parquet"
    text.write_text("not parquet")
    with pytest.raises(ValueError, match="text.parquet: not a parquet file"):
        read_verl_parquet(str(text), "data.source")


@needs_data
def test_coverage_drawn_from_a_paper_file_is_nested_and_deterministic():
    from ablate.data import select_coverage, split_heldout

    pool, held = split_heldout(read_verl_parquet(str(VERL / "section_6_2" / "seen_512.parquet"), "x"), 32, seed=0)
    draws = [{p.id for p in select_coverage(pool, n, 1, seed=0)} for n in (8, 64, 128, 256)]
    assert all(small < big for small, big in zip(draws, draws[1:]))
    assert draws[1] == {p.id for p in select_coverage(pool, 64, 1, seed=0)}
    assert not draws[-1] & {p.id for p in held}
