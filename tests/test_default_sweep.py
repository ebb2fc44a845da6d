"""The README's first command at a reduced size: `ablate build`, the default sweep (`-m grid=testbed`), the report."""

import os
import re
import sqlite3
import subprocess
import sys

from ablate import stats

# The testbed at toy size: a 1-layer model warm-started for 2 steps, one training step per cell, a few eval problems.
SMALL = ["model.build.hidden_size=16", "model.build.intermediate_size=32", "model.build.layers=1", "model.build.heads=2",
         "model.build.warmup_steps=2", "model.build.batch_size=4", "model.build.task.0.n=20", "model.build.task.1.n=5",
         "model.build.task.2.n=5", "model.max_new_tokens=16", "data.heldout=4", "eval.k=1", "eval.suites.long.n=3",
         "eval.suites.minus.n=3", "trainer.max_steps=1", "trainer.per_device_train_batch_size=4",
         "trainer.num_generations=4", "trainer.max_completion_length=16", "threads=1"]


def _run(tmp_path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ABLATE_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=900, env=env,
                          cwd=tmp_path)


def test_default_sweep_end_to_end(tmp_path):
    db = f"sqlite:///{tmp_path / 'ablate.sqlite'}"
    built = _run(tmp_path, "ablate", "build", f"db.url={db}", *SMALL)
    assert built.returncode == 0, built.stderr[-2000:]
    swept = _run(tmp_path, "ablate", "-m", "grid=testbed", f"db.url={db}", *SMALL)
    assert swept.returncode == 0, swept.stderr[-2000:]
    con = sqlite3.connect(tmp_path / "ablate.sqlite")
    runs = con.execute("select objective, richness, coverage, seed, status from runs where kind = 'cell'").fetchall()
    # 3 richness x 2 coverage x 2 objectives x 2 seeds = 24 cells; GRPO has no teacher: one run per coverage x seed
    assert len(runs) == 16 and {r[4] for r in runs} == {"completed"}
    assert sorted({r[1] for r in runs if r[0] == "grpo"}) == ["-"] and sum(r[0] == "grpo" for r in runs) == 4
    assert {(r[1], r[2], r[3]) for r in runs if r[0] == "sdpo"} == {
        (r, c, s) for r in ("none", "low", "high") for c in ("seen_8x8", "seen_512") for s in (0, 1)}
    assert len(re.findall(r"ablate: skip richness=- .*objective=grpo", swept.stdout)) == 8
    # every cell reused the build's evaluation of the starting model
    assert con.execute("select count(*) from evaluations where stage = 'base'").fetchone() == (1,)
    reported = _run(tmp_path, "ablate.report", "--db", db, "--out", str(tmp_path / "reports"))
    assert reported.returncode == 0, reported.stderr[-2000:]
    html = open(reported.stdout.strip().splitlines()[-1], encoding="utf-8").read()
    # GRPO's richness "-" pairs with GRPO only: 4 + 12 cells of the grid, none missing
    assert re.search(r"<span>16 cells .*?16 completed.*?0 missing", html, re.S)
    table = html[html.index('id="directions"'):]
    rows = re.findall(r"<tr>(.*?)</tr>", table[:table.index("</table>")], re.S)[1:]
    cells = [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)] for r in rows]
    # the directions for sdpo, each measured (whatever this toy model shows: a model that gets nothing right has no
    # variance, so "no error bar" is a fair answer; an interval wherever there is one)
    numbers = ("1", "2", "1c", "3", "4", "4b")
    assert [(c[0], c[1].split(")")[0] + ")") for c in cells] == [("sdpo", f"({d})") for d in numbers]
    assert all(c[-1] in stats.VERDICTS and c[-1] != "not measured" for c in cells), cells
    assert all(re.search(r"\[[-+]\d", c[3]) for c in cells if c[-1] != "no error bar"), cells  # estimate [low, high]
    assert "rest on 2 seeds" in html


def test_dose_sweep_lands_its_figure_in_the_report(tmp_path):
    db = f"sqlite:///{tmp_path / 'dose.sqlite'}"
    small = [o for o in SMALL if not o.startswith("eval.suites.")]
    small += [f"eval.suites.carry_{d}.n=3" for d in ("00", "33", "67", "100")]
    swept = _run(tmp_path, "ablate", "-m", "grid=dose", "seed=0,1", f"db.url={db}", *small)
    assert swept.returncode == 0, swept.stderr[-2000:]
    runs = sqlite3.connect(tmp_path / "dose.sqlite").execute(
        "select objective, coverage, status from runs where kind = 'cell'").fetchall()
    assert sorted(runs) == [("grpo", "seen_512", "completed")] * 2 + [("sdpo", "seen_512", "completed")] * 2
    reported = _run(tmp_path, "ablate.report", "--db", db, "--out", str(tmp_path / "reports"))
    assert reported.returncode == 0, reported.stderr[-2000:]
    path = reported.stdout.strip().splitlines()[-1]
    html = open(path, encoding="utf-8").read()
    assert 'id="fig-dose"' in html and 'id="dose"' in html
    table = html[html.index('id="dose"'):]
    rows = re.findall(r"<tr>(.*?)</tr>", table[:table.index("</table>")], re.S)[1:]
    sets = [re.sub(r"<[^>]+>", "", re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)[2]).strip() for r in rows]
    assert sets == ["carry_00", "carry_33", "carry_67", "carry_100", "trend"]
    assert os.path.isfile(path.replace(".html", "-dose.png"))
