"""Every data source gives the same Problem record: Hugging Face datasets, reasoning-gym, champ, multiple
choice (letter grading), limits and repeated rows."""

import json

import pytest

from ablate import data
from ablate.grading import choice_letter, exact_match, is_correct, reward
from tests.conftest import SHARED_DATA

FIELDS = {"id": "uid", "prompt": "question", "answer": "gold", "solution": "sol", "system": None}


def _rows():
    return [{"uid": f"q{i}", "question": f"What is {i} + 1?", "gold": str(i + 1), "sol": f"{i} + 1 = {i + 1}"}
            for i in range(5)]


def test_hf_reads_saved_folders_and_local_files(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"test": Dataset.from_list(_rows())}).save_to_disk(tmp_path / "saved")
    spec = {"kind": "hf", "path": str(tmp_path / "saved"), "split": "test", "fields": FIELDS,
            "instruction": "Put your final answer within \\boxed{}."}
    problems = data.load(spec, "eval.suites.x")
    assert [p.id for p in problems] == [f"q{i}" for i in range(5)]
    assert problems[2].answer == "3" and problems[2].solution == "2 + 1 = 3"
    assert problems[0].prompt == "What is 0 + 1?\n\nPut your final answer within \\boxed{}."
    with pytest.raises(ValueError, match="eval.suites.x.split=train: not in .*choose from test"):
        data.load({**spec, "split": "train"}, "eval.suites.x")
    Dataset.from_list(_rows()).to_parquet(tmp_path / "plain.parquet")  # not verl's layout: read by fields
    assert data.load({**spec, "path": str(tmp_path / "plain.parquet")}, "x")[4].answer == "5"
    (tmp_path / "rows.json").write_text(json.dumps(_rows()))
    assert len(data.load({**spec, "path": str(tmp_path / "rows.json"), "limit": 2}, "x")) == 2


def test_hf_names_the_missing_column_and_row(tmp_path):
    from datasets import Dataset

    rows = _rows()
    rows[3]["gold"] = None
    Dataset.from_list(rows).save_to_disk(tmp_path / "saved")
    spec = {"kind": "hf", "path": str(tmp_path / "saved"), "fields": FIELDS}
    with pytest.raises(ValueError, match=r"saved: row 3: missing column 'gold' \(the answer\); set data.source"):
        data.load(spec, "data.source")


def test_hub_id_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match=r"eval.suites.math500.path=nobody/no-such-set: cannot load.*save_to_disk"):
        data.load({"kind": "hf", "path": "nobody/no-such-set", "split": "test", "fields": FIELDS},
                  "eval.suites.math500")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        data.load({"kind": "hf", "path": "/no/such/dir", "fields": FIELDS}, "data.source")


def test_reasoning_gym_problems_are_graded_by_their_own_answers():
    spec = {"kind": "reasoning_gym", "task": "gsm_symbolic", "n": 8, "seed": 3, "options": {},
            "instruction": "Put your final answer within \\boxed{}."}
    problems = data.load(spec, "data.source")
    assert problems == data.load(spec, "data.source") and len(problems) == 8
    assert problems != data.load({**spec, "seed": 4}, "data.source")
    for p in problems:  # the worked solution is a valid reference: it ends with the boxed gold answer
        assert p.prompt.endswith("\\boxed{}.") and is_correct(p.solution, p.answer), p.id
        assert "####" not in p.solution
    with pytest.raises(ValueError, match="data.source.task='no_such_task'"):
        data.load({**spec, "task": "no_such_task"}, "data.source")


def test_champ_loads_offline_with_solutions():
    problems = data.load({"kind": "champ", "version": "v0", "categories": None}, "data.source")
    assert len(problems) == 270 and len({p.id for p in problems}) == 270
    assert all(p.solution and p.solution.endswith(f"\\boxed{{{p.answer}}}") for p in problems)
    combinatorics = data.load({"kind": "champ", "categories": ["Combinatorics"]}, "data.source")
    assert len(combinatorics) == 40 and all(p.id.startswith("P_Combinatorics") for p in combinatorics)
    with pytest.raises(ValueError, match="no CHAMP problem"):
        data.load({"kind": "champ", "categories": ["Poetry"]}, "data.source")


@pytest.mark.parametrize("text,letter", [
    ("<reasoning>B looks off</reasoning>\n<answer>\nC\n</answer>", "C"),
    ("<answer>(d)</answer>", "D"),
    ("so \\boxed{A}", "A"),
    ("The answer is (B).", "B"),
    ("<think>maybe <answer>A</answer></think><answer>B</answer>", "B"),
    ("no letter stated", None),
    ("<answer>2249.700</answer>", None),
])
def test_choice_letter(text, letter):
    assert choice_letter(text) == letter


def test_choice_grading_in_reward_and_evaluation():
    assert is_correct("<answer>C</answer>", "C", "choice") and not is_correct("<answer>A</answer>", "C", "choice")
    assert exact_match("<answer>c</answer>", "C", "choice")
    assert reward(["<answer>C</answer>", "\\boxed{3}"], answer=["C", "3"], grader=["choice", "math"]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="grader='letters'"):
        is_correct("x", "C", "letters")


def test_heldout_keeps_repeated_rows_together():
    one = data.Problem("only", "1+1?", "2")
    rows = [one] * 6 + [data.Problem(f"p{i}", f"{i}?", str(i)) for i in range(4)]
    pool, held = data.split_heldout(rows, 2, seed=0)
    assert not {p.id for p in pool} & {p.id for p in held}
    assert len(pool) + len(held) == len(rows) - (5 if "only" in {p.id for p in held} else 0)
    assert data.split_heldout(rows, 0, seed=0) == (rows, [])


SCI = SHARED_DATA / "sciknoweval-chemistry"


@pytest.mark.skipif(not SCI.is_dir(), reason="../shared/data/sciknoweval-chemistry is not present")
@pytest.mark.parametrize("split", ["train", "test"])
def test_sciknoweval_loads_and_grades_by_letter(split):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["data=sciknoweval", f"data.source.path={SCI / f'{split}.jsonl'}"])
    spec = OmegaConf.to_container(cfg.data.source, resolve=True)
    problems = data.load(spec, "data.source")
    assert len(problems) == {"train": 1890, "test": 210}[split]
    for p in problems:
        assert p.grader == "choice" and p.domain == "chemistry" and "<answer>" in p.system
        assert p.messages()[0]["role"] == "system"
        assert is_correct(f"<reasoning>...</reasoning>\n<answer>\n{p.answer}\n</answer>", p.answer, p.grader)
        wrong = "ABCD"[("ABCD".index(p.answer) + 1) % 4]
        assert not is_correct(f"<answer>{wrong}</answer>", p.answer, p.grader)
