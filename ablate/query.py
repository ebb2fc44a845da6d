"""Ask the results database questions: `python -m ablate.query ...` or `ablate query ...`.

    ablate query sweeps
    ablate query runs richness=high status=completed
    ablate query pivot accuracy --rows richness --cols coverage --eval-set arith3 model=tiny
    ablate query sql "SELECT richness, avg(value) FROM run_metrics WHERE metric = 'accuracy' GROUP BY 1"
    ablate query export out/ --format parquet objective=sdpo
"""

import argparse
import os
import re
import sqlite3
import sys
from pathlib import Path

import pandas as pd
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from ablate import metrics, record

FILTERS = ("sweep", "kind", "richness", "coverage", "model", "objective", "seed", "status")
DEFAULT_DB = record.DEFAULT_URL


class QueryError(ValueError):
    pass


def reader(url: str) -> Engine:
    """A read-only engine on an existing ablate database at the current schema."""
    path = record.sqlite_path(url)
    if url.startswith("sqlite"):
        if path is None or not path.is_file():
            raise QueryError(f"{url}: no such database file; pass --db (default {DEFAULT_DB}, or $ABLATE_DB)")
        eng = create_engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true", connect_args={"timeout": 30})
        pragma = "PRAGMA query_only=ON"
    else:
        try:
            eng = create_engine(url, pool_pre_ping=True)
        except (ArgumentError, NoSuchModuleError, ImportError) as err:
            raise QueryError(f"--db {url}: SQLAlchemy cannot open it ({str(err).strip().splitlines()[0]}); use a URL "
                             f"such as {DEFAULT_DB} or postgresql+psycopg://USER@HOST/DB") from None
        pragma = "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"

    @event.listens_for(eng, "connect")
    def _read_only(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute(pragma)
        cur.close()
        if url.startswith("sqlite"):
            dbapi_conn.set_authorizer(_no_attach)
        else:
            dbapi_conn.commit()

    current = record.revision(eng, url)
    shown = eng.url.render_as_string(hide_password=True) if path is None else url
    if current is None:
        raise QueryError(f"{shown}: not an ablate database (no runs table)")
    if current != record.HEAD:
        raise QueryError(f"{shown}: schema {current}, queries need {record.HEAD}: run `ablate db upgrade --db URL`"
                         if current < record.HEAD else f"{shown}: schema {current} is newer than this ablate; upgrade ablate")
    return eng


def _no_attach(action: int, *_) -> int:
    """SQLite authorizer: deny ATTACH, which creates the file it names (so does VACUUM INTO, which attaches)."""
    return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_ATTACH else sqlite3.SQLITE_OK


def parse_filters(items: list[str]) -> dict[str, str]:
    """key=value filters on run columns; an unknown key is an error that lists the known ones."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in FILTERS:
            raise QueryError(f"unknown filter {item!r}: use key=value with key one of {', '.join(FILTERS)}")
        out[key] = value
    return out


def _where(filters: dict[str, str], alias: str = "") -> tuple[str, dict]:
    clauses, params = [], {}
    for i, (key, value) in enumerate(filters.items()):
        values = value.split(",")
        names = [f"f{i}_{j}" for j in range(len(values))]
        clauses.append(f"{alias}{key} IN ({', '.join(':' + n for n in names)})")
        params.update({n: int(v) if key == "seed" else v for n, v in zip(names, values)})
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


_PLURAL = {"richness": "richness levels", "coverage": "coverage levels", "status": "statuses"}
_SHOWN = 20  # existing values listed in an error


def _values(key: str, values) -> str:
    return f"{key} " + " or ".join(map(repr, values))


def _started(since, until) -> str:
    return " and ".join([*([f"on or after {since:%Y-%m-%d %H:%M}"] if since else []),
                         *([f"before {until:%Y-%m-%d %H:%M}"] if until else [])])


def _existing(runs: pd.DataFrame, key: str) -> str:
    """What `runs` hold for a filter key: its values, or the span of start times."""
    if key == "started":
        when = pd.to_datetime(runs.started_at).dropna()
        return f"started {when.min():%Y-%m-%d %H:%M} to {when.max():%Y-%m-%d %H:%M}" if len(when) else "no start times"
    values = sorted(map(str, runs[key].dropna().unique()))
    more = f" ... ({len(values)} in all)" if len(values) > _SHOWN else ""
    return f"{_PLURAL.get(key, key + 's')}: {', '.join(values[:_SHOWN]) or 'none'}{more}"


def no_match(eng: Engine, label: str, filters: dict[str, list], since=None, until=None,
             kinds: tuple[str, ...] | None = None) -> str | None:
    """None when some run of `kinds` (all when None) matches `filters` (key -> accepted values) and the start range
    [since, until); else one line saying which filter emptied the selection and what the database holds instead."""
    run = record.Run.__table__
    with eng.connect() as conn:
        result = conn.execute(select(*(run.c[k] for k in FILTERS), run.c.started_at))
        runs = pd.DataFrame(list(map(tuple, result)), columns=list(result.keys()))
    if runs.empty:
        return f"no runs in {label}; run a sweep first"
    if kinds is not None:
        others = runs
        runs = runs[runs.kind.isin(kinds)]
        if runs.empty:
            return f"no {'/'.join(kinds)} runs in {label} ({_existing(others, 'kind')}); run a sweep first"
    tests = [(key, _values(key, values), runs[key].astype(str).isin([str(v) for v in values]))
             for key, values in filters.items() if values]
    if since or until:  # last: the filters before it are said as "with ..."
        when = pd.to_datetime(runs.started_at)
        tests.append(("started", _started(since, until),
                      (when >= since if since else True) & (when < until if until else True)))
    phrase = {key: "started " + what if key == "started" else "with " + what for key, what, _ in tests}
    alone = [(phrase[key], ("runs " if key == "started" else "") + _existing(runs, key))
             for key, _, mask in tests if not mask.any()]
    if len(alone) == 1:
        return f"no runs {alone[0][0]}; {alone[0][1]}"
    if alone:
        return "no runs " + " nor ".join(f"{what} ({held})" for what, held in alone)
    kept, context = pd.Series(True, index=runs.index), []
    for key, what, mask in tests:  # each matches alone: the first that empties the ones before it
        if not (kept & mask).any():
            held = ("they " if key == "started" else "their ") + _existing(runs[kept], key)
            return f"no runs {phrase[key]} among those with {', '.join(context)}; {held}"
        kept &= mask
        context.append(what)
    return None


def read(eng: Engine, sql: str, params: dict | None = None) -> pd.DataFrame:
    with eng.connect() as conn:
        return pd.read_sql(text(sql), conn, params=params or {})


def runs(eng: Engine, filters: dict[str, str]) -> pd.DataFrame:
    where, params = _where(filters)
    return read(eng, "SELECT id, sweep, kind, richness, coverage, model, objective, seed, status, config_hash, "
                     f"git_commit, started_at, ended_at FROM runs{where} ORDER BY id", params)


def sweeps(eng: Engine) -> pd.DataFrame:
    df = read(eng, "SELECT sweep, status, count(*) AS n, min(started_at) AS first, max(started_at) AS last "
                   "FROM runs GROUP BY sweep, status")
    if df.empty:
        return df
    table = df.pivot_table(index="sweep", columns="status", values="n", aggfunc="sum", fill_value=0)
    spans = df.groupby("sweep").agg(first=("first", "min"), last=("last", "max"))
    return table.join(spans).reset_index()


def pivot(eng: Engine, metric: str, rows: str, cols: str, eval_set: str, stage: str,
          filters: dict[str, str]) -> pd.DataFrame:
    """Mean of `metric` over completed runs, `rows` x `cols`; stage trained, base, or delta (trained - base)."""
    for axis in (rows, cols):
        if axis not in FILTERS:
            raise QueryError(f"--rows/--cols {axis!r}: choose from {', '.join(FILTERS)}")
    if stage not in ("trained", "base", "delta"):
        raise QueryError(f"--stage {stage!r}: choose trained, base or delta")
    where, params = _where({**filters, "status": filters.get("status", "completed")})
    params.update(metric=metric, eval_set=eval_set)
    df = read(eng, f"SELECT run_id, {rows} AS r, {cols} AS c, stage, value FROM run_metrics{where} "
                   "AND metric = :metric AND eval_set = :eval_set AND stage IN ('base', 'trained')", params)
    if df.empty:
        known = read(eng, "SELECT DISTINCT metric, eval_set FROM run_metrics")
        raise QueryError(f"no values for metric={metric!r} eval set={eval_set!r}; metrics: "
                         f"{', '.join(sorted(known.metric.unique()))}; eval sets: {', '.join(sorted(known.eval_set.unique()))}")
    wide = df.pivot_table(index=["run_id", "r", "c"], columns="stage", values="value").reset_index()
    wide["value"] = wide["trained"] - wide["base"] if stage == "delta" else wide[stage]
    return wide.pivot_table(index="r", columns="c", values="value", aggfunc="mean").rename_axis(
        index=rows, columns=cols)


# PostgreSQL's READ ONLY transactions still run COPY ... TO 'file' and DO blocks, which can write files on the
# server: there, one statement that reads is all that is sent. (SQLite's authorizer refuses ATTACH: see reader.)
_READS = re.compile(r"\s*\(*\s*(select|with|values|table|explain|show)\b", re.I)


def sql(eng: Engine, query: str) -> pd.DataFrame:
    """A read-only SQL query; the connection refuses writes (SQLite query_only, Postgres READ ONLY)."""
    if eng.dialect.name != "sqlite" and (not _READS.match(query) or ";" in query.strip().rstrip(";")):
        raise QueryError("read-only: send one SELECT, WITH, VALUES, TABLE, EXPLAIN or SHOW statement "
                         "(COPY and DO could write files on the server)")
    try:
        with eng.connect() as conn:
            result = conn.execute(text(query))
            if not result.returns_rows:
                raise QueryError("read-only: the statement returns no rows; use SELECT")
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    except DBAPIError as err:
        msg = str(err.orig).strip().splitlines()[0]
        if "readonly" in msg or "read-only" in msg or "read only" in msg:
            raise QueryError(f"read-only: this command never writes ({msg})") from None
        if "not authorized" in msg or "authorization denied" in msg:
            raise QueryError(f"read-only: ATTACH and VACUUM INTO would create files ({msg})") from None
        raise QueryError(f"SQL error: {msg}") from None


def export(eng: Engine, out: Path, fmt: str, filters: dict[str, str]) -> list[Path]:
    """runs, metrics, samples and train_steps of the selected runs, as CSV or Parquet files in `out`."""
    if fmt not in ("csv", "parquet"):
        raise QueryError(f"--format {fmt!r}: choose csv or parquet")
    out.mkdir(parents=True, exist_ok=True)
    where, params = _where(filters)
    tables = {
        "runs": f"SELECT * FROM runs{where} ORDER BY id",
        "metrics": f"SELECT * FROM run_metrics{where} ORDER BY run_id",
        "samples": f"SELECT * FROM run_samples{where} ORDER BY run_id",
        "train_steps": f"SELECT * FROM run_steps{where} ORDER BY run_id, step",
    }
    written = []
    for name, query in tables.items():
        df = read(eng, query, params)
        for col in df.columns:  # JSON columns come back as text on SQLite and dicts on Postgres
            if df[col].map(lambda v: isinstance(v, (dict, list))).any():
                df[col] = df[col].map(lambda v: v if isinstance(v, str) or v is None else __import__("json").dumps(v))
        path = out / f"{name}.{fmt}"
        df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path, index=False)
        written.append(path)
    return written


def _label(url: str) -> str:
    """The database for a message, its password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _show(df: pd.DataFrame) -> None:
    with pd.option_context("display.max_rows", 200, "display.max_columns", 30, "display.width", 200):
        print(df.to_string(index=False) if df.index.name is None and df.columns.name is None else df.round(4))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ablate query", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=os.environ.get("ABLATE_DB", DEFAULT_DB),
                        help=f"SQLAlchemy URL of the results database (default $ABLATE_DB or {DEFAULT_DB})")
    # --db also after the subcommand (`ablate query sql "..." --db URL`); SUPPRESS: a subcommand that is not
    # given one keeps the --db given before it
    db_after = argparse.ArgumentParser(add_help=False)
    db_after.add_argument("--db", default=argparse.SUPPRESS, help="as --db before the subcommand")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sweeps", parents=[db_after], help="list sweeps with run counts by status")
    p = sub.add_parser("runs", parents=[db_after], help="list runs; filters key=value (comma for several values)")
    p.add_argument("filters", nargs="*", metavar="KEY=VALUE", help=f"keys: {', '.join(FILTERS)}")
    p = sub.add_parser("pivot", parents=[db_after], help="mean of a metric over completed runs, rows x cols")
    p.add_argument("metric", help=f"{', '.join(metrics.names())} (ablate/metrics.py), marker/WORD, or any stored name")
    p.add_argument("--rows", default="richness")
    p.add_argument("--cols", default="coverage")
    p.add_argument("--eval-set", default="in_domain", help="in_domain or an eval.suites name")
    p.add_argument("--stage", default="trained", help="trained, base, or delta (trained - base)")
    p.add_argument("filters", nargs="*", metavar="KEY=VALUE")
    p = sub.add_parser("sql", parents=[db_after],
                       help="run a read-only SQL query (views: run_metrics, run_samples, run_steps)")
    p.add_argument("query")
    p = sub.add_parser("export", parents=[db_after],
                       help="write runs, metrics, samples, train_steps as CSV or Parquet")
    p.add_argument("out", type=Path)
    p.add_argument("--format", default="csv")
    p.add_argument("filters", nargs="*", metavar="KEY=VALUE")
    # filters may come before or after options: argparse leaves the later ones unparsed
    args, extra = parser.parse_known_args(argv)
    try:
        filters = parse_filters([*getattr(args, "filters", []), *extra])
        eng = reader(args.db)
        if args.command in ("runs", "pivot", "export"):  # an empty selection is an error, before anything is written
            chosen = {key: value.split(",") for key, value in filters.items()}
            if args.command == "pivot":
                chosen.setdefault("status", ["completed"])  # pivot averages completed runs only
            problem = no_match(eng, _label(args.db), chosen)
            if problem:
                raise QueryError(problem)
        if args.command == "sweeps":
            _show(sweeps(eng))
        elif args.command == "runs":
            _show(runs(eng, filters))
        elif args.command == "pivot":
            _show(pivot(eng, args.metric, args.rows, args.cols, args.eval_set, args.stage, filters))
        elif args.command == "sql":
            _show(sql(eng, args.query))
        else:
            for path in export(eng, args.out, args.format, filters):
                print(path)
    except (QueryError, record.SchemaError) as err:
        print(f"ablate query: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
