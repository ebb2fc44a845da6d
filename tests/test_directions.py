"""The directions check: hand-made cells with known differences get the verdicts the fixed rule gives."""


import pandas as pd
import pytest

from ablate import directions


def _config(context_source, content, unique):
    return {"objective": {"context_source": context_source}, "richness": {"content": content},
            "coverage": {"unique": unique}}


RICHNESS = {"none": "none", "low": "answer", "high": "solution"}


def _runs(seeds=(0, 1, 2)):
    runs, rid = [], 0
    for seed in seeds:
        for coverage, unique in (("narrow", 8), ("broad", None)):
            for richness, content in RICHNESS.items():
                rid += 1
                runs.append({"run_id": rid, "model": "m", "objective": "sdpo", "richness": richness,
                             "coverage": coverage, "seed": seed, "config": _config("sibling", content, unique)})
            rid += 1
            runs.append({"run_id": rid, "model": "m", "objective": "grpo", "richness": "none", "coverage": coverage,
                         "seed": seed, "config": _config(None, "none", unique)})
    return pd.DataFrame(runs)


def _rows(runs, markers, length, correct, noise=0.01, markers_b=2.0):
    """20 problems per run and eval set; value functions of the run give each unit's mean, plus noise that varies
    with the problem and the run (so that seeds disagree a little)."""
    out = []
    for r in runs.itertuples():
        for eval_set in ("in_domain", "ood"):
            for i in range(20):
                e = noise * ((i * 7 + r.run_id * 3) % 5 - 2)
                out.append({"run_id": r.run_id, "eval_set": eval_set, "problem_id": str(i),
                            "markers": markers(r) + e, "length": length(r) + e, "correct": correct(r, eval_set) + e,
                            "correct_b": 0.5, "markers_b": markers_b + noise * ((i * 3) % 5 - 2)})
    return pd.DataFrame(out)


def test_a_sweep_built_to_show_all_four_directions_gets_holds():
    runs = _runs()
    rows = _rows(runs, markers=lambda r: {"none": 2.0, "low": 1.5, "high": 1.0}[r.richness],
                 length=lambda r: {"none": 80, "low": 70, "high": 60}[r.richness],
                 correct=lambda r, s: 0.7 if (r.coverage, s) == ("narrow", "in_domain") else
                 (0.3 if r.objective == "sdpo" else 0.5))
    found = directions.check(rows, runs).set_index("direction")
    assert list(found.index) == ["1", "2", "1c", "3", "4", "4b"]
    # the control: richness none keeps the starting model's 2.0 markers
    assert found.loc["1c", "estimate"] == pytest.approx(0.0, abs=0.01) and found.loc["1c", "verdict"] == "equivalent"
    assert list(found.verdict[["1", "2", "3", "4"]]) == ["holds"] * 4, found[["comparison", "estimate", "se", "verdict"]]
    assert found.loc["1", "estimate"] == pytest.approx(-1.0, abs=0.01)  # high (1.0) - none (2.0)
    assert found.loc["2", "estimate"] == pytest.approx(-20.0, abs=0.01)
    assert found.loc["3", "estimate"] == pytest.approx(0.2, abs=0.01)   # 0.7 trained - 0.5 starting model, narrow
    assert found.loc["4", "estimate"] == pytest.approx(-0.2, abs=0.01)  # sdpo 0.3 - grpo 0.5 at broad coverage, OOD
    assert "coverage=broad" in found.loc["4", "comparison"]
    # sdpo - grpo is -0.2 at both coverages: the interaction is 0, and within the accuracy margin
    assert found.loc["4b", "estimate"] == pytest.approx(0.0, abs=0.01) and found.loc["4b", "verdict"] == "equivalent"
    assert (found.seeds == 3).all() and (found.family == 6).all()
    assert set(found.loc["1", "per_seed"]) == {0, 1, 2}
    assert (found.low < found.estimate).all() and (found.estimate < found.high).all()
    assert (found.p_holm >= found.p).all()


def test_the_interaction_row_is_the_coverage_difference_of_the_gap():
    runs = _runs()
    # sdpo loses 0.2 to grpo at broad coverage and nothing at narrow: the interaction is -0.2
    rows = _rows(runs, markers=lambda r: 1.0, length=lambda r: 50,
                 correct=lambda r, s: 0.3 if (r.objective, r.coverage) == ("sdpo", "broad") else 0.5)
    found = directions.check(rows, runs).set_index("direction")
    assert found.loc["4b", "estimate"] == pytest.approx(-0.2, abs=0.01) and found.loc["4b", "verdict"] == "holds"


