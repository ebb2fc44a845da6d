"""Metrics are declared once (ablate/metrics.py): aggregation by hand, and a metric added there reaches the stored
aggregates, the run summary and `ablate query` without touching another file (the report: tests/test_report.py)."""

import pytest

from ablate import cell, metrics, query, record


def _sample(pid, correct, length, markers, idx=0):
    return {"problem_id": pid, "sample_idx": idx, "completion": "x", "answer": "1", "correct": correct,
            "exact_match": correct, "length": length, "markers": markers, "marker_counts": {"wait": markers}}


SAMPLES = [_sample("a", True, 10, 1), _sample("a", False, 30, 3, 1), _sample("b", False, 20, 0), _sample("b", False, 40, 0, 1)]


def test_aggregate_by_hand():
    got = {r["name"]: r["value"] for r in metrics.aggregate(SAMPLES, "in_domain")}
    assert got["accuracy"] == 0.25  # problems a (0.5) and b (0.0)
    assert got["accuracy_stderr"] == pytest.approx(0.25)  # std of (0.5, 0) = 0.3536, / sqrt(2)
    assert got["pass_at_k"] == 0.5 and got["exact_match"] == 0.25
    assert got["mean_length"] == 25.0 and got["markers_per_response"] == 1.0
    assert got["markers_per_1k_tokens"] == pytest.approx(1000 * 4 / 100)
    assert (got["n_problems"], got["n_samples"], got["marker/wait"]) == (2, 4, 1.0)


def test_a_metric_added_once_reaches_summary_and_query(tmp_path, monkeypatch):
    extra = metrics.Metric("long_share", "long answers", 2, False, "length", score=lambda s: float(s["length"] > 25),
                           summary=True)
    monkeypatch.setattr(metrics, "METRICS", [*metrics.METRICS, extra])
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    record.upgrade(url)
    eng = record.engine(url)
    axes = {"richness": "high", "coverage": "seen_64", "model": "tiny", "objective": "sdpo"}
    run_id = record.start_run(eng, sweep="s", config={"seed": 0}, seed=0, axes=axes)
    base = [dict(s, eval_set="in_domain") for s in SAMPLES]
    trained = [dict(s, eval_set="in_domain", length=5) for s in SAMPLES]
    base_id = record.save_evaluation(eng, stage="base", key="k", samples=base, settings={}, seconds=0.0,
                                     metrics=metrics.aggregate(base, "in_domain"))
    record.finish_run(eng, run_id, base_evaluation_id=base_id, train_steps=[],
                      trained={"samples": trained, "metrics": metrics.aggregate(trained, "in_domain"),
                               "settings": {}, "seconds": 0.0})
    text = cell.summary(eng, run_id)
    assert "long answers" in text and "0.50 -> 0.00" in text  # 2 of 4 long, then none
    delta = query.pivot(query.reader(url), "long_share", "richness", "coverage", "in_domain", "delta", {})
    assert delta.loc["high", "seen_64"] == pytest.approx(-0.5)
