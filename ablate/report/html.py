"""The page: plain data rendered by templates/report.html.j2 with autoescaping on. Escaping lives there, and in
the `highlight` filter, which builds its Markup from escaped pieces only."""

import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from ablate import __version__
from ablate.record import AXES
from ablate.report.analysis import ALL, IN_DOMAIN, OOD, Analysis, marker_lexicon, order, reported, settings
from ablate.stats import FEW_SEEDS

MAX_CHARS, MAX_LISTED, SHOWN_PER_EVALUATION = 4000, 200, 4


def highlight(text, words, mode: str = "substring") -> Markup:
    """`text` escaped, with each marker word wrapped in <mark> (substring or whole-word, case-insensitive)."""
    words = [w for w in words if w]
    if not words:
        return escape(text)
    alts = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    parts = re.split(rf"\b({alts})\b" if mode == "word" else f"({alts})", str(text), flags=re.IGNORECASE)
    # a split on a group alternates text and matches: the odd pieces are marker words
    return Markup("").join(Markup("<mark>%s</mark>") % p if i % 2 else escape(p) for i, p in enumerate(parts))


def num(v, digits: int, sign: bool = False) -> str:
    if v is None or pd.isna(v):
        return "–"
    v = round(float(v), digits) + 0.0  # no "-0.0"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def ci(estimate, low, high, digits: int, sign: bool = True) -> str:
    """An estimate and its 95% interval: "+0.088 [-0.010, +0.186]" (no interval: the estimate alone)."""
    if low is None or pd.isna(low):
        return num(estimate, digits, sign)
    return f"{num(estimate, digits, sign)} [{num(low, digits, sign)}, {num(high, digits, sign)}]"


def trend(mean, digits: int, better: bool | None) -> str:
    """A change's CSS class: whether it goes the metric's better way, as shown (none for descriptive metrics)."""
    shown = round(mean, digits) if pd.notna(mean) else 0
    return "" if better is None or shown == 0 else "better" if (shown > 0) == better else "worse"


ENV = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                  undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
ENV.filters.update(highlight=highlight, num=num, ci=ci, trend=trend)


def first_line(error) -> str:
    lines = str(error or "").strip().splitlines()
    return lines[0] if lines else "(no error recorded)"


def _label(row, keys) -> str:
    return " · ".join(str(row[k]) for k in keys)


def _index(stats: pd.DataFrame, keys: list[str]) -> dict:
    """{(*keys, scope, metric, stage): {mean, se, low, high, n, runs}} for fast lookups while rendering."""
    cols, values = [*keys, "scope", "metric", "stage"], ["mean", "se", "low", "high", "n", "runs"]
    return {r[:len(cols)]: dict(zip(values, r[len(cols):]))
            for r in stats[[*cols, *values]].itertuples(index=False, name=None)}


def _specs(a: Analysis) -> list[tuple]:
    """(scope, metric, title) of each table: every reported metric; one with a better direction (a goal, such as
    accuracy) in-domain and out-of-domain apart, a descriptive one (length, markers) over all eval sets."""
    ood = [s for s in a.eval_sets if s != IN_DOMAIN]
    specs = []
    for m in reported():
        if m.higher_is_better is None:
            specs.append((ALL, m, f"{m.label}, all eval sets"))
            continue
        specs += [(IN_DOMAIN, m, f"{m.label}, in-domain"), *((s, m, f"{m.label}, out-of-domain: {s}") for s in ood)]
        specs += [(OOD, m, f"{m.label}, out-of-domain: mean of {len(ood)} sets")] if len(ood) > 1 else []
    return specs


def _grid(m, title: str, richness: list, coverage: list, cells: dict) -> dict:
    """A richness x coverage table of metric `m`: {(richness, coverage): the cell's data}."""
    return {"title": title, "digits": m.digits, "better": m.higher_is_better, "coverage": coverage,
            "rows": [{"richness": r, "cells": [cells.get((r, c)) for c in coverage]} for r in richness]}


def _cell(states: dict, stats: dict, key: tuple, scope: str, metric: str) -> dict:
    """Trained and change from the starting model of the cell `key`, or why there is none."""
    st = states.get(key, Counter({"not run": 1}))
    return {"note": ", ".join(f"{n} {s}" for s, n in sorted(st.items()) if s != "completed"),
            "failed": bool(st["failed"] or st["interrupted"]),
            **{stage: stats.get((*key, scope, metric, stage)) for stage in ("trained", "delta")}}