def test_a_control_that_moves_differs():
    runs = _runs()
    rows = _rows(runs, markers=lambda r: 1.0, length=lambda r: 50, correct=lambda r, s: 0.5, markers_b=2.0)
    found = directions.check(rows, runs).set_index("direction")
    assert found.loc["1c", "estimate"] == pytest.approx(-1.0, abs=0.01) and found.loc["1c", "verdict"] == "differs"


def test_one_seed_gives_no_error_bar_never_holds():
    runs = _runs(seeds=(0,))
    rows = _rows(runs, markers=lambda r: {"none": 2.0, "low": 1.5, "high": 1.0}[r.richness], length=lambda r: 50,
                 correct=lambda r, s: 0.5)
    found = directions.check(rows, runs).set_index("direction")
    assert found.loc["1", "estimate"] == pytest.approx(-1.0, abs=0.01)
    assert set(found.verdict) == {"no error bar"}


def test_flat_and_reversed_results_are_reported_as_measured():
    runs = _runs()
    rows = _rows(runs, markers=lambda r: 1.0, length=lambda r: {"none": 60, "low": 70, "high": 80}[r.richness],
                 correct=lambda r, s: 0.5, noise=0.2)
    found = directions.check(rows, runs).set_index("direction")
    assert found.loc["1", "verdict"] in ("equivalent", "inconclusive")
    assert found.loc["2", "verdict"] == "opposite"
    assert found.loc["3", "verdict"] in ("equivalent", "inconclusive")
    assert found.loc["4", "verdict"] in ("equivalent", "inconclusive")


def test_missing_axes_are_not_measured():
    runs = _runs()
    runs = runs[(runs.coverage == "narrow") & (runs.objective == "sdpo") & (runs.richness != "none")]
    rows = _rows(runs, lambda r: 1.0, lambda r: 50, lambda r, s: 0.5)
    found = directions.check(rows, runs)
    assert list(found.verdict) == ["not measured"] * 5  # (no richness=none: no control row either)
    assert directions.check(pd.DataFrame(), pd.DataFrame()).empty


def _dose_runs():
    runs, rid = [], 0
    suites = {f"carry_{int(100 * c)}": {"kind": "world", "carry": c} for c in (0.0, 0.5, 1.0)}
    for objective, source, richness, content in (("sdpo", "sibling", "high", "solution"), ("grpo", None, "-", "none")):
        for seed in range(3):
            rid += 1
            cfg = {**_config(source, content, None), "eval": {"suites": suites}}
            runs.append({"run_id": rid, "model": "m", "objective": objective, "richness": richness,
                         "coverage": "broad", "seed": seed, "config": cfg})
    return pd.DataFrame(runs)


def test_dose_gives_direction_4_per_knob_level_and_a_trend():
    runs = _dose_runs()
    out = []
    for r in runs.itertuples():
        for carry in (0.0, 0.5, 1.0):
            for i in range(40):  # sdpo loses more the more hard moves an OOD problem has; grpo stays at 0.6
                drop = 0.3 * carry if r.objective == "sdpo" else 0.0
                out.append({"run_id": r.run_id, "eval_set": f"carry_{int(100 * carry)}", "problem_id": str(i),
                            "correct": 0.6 - drop + 0.02 * ((i * 7 + r.run_id * 3) % 5 - 2), "length": 10,
                            "markers": 1, "correct_b": 0.6})
        out.append({"run_id": r.run_id, "eval_set": "in_domain", "problem_id": "0", "correct": 1.0, "length": 1,
                    "markers": 0, "correct_b": 0.5})  # no knob: not on the curve
    found = directions.dose(pd.DataFrame(out), runs)
    points = found[found.eval_set != "trend"]
    assert list(points.knob) == [0.0, 0.5, 1.0] and set(points.baseline) == {"grpo"}
    assert points.estimate.tolist() == pytest.approx([0.0, -0.15, -0.3], abs=0.01)
    assert list(points.verdict) == ["equivalent", "holds", "holds"]
    trend = found[found.eval_set == "trend"].iloc[0]
    assert trend.estimate == pytest.approx(-0.3, abs=0.01) and trend.verdict == "holds"
    assert set(trend.per_seed) == {0, 1, 2} and all(v == pytest.approx(-0.3, abs=0.02) for v in trend.per_seed.values())
    assert directions.dose(pd.DataFrame(out), runs, knob="no_such_knob").empty
