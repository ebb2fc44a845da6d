"""`ablate build`: the starting model's build is a recorded run, and cells reuse its evaluation."""

import sqlite3

from ablate import build, cell
from tests.conftest import alternating_reward


def test_build_is_recorded_and_its_evaluation_reused(fast_cfg, tmp_path, capsys):
    cfg = fast_cfg("model.build.warmup_steps=4", "+model.build.sft={logging_steps: 1}")
    assert build.run(cfg) == "completed"
    db = sqlite3.connect(tmp_path / "results.sqlite")
    (run_id, kind, objective, richness, status, base_id), = db.execute(
        "select id, kind, objective, richness, status, base_evaluation_id from runs").fetchall()
    assert (kind, objective, richness, status) == ("build", "-", "-", "completed") and base_id is not None
    losses = db.execute("select step, value from train_steps where run_id = ? and name = 'build/loss' order by step",
                        (run_id,)).fetchall()
    assert [s for s, _ in losses] == [1, 2, 3, 4] and all(v > 0 for _, v in losses)
    assert build.run(cfg) == "skipped"  # the same build config is recorded once
    assert cell.run(fast_cfg("model.build.warmup_steps=4", "+model.build.sft={logging_steps: 1}", "objective=grpo"),
                    reward_funcs=[alternating_reward]) == "completed"
    bases = db.execute("select count(*) from evaluations where stage = 'base'").fetchone()[0]
    assert bases == 1  # the cell reused the build's evaluation of the starting model
    assert "model ready in" in capsys.readouterr().out