def _panels(a: Analysis) -> list[dict]:
    """Per model x objective: a table per metric and scope, and the marker words."""
    keys = [*a.panel_keys, "richness", "coverage"]
    stats, base = _index(a.cells, keys), _index(a.base, a.panel_keys)
    states = {k: Counter(v.status) for k, v in a.grid.groupby(keys)}
    panels = []
    for _, p in a.picked[a.panel_keys].drop_duplicates().sort_values(a.panel_keys).iterrows():
        panel = tuple(p)
        g = a.grid[a.grid.sweep == panel[0]] if a.sel.split else a.grid
        richness, coverage = order(a.levels, "richness", g.richness), order(a.levels, "coverage", g.coverage)
        tables = [{**_grid(m, title, richness, coverage, {(r, c): _cell(states, stats, (*panel, r, c), scope, m.name)
                                                          for r in richness for c in coverage}),
                   "base": base.get((*panel, scope, m.name, "base"))} for scope, m, title in _specs(a)]
        panels.append({"title": _label(p, a.panel_keys), "tables": tables, "words": _words(a, p.to_dict())})
    return panels


def _words(a: Analysis, panel: dict) -> dict | None:
    w = a.words.merge(pd.DataFrame([panel]), on=list(panel))
    if w.empty:
        return None
    table = w.pivot_table(index="word", columns="richness", values="value", aggfunc="mean")
    runs = w.groupby("richness").runs.max()
    levels = order(a.levels, "richness", [c for c in table.columns if c != "base"])
    table = table.sort_values("base", ascending=False) if "base" in table else table
    rows = []
    for word, r in table.iterrows():
        base = r.get("base", np.nan)
        cells = [{"value": r.get(lv, np.nan), "gone": base > 0 and r.get(lv) == 0,
                  "change": "" if pd.isna(base) or pd.isna(r.get(lv, np.nan)) or base == 0
                  else f" ({(r[lv] - base) / base:+.0%})"} for lv in levels]
        rows.append({"word": word, "base": base, "cells": cells})
    plural = lambda n, what: f"{int(n)} {what}{'s' if n != 1 else ''}"
    return {"head": ["word", f"starting model ({plural(runs.get('base', 0), 'evaluation')})",
                     *(f"{lv} ({plural(runs[lv], 'run')})" for lv in levels)], "rows": rows}


def _compared(a: Analysis) -> list[dict]:
    """Per model x objective and table: richness x coverage of sweep B - sweep A."""
    if a.compared is None or a.compared.empty:
        return []
    c = a.compared
    richness, coverage = order(a.levels, "richness", c.richness), order(a.levels, "coverage", c.coverage)
    out = []
    for (model, objective), g in c.groupby(["model", "objective"]):
        tables = [_grid(m, title, richness, coverage, {(r.richness, r.coverage): {"mean": r.mean, "low": r.low, "high": r.high}
                                                       for r in d.itertuples()})
                  for scope, m, title in _specs(a) if len(d := g[(g.scope == scope) & (g.metric == m.name)])]
        out.append({"title": f"{model} · {objective}", "tables": tables})
    return out


def _header(a: Analysis) -> dict:
    runs, grid = a.runs, a.grid
    cols = [*a.sel.split, *AXES, "seed"]
    states = Counter(grid.status)
    missing = grid[grid.status != "completed"]
    failed = grid[grid.status.isin(["failed", "interrupted"])].merge(runs[["run_id", "started_at"]], on="run_id")
    commits = Counter(str(c)[:10] for c in runs.git_commit.fillna("unknown"))
    varying, fixed = settings(runs)
    when = lambda t: f"{t:%Y-%m-%d %H:%M}"
    return {
        "cols": cols, "cells": len(grid), "missing": len(missing), "completed": states["completed"],
        "failed": states["failed"], "interrupted": states["interrupted"], "running": states["running"],
        "not_run": states["not run"],
        "sweeps": [[s, len(g), when(g.started_at.min()), when(g.started_at.max())] for s, g in runs.groupby("sweep")],
        "axes": [[axis, ", ".join(f"{v} ({(a.picked[axis] == v).sum()})" for v in order(a.levels, axis, runs[axis]))]
                 for axis in (*AXES, "seed")],
        "missing_rows": [[*(r[c] for c in cols), r.status] for _, r in missing.head(MAX_LISTED).iterrows()],
        "missing_more": max(0, len(missing) - MAX_LISTED),
        "failed_rows": [[int(r.run_id), *(r[c] for c in cols), r.status, when(r.started_at), first_line(r.error)]
                        for _, r in failed.iterrows()],
        "earlier_failed": max(int(runs.status.isin(["failed", "interrupted"]).sum()) - len(failed), 0),
        "dupes": max(int((runs.status == "completed").sum()) - len(a.picked), 0),
        "commits": ", ".join(f"{c} ({n})" for c, n in commits.most_common()),
        "dirty": int(runs.git_dirty.fillna(False).astype(bool).sum()),
        "varying": [[k, "; ".join(f"{v} ({n})" for v, n in vs[:12]) + (f"; … {len(vs) - 12} more" if len(vs) > 12
                                                                       else "")] for k, vs in varying[:60]],
        "fixed": [[k, v if len(v) < 300 else v[:300] + " …"] for k, v in fixed],
    }


