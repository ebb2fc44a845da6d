"""An HTML report of the results database: `python -m ablate.report` (or `ablate report`).

    python -m ablate.report                                  # every run in $ABLATE_DB or db/ablate.sqlite
    python -m ablate.report --sweep multirun/2026-11-22/02-15-45 --model tiny --out reports/
    python -m ablate.report --objective sdpo,grpo --since 2026-11-01 --until 2026-11-30
    python -m ablate.report --compare SWEEP_A SWEEP_B        # adds B - A per cell

Writes one self-contained HTML file into --out (figures inline as PNG, no scripts, nothing fetched) and each
figure beside it as PNG and SVG, and prints the HTML file's path.

load.py (the SQL) -> analysis.py (pandas) -> figures.py (matplotlib) and html.py (Jinja2, templates/).
"""

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError

from ablate import record
from ablate.query import QueryError, no_match, reader
from ablate.report.analysis import analyse, analyse_runs, browser_cells, with_samples
from ablate.report.html import highlight, render
from ablate.report.load import Selection, load, load_examples, load_units, sweeps
from ablate.report.search import section as search_section

__all__ = ["Selection", "analyse", "build", "highlight", "load", "load_examples", "load_units", "main"]


def _studies(db_url: str) -> list[str]:
    from ablate import search

    try:
        return search.studies(search.storage_url(db_url))
    except search.SearchError:
        return []


def _stem(out: Path) -> str:
    stem = first = "report-" + datetime.now().strftime("%Y%m%d-%H%M%S")
    n = 1
    while (out / f"{stem}.html").exists():
        n += 1
        stem = f"{first}-{n}"
    return stem


def build(eng: Engine, out: Path, sel: Selection, db_label: str = "", db_url: str | None = None) -> Path:
    """Write the report for `sel` into `out`; returns the HTML file's path. With `db_url`, a search section covers
    the hyperparameter studies beside that database (ablate/report/search.py). A selection without runs raises
    QueryError saying which filter emptied it, and nothing is written."""
    # The samples' GROUP BY runs in the database, without the GIL: meanwhile this thread loads the rest and
    # draws the figures that need no samples (matplotlib's import included).
    with ThreadPoolExecutor(1) as pool:
        units = pool.submit(load_units, eng, sel)
        data = load(eng, sel)
        search_only = data.runs.empty and db_url and sel.describe() == "all runs" and _studies(db_url)
        if data.runs.empty and not search_only:  # before anything is written; a search alone has its section
            raise QueryError(no_match(eng, db_label or "the database", {"sweep": sel.sweeps, "model": sel.models,
                                      "objective": sel.objectives}, sel.since, sel.until, kinds=("cell",))
                             or f"no runs match {sel.describe()}")
        absent = [s for s in sel.compare or () if s not in set(data.runs.sweep)]
        if absent:
            raise QueryError(f"--compare: no selected runs in sweep {', '.join(map(repr, absent))}; sweeps: "
                             f"{', '.join(sweeps(eng)) or 'none'}")
        from ablate.report import figures  # matplotlib's import (~1 s) overlaps the GROUP BY too

        out.mkdir(parents=True, exist_ok=True)
        stem, a = _stem(out), analyse_runs(data, sel)
        made = figures.draw(a, out, stem, [p for p in figures.FIGURES if not p.samples])
        data.units = units.result()
    a = with_samples(a, data)
    made |= figures.draw(a, out, stem, [p for p in figures.FIGURES if p.samples])
    shown, base_ids = browser_cells(a, data.trained)
    ids = [*shown.get("trained_eval", []), *base_ids.values()]
    examples = load_examples(eng, ids) if ids else pd.DataFrame(columns=["evaluation_id", "eval_set"])
    figs = [made[p.name] for p in figures.FIGURES if p.name in made]
    path = out / f"{stem}.html"
    search = search_section(eng, db_url, out, stem) if db_url else None
    path.write_text(render(a, figs, figures.FIGURE_PANELS, examples, shown, base_ids, db_label, search),
                    encoding="utf-8")
    return path


def _date(value: str, end: bool = False) -> datetime:
    """A date or date-time; as an end (--until), a bare date includes its whole day."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    return when + timedelta(days=1) if end and len(value.strip()) == 10 else when


def _list(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    """The command line (`python -m ablate.report` and `ablate report` both exit with its status)."""
    parser = argparse.ArgumentParser(prog="ablate report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=os.environ.get("ABLATE_DB", record.DEFAULT_URL),
                        help=f"SQLAlchemy URL of the results database (default $ABLATE_DB or {record.DEFAULT_URL})")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for the report (default reports/)")
    parser.add_argument("--sweep", type=_list, default=[], help="only these sweeps (comma-separated)")
    parser.add_argument("--model", type=_list, default=[], help="only these models (comma-separated)")
    parser.add_argument("--objective", type=_list, default=[], help="only these objectives (comma-separated)")
    parser.add_argument("--since", type=_date, help="only runs started on or after DATE (YYYY-MM-DD[THH:MM])")
    parser.add_argument("--until", type=lambda v: _date(v, end=True),
                        help="only runs started up to DATE (a bare date includes that day)")
    parser.add_argument("--compare", nargs=2, metavar=("SWEEP_A", "SWEEP_B"),
                        help="report the two sweeps side by side and their difference B - A per cell "
                             "(replaces --sweep)")
    args = parser.parse_args(argv)
    sel = Selection(sweeps=list(args.compare) if args.compare else args.sweep, models=args.model,
                    objectives=args.objective, since=args.since, until=args.until,
                    compare=tuple(args.compare) if args.compare else None)
    try:
        url = make_url(args.db)
        label, password = url.render_as_string(hide_password=True), url.password
    except ArgumentError:
        label, password = args.db, None
    try:
        eng = reader(args.db)
        try:
            path = build(eng, args.out, sel, label, args.db)
        finally:
            eng.dispose()  # close connections properly (a server sees a clean logout)
    except (QueryError, record.SchemaError) as err:
        message = str(err).replace(str(password), "***") if password else str(err)
        print(f"ablate report: {message}", file=sys.stderr)
        return 2
    print(path)
    return 0
