"""The off-policy hint probe: per-round records on the tiny model, band selection and chained hints."""

import json
import re
import sqlite3

import pytest

from ablate import data, evaluate, probe, query, report
from tests.conftest import make_cfg

K = 4


def _rows(db, sql):
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def test_probe_records_every_round_on_the_tiny_model(fast_cfg, tmp_path):
    cfg = fast_cfg("coverage=seen_8x8", "probe.k=2", "probe.solve_rate_min=0", "probe.solve_rate_max=1",
                   "probe.rounds=2", "richness=high", "richness.source=reference")
    assert probe.run(cfg) == "completed"
    db = tmp_path / "results.sqlite"
    (run_id, kind, objective, status, base), = _rows(db, "select id, kind, objective, status, base_evaluation_id "
                                                          "from runs")
    assert (kind, objective, status, base) == ("probe", "-", "completed", None)
    counts = dict(_rows(db, "select e.stage, count(*) from samples s join evaluations e on e.id = s.evaluation_id "
                            "where e.run_id = 1 group by e.stage"))
    # 8 distinct problems (seen_8x8), all in the band [0, 1], 2 samples each, in the screen and in every round
    assert counts == {"probe_screen": 16, "probe_round_0": 16, "probe_round_1": 16, "probe_round_2": 16}
    # metrics are computed from each round's own samples, and the views carry each round's stage
    for stage in counts:
        (acc, length), = _rows(db, f"select avg(correct), avg(length) from run_samples where stage = '{stage}'")
        got = dict(_rows(db, f"select metric, value from run_metrics where stage = '{stage}' and eval_set = 'probe'"))
        assert got["accuracy"] == pytest.approx(acc) and got["mean_length"] == pytest.approx(length)
        assert {"markers_per_response", "marker/wait", "pass_at_k"} <= set(got)
    settings = json.loads(_rows(db, "select settings from evaluations where stage = 'probe_round_1'")[0][0])
    assert len(settings["hints"]) == 8 and all(h == {"from": "reference"} for h in settings["hints"].values())
    # the same probe again is skipped (config hash)
    assert probe.run(cfg) == "skipped"
    # the query CLI reads the rounds; its trained/base pivot and the report (cells only) leave the probe out
    url = f"sqlite:///{db}"
    eng = query.reader(url)
    assert set(query.read(eng, "SELECT DISTINCT stage FROM run_metrics").stage) == set(counts)
    with pytest.raises(query.QueryError, match="no values for metric"):
        query.pivot(eng, "accuracy", "richness", "objective", "probe", "trained", {})
    assert report.load(eng, report.Selection()).runs.empty


def _answer(prompt: str) -> int:
    return eval(re.search(r"What is ([\d +-]+)\?", prompt).group(1))  # noqa: S307 (our own arithmetic prompts)


def _solved(prompt: str) -> int:
    """How many of the K unhinted samples the stub gets right: 0..K, read from the problem."""
    return _answer(prompt) % (K + 1)


def stub_generate(seen: list):
    """A generator whose correctness we control: unhinted, the last _solved() of each problem's K samples are
    right and say "wait"; hinted, every sample but the first is right, says no marker and names its depth."""

    def generate(model, tokenizer, prompts, **_):
        prompts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]  # chats: the user message
        seen.append(list(prompts))
        out = []
        for i, prompt in enumerate(prompts):
            idx, ans = i % K, _answer(prompt)
            if "Correct solution:" in prompt:
                depth = prompt.count("hinted ") + 1
                text = f"<think>hinted {depth}</think>\n\\boxed{{{ans if idx else ans + 1}}}"
            else:
                text = f"<think>wait</think>\n\\boxed{{{ans if idx >= K - _solved(prompt) else ans + 1}}}"
            out.append((text, len(text)))
        return out

    return generate


def test_band_selects_exactly_the_problems_solved_sometimes_and_rounds_chain(tmp_path, monkeypatch):
    seen = []  # the prompts of each generate() call: one call per stage (eval.batch_size=1000)
    monkeypatch.setattr(evaluate, "generate", stub_generate(seen))
    cfg = make_cfg("coverage=seen_64", f"probe.k={K}", "eval.batch_size=1000", "probe.solve_rate_min=0.25",
                   "probe.solve_rate_max=0.5", "probe.max_problems=null", "probe.rounds=2", "richness=high",
                   "richness.source=sibling",
                   tmp=tmp_path)
    assert probe.run(cfg) == "completed"
    pool, _ = data.split_heldout(data.load(cfg.data.source, "data.source", "arithmetic"), cfg.data.heldout,
                                 cfg.data.heldout_seed)
    candidates = data.select_coverage(pool, 64, 1, 0)
    expected = [p.id for p in candidates if _solved(p.prompt) in (1, 2)]  # 1/4 and 2/4: both bounds included
    assert 0 < len(expected) < len(candidates)
    db = tmp_path / "results.sqlite"
    stages = dict(_rows(db, "select stage, settings from evaluations"))
    screen = json.loads(stages["probe_screen"])
    assert screen["selected"] == expected
    assert {pid for (pid,) in _rows(db, "select distinct problem_id from run_samples where stage = 'probe_round_0'")} \
        == set(expected)
    # round 1 hints with the first correct screening sample, round 2 with round 1's first correct one
    first = json.loads(stages["probe_round_1"])["hints"]
    by_id = {p.id: p for p in candidates}
    assert first == {pid: {"from": "probe_screen", "sample_idx": K - _solved(by_id[pid].prompt)} for pid in expected}
    assert json.loads(stages["probe_round_2"])["hints"] == {pid: {"from": "probe_round_1", "sample_idx": 1}
                                                              for pid in expected}
    round2 = _rows(db, "select completion from run_samples where stage = 'probe_round_2'")
    assert round2 and all("hinted 2" in c for (c,) in round2)  # conditioned on round 1's response
    assert all("Correct solution:" in p for p in seen[2]) and not any("Correct solution:" in p for p in seen[1])
    metrics = {(stage, name): v for stage, name, v in _rows(
        db, "select stage, metric, value from run_metrics where metric in ('accuracy', 'markers_per_response')")}
    assert metrics[("probe_round_0", "markers_per_response")] == 1.0
    assert metrics[("probe_round_1", "markers_per_response")] == 0.0
    assert metrics[("probe_round_1", "accuracy")] == pytest.approx((K - 1) / K)


@pytest.mark.parametrize("overrides, message", [
    (["probe.solve_rate_min=0.9", "probe.solve_rate_max=0.1"], "need 0 <= min <= max <= 1"),
    (["probe.solve_rate_min=0.3", "probe.solve_rate_max=0.3"], "no problem among 8 has a solve rate in [0.3, 0.3]"),
])
def test_bad_settings_fail_with_one_line(overrides, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluate, "generate", stub_generate([]))
    cfg = make_cfg("coverage=seen_8x8", f"probe.k={K}", *overrides, tmp=tmp_path)
    assert probe.run(cfg) == "failed"
    assert message in capsys.readouterr().err
    assert _rows(tmp_path / "results.sqlite", "select count(*) from evaluations")[0][0] == 0