def _browser(a: Analysis, examples: pd.DataFrame, shown: pd.DataFrame, base_ids: dict) -> list[dict]:
    """Per panel: the starting model's examples, then a few generations of each cell's first seed."""
    by_eval: dict = {}
    for e in examples.itertuples(index=False):  # in-domain first, then one per out-of-domain set
        mine = by_eval.setdefault(e.evaluation_id, [])
        if e.eval_set == IN_DOMAIN or all(x.eval_set != e.eval_set for x in mine):
            mine.append(e)

    def block(eval_id, cfg):
        words, mode = marker_lexicon(cfg)
        chosen = sorted(by_eval.get(eval_id, []), key=lambda e: e.eval_set != IN_DOMAIN)[:SHOWN_PER_EVALUATION]
        return [{"meta": f"{e.eval_set} · problem {e.problem_id} · sample {e.sample_idx} · "
                         f"{'correct' if e.correct else 'wrong'} · {e.length} tokens · markers: {e.markers} · "
                         f"gold answer: {e.answer}", "ok": bool(e.correct), "words": words, "mode": mode,
                 "text": str(e.completion)[:MAX_CHARS],
                 "cut": f"… ({len(str(e.completion)) - MAX_CHARS} more characters)"
                 if len(str(e.completion)) > MAX_CHARS else ""} for e in chosen]
    panels = []
    for key, group in shown.groupby(a.panel_keys, sort=False):
        first = group.iloc[0]
        cells = [{"title": f"richness={r.richness} · coverage={r.coverage} · run {int(r.run_id)} · seed {r.seed}",
                  "items": block(r.trained_eval, r.config)} for _, r in group.iterrows()]
        base_id = base_ids.get(key if isinstance(key, tuple) else (key,))
        panels.append({"title": _label(first, a.panel_keys), "cells": cells,
                       "base": block(base_id, first.config) if base_id is not None else []})
    return panels


def few_seeds(a: Analysis) -> str:
    """A warning when the directions' seed-level error rests on fewer than stats.FEW_SEEDS seeds."""
    if a.directions.empty or not a.directions.seeds.gt(0).any():
        return ""
    fewest = int(a.directions.seeds[a.directions.seeds > 0].min())
    if fewest >= FEW_SEEDS:
        return ""
    return (f"These verdicts rest on {fewest} seed{'s' * (fewest != 1)}: the seed-level error is estimated from "
            f"{'one difference' if fewest == 2 else 'nothing'}, so the intervals are wide and the verdicts weak. "
            f"Run at least {FEW_SEEDS} seeds (five for the paper's standard: seed=0,1,2,3,4).")


def render(a: Analysis, figs: list[dict], figure_panels: int, examples: pd.DataFrame, shown: pd.DataFrame,
           base_ids: dict, db_label: str, search: dict | None = None) -> str:
    """The page: `figs` drawn (with at most `figure_panels` rows), the examples of the runs `shown`, and the search
    section (report/search.py) when studies lie beside the database."""
    browser = _browser(a, examples, shown, base_ids)
    cells = len(a.picked.drop_duplicates([*a.panel_keys, "richness", "coverage"]))
    return ENV.get_template("report.html.j2").render(
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), version=__version__, db=db_label,
        selection=a.sel.describe(), total_runs=a.total_runs, h=_header(a) if len(a.runs) else None,
        directions=a.directions.to_dict("records"), dose=a.dose.to_dict("records"), few_seeds=few_seeds(a),
        figures=figs, figure_panels=figure_panels,
        n_panels=len(a.picked[a.panel_keys].drop_duplicates()), panels=_panels(a), compared=_compared(a),
        compare_a=a.sel.compare[0] if a.sel.compare else "", compare_b=a.sel.compare[1] if a.sel.compare else "",
        browser=browser, browser_shown=sum(len(p["cells"]) for p in browser),
        browser_more=max(0, cells - len(shown)), search=search)
