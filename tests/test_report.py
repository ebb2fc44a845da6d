"""The HTML report: aggregation against hand-computed values, escaping, empty/partial/failed grids, the CLI,
and a headless-Chromium rendering check."""

import base64
import io
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from sqlalchemy import text as sql_text

from ablate import metrics, record, report, stats
from ablate.query import reader
from ablate.report import figures

SCRIPT = "<script>alert(1)</script>"
ERROR = "ValueError: <script>boom</script> in cell\nTraceback (most recent call last):\n  secret frame"
MARKERS = {"eval": {"markers": {"words": ["wait", "check"], "mode": "substring"}}}
CONTENT, UNIQUE = {"low": "answer", "high": "solution"}, {"seen_8x8": 8, "seen_64": 64}  # the levels' order


def _samples(spec: dict) -> list[dict]:
    """{eval_set: {problem: [(correct, length, markers), ...]}} -> sample rows."""
    rows = []
    for eval_set, problems in spec.items():
        for problem, samples in problems.items():
            for i, (correct, length, markers) in enumerate(samples):
                text = f"Let me check {problem}: wait, {i}" if markers else f"{problem} = {i}"
                rows.append({"eval_set": eval_set, "problem_id": problem, "sample_idx": i, "completion": text,
                             "answer": "1", "correct": bool(correct), "exact_match": bool(correct), "length": length,
                             "markers": markers, "marker_counts": {"wait": markers, "check": 0}})
    return rows


def _words(wait_in: float, wait_ood: float) -> list[dict]:
    """marker/wait per eval set; in_domain has 4 samples and ood1 2 (the pooling weights)."""
    return [{"eval_set": "in_domain", "name": "marker/wait", "value": wait_in},
            {"eval_set": "in_domain", "name": "n_samples", "value": 4.0},
            {"eval_set": "ood1", "name": "marker/wait", "value": wait_ood},
            {"eval_set": "ood1", "name": "n_samples", "value": 2.0}]


# The starting model. in_domain: p1 correct 1,0 (lengths 10, 20; markers 1, 3), p2 0,0 (30, 40; 0, 2).
BASE = {"in_domain": {"p1": [(1, 10, 1), (0, 20, 3)], "p2": [(0, 30, 0), (0, 40, 2)]},
        "ood1": {"a1": [(1, 10, 0)], "a2": [(0, 10, 0)]}, "ood2": {"b1": [(0, 10, 0)], "b2": [(0, 10, 0)]}}
# high x seen_64, seeds 0 and 1.
HIGH = [{"in_domain": {"p1": [(1, 10, 0), (1, 10, 0)], "p2": [(1, 20, 1), (0, 20, 1)]},
         "ood1": {"a1": [(1, 10, 0)], "a2": [(1, 10, 0)]}, "ood2": {"b1": [(0, 10, 0)], "b2": [(1, 10, 0)]}},
        {"in_domain": {"p1": [(1, 10, 1), (0, 30, 1)], "p2": [(0, 20, 0), (0, 20, 0)]},
         "ood1": {"a1": [(1, 10, 0)], "a2": [(0, 10, 0)]}, "ood2": {"b1": [(0, 10, 0)], "b2": [(0, 10, 0)]}}]


def fill(url: str, sweep: str = "sw", acc_shift: int = 0) -> None:
    """A partial 2 x 2 x 2-seed grid of tiny x sdpo: high x seen_64 seeds 0, 1 and low x seen_64 seed 0 and
    low x seen_8x8 seed 0 completed; low x seen_64 seed 1 failed; high x seen_8x8 never ran."""
    record.upgrade(url)
    eng = record.engine(url)
    base = record.save_evaluation(eng, stage="base", key=f"tiny-{sweep}", samples=_samples(BASE), settings={},
                                  seconds=0.0, metrics=_words(1.0, 0.4))
    cells = [("high", "seen_64", 0, HIGH[0]), ("high", "seen_64", 1, HIGH[1]), ("low", "seen_64", 0, BASE),
             ("low", "seen_8x8", 0, BASE)]
    for richness, coverage, seed, spec in cells:
        config = {**MARKERS, "seed": seed, "richness": {"name": richness, "content": CONTENT[richness]},
                  "coverage": {"name": coverage, "unique": UNIQUE[coverage]},
                  "note": SCRIPT if seed == 1 else "plain", "db": {"url": "postgresql://user:hunter2@host/db"}}
        run = record.start_run(eng, sweep=sweep, config=config, seed=seed,
                               axes={"richness": richness, "coverage": coverage, "model": "tiny", "objective": "sdpo"})
        samples = _samples(spec)
        if acc_shift and richness == "high":
            samples = [{**s, "correct": True} for s in samples]
        if richness == "high" and seed == 0:
            samples[0]["completion"] = f"{SCRIPT} wait, let me check"
        steps = [{"step": t, "name": n, "value": v * t} for t in (1, 2, 3)
                 for n, v in (("rollout/reward", 0.1), ("rollout/mean_length", 10.0),
                              ("rollout/markers_per_response", 0.5), ("loss", 1.0))]
        record.finish_run(eng, run, base_evaluation_id=base, train_steps=steps,
                          trained={"samples": samples, "settings": {}, "seconds": 0.0,
                                   "metrics": _words(0.25 if seed == 0 else 0.75, 0.0)})
    failed = record.start_run(eng, sweep=sweep, config={**MARKERS, "seed": 1}, seed=1,
                              axes={"richness": "low", "coverage": "seen_64", "model": "tiny", "objective": "sdpo"})
    record.end_run(eng, failed, "failed", ERROR)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The filled database and one report built from it: (url, html path, html text)."""
    tmp = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{tmp / 'grid.sqlite'}"
    fill(url)
    path = report.build(reader(url), tmp / "reports", report.Selection(), url)
    return url, path, path.read_text()


def _stat(stats: pd.DataFrame, scope: str, metric: str, stage: str, **cell) -> pd.Series:
    rows = stats[(stats.scope == scope) & (stats.metric == metric) & (stats.stage == stage)]
    for key, value in cell.items():
        rows = rows[rows[key] == value]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_cell_statistics_match_hand_computed_values(db_url, tmp_path):
    fill(db_url)
    sel = report.Selection()
    a = report.analyse(_with_units(reader(db_url), sel), sel)
    high = {"richness": "high", "coverage": "seen_64"}
    # accuracy units (seed x problem) [[1, .5], [.5, 0]]: mean .5, residuals [[.5, 0], [0, -.5]]. Cluster-robust
    # (ablate.stats): seeds 2/1 * (.5^2 + .5^2) / 16 = 1/16; problems the same less the pairs' 4/3 * .5 / 16 = 1/24
    acc = _stat(a.cells, "in_domain", "accuracy", "trained", **high)
    assert (acc["mean"], acc.se, acc.n, acc.runs) == pytest.approx((0.5, (1 / 16 + 1 / 48) ** 0.5, 4, 2))
    # 2 seeds and 2 problems: both shares on 1 df, t = 12.706
    assert (acc.low, acc.high) == pytest.approx((0.5 - 12.7062 * (1 / 12) ** 0.5, 0.5 + 12.7062 * (1 / 12) ** 0.5),
                                                rel=1e-4)
    # paired change [[.5, .5], [0, 0]]: mean .25; seeds 2 * (.5^2 + .5^2) / 16 = 1/16, problems 0 (less the pairs:
    # nothing)
    d = _stat(a.cells, "in_domain", "accuracy", "delta", **high)
    assert (d["mean"], d.se) == pytest.approx((0.25, 0.25))
    # length units 10, 20, 20, 20 vs base 15, 35 -> 17.5 and change (-5 - 15 + 5 - 15) / 4
    assert _stat(a.cells, "in_domain", "mean_length", "trained", **high)["mean"] == pytest.approx(17.5)
    assert _stat(a.cells, "in_domain", "mean_length", "delta", **high)["mean"] == pytest.approx(-7.5)
    assert _stat(a.cells, "in_domain", "markers_per_response", "delta", **high)["mean"] == pytest.approx(-1.0)
    # per 1k tokens: 1000 * mean(markers) / mean(length) = 1000 * .5 / 17.5; se of the linearised units
    rate = _stat(a.cells, "in_domain", "markers_per_1k_tokens", "trained", **high)
    z = [1000 * (m - 0.5 / 17.5 * n) / 17.5 for m, n in ((0, 10), (1, 20), (1, 20), (0, 20))]
    assert (rate["mean"], rate.se) == pytest.approx((1000 * 0.5 / 17.5, stats.clustered(z, [0, 0, 1, 1],
                                                                                         [1, 2, 1, 2]).se))
    rate_d = _stat(a.cells, "in_domain", "markers_per_1k_tokens", "delta", **high)
    assert rate_d["mean"] == pytest.approx(1000 * 0.5 / 17.5 - 1000 * 1.5 / 25)
    # ood1 units [[1, 1], [1, 0]]: .75; seeds 1/16, problems 1/16 less pairs 4/3 * .75 / 16 = 1/16 -> se .25
    assert _stat(a.cells, "ood1", "accuracy", "trained", **high)[["mean", "se"]].tolist() == pytest.approx([0.75, 0.25])
    # out-of-domain sets pooled, each problem once: seed 0 a1 a2 b1 b2 = 1 1 0 1, seed 1 = 1 0 0 0
    ood = _stat(a.cells, "ood_mean", "accuracy", "trained", **high)
    pooled = stats.clustered([1, 1, 0, 1, 1, 0, 0, 0], [0] * 4 + [1] * 4, [1, 2, 3, 4] * 2)
    assert (ood["mean"], ood.se, ood.n) == pytest.approx((0.5, pooled.se, 8))
    # the starting model's one evaluation, each problem once: p1 .5, p2 0 -> .25 ± .25 (problems the only units)
    base = _stat(a.base, "in_domain", "accuracy", "base")
    assert (base["mean"], base.se, base.n) == pytest.approx((0.25, 0.25, 2))
    # one seed: no error bar (the seed-level error cannot be estimated)
    low = _stat(a.cells, "in_domain", "accuracy", "trained", richness="low", coverage="seen_64")
    assert low["mean"] == pytest.approx(0.25) and low.runs == 1 and pd.isna(low.se) and pd.isna(low.low)
    # marker words pooled over eval sets by samples: base (4 * 1 + 2 * .4) / 6; high: seeds (4/6) * .25, (4/6) * .75
    words = a.words.set_index(["richness", "word"]).value
    assert words[("base", "wait")] == pytest.approx(0.8)
    assert words[("high", "wait")] == pytest.approx((0.25 + 0.75) / 2 * 4 / 6)
    # the whole report on this backend too (subqueries, window function, date filter)
    html = report.build(reader(db_url), tmp_path, report.Selection(since=datetime(2000, 1, 1)), "db").read_text()
    half = 12.7062 * (1 / 12) ** 0.5
    assert f"0.500 [{0.5 - half:.3f}, {0.5 + half:.3f}]" in html, html
    assert "Δ +0.250 [" in html and "<mark>wait</mark>" in html


def _with_units(eng, sel):  # the second loading step (see build)
    data = report.load(eng, sel)
    data.units = report.load_units(eng, sel)
    return data


def test_report_escapes_model_text_config_and_errors(grid):
    _, _, html = grid
    assert "<script" not in html.lower()  # the page has no script at all: every occurrence is escaped text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; <mark>wait</mark>, let me <mark>check</mark>" in html  # completion
    assert "&lt;script&gt;alert(1)&lt;/script&gt; (1)" in html.split("Settings that vary")[1]  # a config value
    assert "hunter2" not in html  # db.* (a URL with a password) is never shown
    assert "ValueError: &lt;script&gt;boom&lt;/script&gt; in cell" in html  # the error's first line only
    assert "secret frame" not in html and "Traceback" not in html


def test_partial_grid_and_failed_cells_are_reported(grid):
    _, path, html = grid
    text = re.sub(r"<[^>]+>", " ", html)
    text = re.sub(r"\s+", " ", text)
    assert "8 cells" in text and "4 completed" in text and "1 failed" in text and "4 missing" in text
    assert "3 never run" in text
    missing = html.split("Missing cells")[1].split("</details>")[0]
    assert missing.count("<tr>") == 1 + 4 and "seen_8x8" in missing  # header + 4 rows
    failed = html.split('id="failed"')[1].split("</table>")[0]
    assert failed.count("<tr>") == 2 and "failed" in failed and "low" in failed
    assert "2 not run" in text  # the high x seen_8x8 cell of each table
    assert "1 failed" in html.split('id="results"')[1]  # low x seen_64: one seed completed, one failed
    for name in ("frontier", "markers_ood", "curves", "richness", "marker_words"):
        assert (path.parent / f"{path.stem}-{name}.png").stat().st_size > 1000
        assert (path.parent / f"{path.stem}-{name}.svg").read_text().lstrip().startswith("<?xml")


def _refused(argv: list[str], out: Path, capsys) -> str:
    """main() exits 2 with one line on stderr and writes nothing: the line."""
    assert report.main([*argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ablate report: ") and not captured.out, captured
    assert not out.exists()  # no folder, no HTML, no figures
    return err[0].removeprefix("ablate report: ")


def test_empty_database_is_an_error(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    record.upgrade(url)
    assert _refused(["--db", url], tmp_path / "out", capsys) == f"no runs in {url}; run a sweep first"
    eng = record.engine(url)  # only a model build: no grid cell to report
    record.end_run(eng, record.start_run(eng, sweep="b", config={}, seed=0, kind="build",
                                         axes={"richness": "none", "coverage": "none", "model": "tiny",
                                               "objective": "none"}), "completed")
    assert _refused(["--db", url], tmp_path / "out", capsys) == f"no cell runs in {url} (kinds: build); run a sweep first"


def test_a_selection_that_matches_nothing_says_what_exists(tmp_path, capsys):
    """Each filter that matches no run alone is named with the values the database holds; filters that match only
    apart name the one that emptied the selection. Nothing is written, the database is left as it was."""
    path = tmp_path / "db.sqlite"
    url = f"sqlite:///{path}"
    fill(url, "A")
    eng = record.engine(url)
    record.end_run(eng, record.start_run(eng, sweep="C", config={"seed": 0}, seed=0,
                                         axes={"richness": "low", "coverage": "seen_64", "model": "testbed",
                                               "objective": "grpo"}), "failed", "x")
    eng.dispose()
    before = path.read_bytes()
    cases = [(["--model", "nosuch"], "no runs with model 'nosuch'; models: testbed, tiny"),
             (["--objective", "nope,none"], "no runs with objective 'nope' or 'none'; objectives: grpo, sdpo"),
             (["--sweep", "multirun/2026-01-01/00-00-00"],
              "no runs with sweep 'multirun/2026-01-01/00-00-00'; sweeps: A, C"),
             (["--compare", "X", "Y"], "no runs with sweep 'X' or 'Y'; sweeps: A, C"),
             (["--since", "2999-01-01"], "no runs started on or after 2999-01-01 00:00; runs started 20"),
             (["--since", "2000-01-01", "--until", "2000-01-31"],
              "no runs started on or after 2000-01-01 00:00 and before 2000-02-01 00:00; runs started 20"),
             (["--sweep", "nope", "--model", "nosuch"],
              "no runs with sweep 'nope' (sweeps: A, C) nor with model 'nosuch' (models: testbed, tiny)"),
             (["--sweep", "A", "--model", "testbed"],
              "no runs with model 'testbed' among those with sweep 'A'; their models: tiny"),
             (["--sweep", "C", "--model", "testbed", "--objective", "sdpo"],
              "no runs with objective 'sdpo' among those with sweep 'C', model 'testbed'; their objectives: grpo"),
             (["--model", "tiny", "--until", "2000-01-01"],
              "no runs started before 2000-01-02 00:00; runs started 20")]
    for argv, message in cases:
        line = _refused(["--db", url, *argv], tmp_path / "out", capsys)
        assert line.startswith(message), (argv, line)
    assert path.read_bytes() == before
    with record.engine(url).connect() as conn:
        assert conn.execute(sql_text("SELECT count(*) FROM runs")).scalar() == 6


def test_cli_filters_compare_and_errors(tmp_path, capsys, monkeypatch):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    fill(url, "A")
    fill(url, "B", acc_shift=1)  # in sweep B every high sample is correct
    out = str(tmp_path / "out")
    monkeypatch.setattr(figures, "FIGURE_PANELS", 1)  # two panels (one per sweep): the figures show one
    assert report.main(["--db", url, "--out", out, "--compare", "A", "B"]) == 0
    html = Path(capsys.readouterr().out.strip()).read_text()
    assert "Comparison: B − A" in html and "<h3>A · tiny · sdpo</h3>" in html and "<h3>B · tiny · sdpo</h3>" in html
    assert "show the first\n1 of 2; the tables below show all" in html
    sel = report.Selection(sweeps=["A", "B"], compare=("A", "B"))
    a = report.analyse(_with_units(reader(url), sel), sel)
    diff = a.compared.set_index(["richness", "coverage", "scope", "metric"])["mean"]
    assert diff[("high", "seen_64", "in_domain", "accuracy")] == pytest.approx(1.0 - 0.5)
    assert diff[("low", "seen_64", "in_domain", "accuracy")] == pytest.approx(0.0)
    # date filters: --until takes a whole day
    assert report._date("2026-01-02", end=True) == datetime(2026, 1, 3)
    cases = [(["--db", f"sqlite:///{tmp_path / 'missing.sqlite'}"], "no such database file"),
             (["--db", url, "--until", "2000-01-01"], "no runs started before 2000-01-02 00:00"),
             (["--db", url, "--compare", "A", "nope"], "--compare: no selected runs in sweep 'nope'; sweeps: A, B")]
    for argv, message in cases:
        assert report.main([*argv, "--out", out]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "missing.sqlite").exists()


def test_a_metric_added_to_the_registry_gets_its_table(tmp_path, monkeypatch):
    """A metric stored only as a per-evaluation aggregate (no column of samples) is reported per cell: mean over
    runs with its interval over runs, and its change from the starting model."""
    long_share = metrics.Metric("long_share", "share over 5 tokens", 3, None, "length",
                                score=lambda s: float(s["length"] > 5))
    monkeypatch.setattr(metrics, "METRICS", [*metrics.METRICS, long_share])
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    record.upgrade(url)
    eng = record.engine(url)
    samples = _samples({"in_domain": {"p1": [(1, 4, 0), (0, 8, 0)]}})  # long share .5
    base = record.save_evaluation(eng, stage="base", key="tiny", samples=samples, settings={}, seconds=0.0,
                                  metrics=metrics.aggregate(samples, "in_domain"))
    for seed, lengths in enumerate([(6, 7), (2, 9)]):  # long shares 1 and .5: .75 ± .25, change .25 ± .25
        samples = _samples({"in_domain": {"p1": [(1, n, 0) for n in lengths]}})
        run = record.start_run(eng, sweep="sw", config={"seed": seed}, seed=seed,
                               axes={"richness": "high", "coverage": "seen_64", "model": "tiny", "objective": "sdpo"})
        record.finish_run(eng, run, base_evaluation_id=base, train_steps=[],
                          trained={"samples": samples, "settings": {}, "seconds": 0.0,
                                   "metrics": metrics.aggregate(samples, "in_domain")})
    html = report.build(reader(url), tmp_path / "out", report.Selection(), url).read_text()
    table = html.split("<h4>share over 5 tokens, all eval sets</h4>")[1].split("</table>")[0]
    # runs are the units: se .25 over 2 seeds, t(1) = 12.706 -> half-width 3.177
    assert "0.750 [-2.427, 3.927]" in table and "Δ +0.250 [-2.927, +3.427]" in table and "n=2 · 2 seeds" in table
    assert "starting model: 0.500 (n=1)" in html


def test_both_commands_exit_alike(tmp_path):
    """`python -m ablate.report` and `ablate report` run the same main() and exit with its status."""
    missing = f"sqlite:///{tmp_path / 'missing.sqlite'}"
    for command in (["-m", "ablate.report"], ["-m", "ablate", "report"]):
        done = subprocess.run([sys.executable, *command, "--db", missing, "--out", str(tmp_path)], capture_output=True,
                              text=True, timeout=300, check=False)
        assert done.returncode == 2 and "ablate report: " in done.stderr and "no such database file" in done.stderr


def test_highlight_escapes_and_marks():
    assert report.highlight("Wait <b>checking</b>", ["wait", "check"]) == \
        "<mark>Wait</mark> &lt;b&gt;<mark>check</mark>ing&lt;/b&gt;"
    assert report.highlight("checking, check.", ["check"], mode="word") == "checking, <mark>check</mark>."
    assert report.highlight("<i>", []) == "&lt;i&gt;"


def _chromium(*args, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={tmp}", "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, timeout=90, check=False)


def _not_blank(img: Image.Image) -> bool:
    low, high = img.convert("L").getextrema()
    return high - low > 50


def test_report_renders_in_headless_chromium(grid, tmp_path):
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    _, path, html = grid
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing fetched: opens offline
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 6  # every figure the sweep has data for, "Do the seeds agree?" included
    for data in images:
        assert _not_blank(Image.open(io.BytesIO(base64.b64decode(data))))
    shot = tmp_path / "shot.png"
    run = _chromium(f"--screenshot={shot}", "--window-size=1280,2000", path.as_uri(), tmp=tmp_path / "profile1")
    assert shot.is_file(), run.stderr[-2000:]
    assert _not_blank(Image.open(shot))
    dom = _chromium("--dump-dom", path.as_uri(), tmp=tmp_path / "profile2")
    for log in (run.stderr, dom.stderr):
        assert not re.search(r"Uncaught|CONSOLE\(", log), log[-2000:]
    assert dom.stdout.count("<table") >= 10 and "<mark>wait</mark>" in dom.stdout
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom.stdout and "<script>alert" not in dom.stdout
    assert dom.stdout.count("<img") == len(images)
    shutil.rmtree(tmp_path / "profile1", ignore_errors=True)
