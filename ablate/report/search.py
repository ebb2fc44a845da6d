"""The report's search section: the studies beside the results database (ablate/search.py), each trial with its
recorded run, the best setting per objective, the optimisation history, parameter importances and, for a
multi-objective study, its Pareto front. Figures are seaborn, written as PNG and SVG like figures.py.

    s = section(eng, db_url, out, stem)      # None when no study lies beside the database

s["tables"] holds DataFrames (trials, best, importances, pareto); s["figures"] entries have figures.draw's shape
({name, title, caption, png, svg, data}); s["best"] and s["trials"] are the page's tables ({head, rows}).
"""

import base64
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sqlalchemy import select

from ablate import record, search
from ablate.data import VALIDATION

PANELS = 8  # studies drawn per figure; the tables show all


@dataclass
class Studies:
    trials: pd.DataFrame       # study, number, state, params, one column per metric, run_id, run_status
    best: pd.DataFrame         # study, per (the objective), trial, params, one column per metric, n_complete, n_pruned
    importances: pd.DataFrame  # study, metric, param, importance
    pareto: pd.DataFrame       # study, number, one column per metric, front (multi-objective studies only)
    metrics: dict = field(default_factory=dict)  # study -> [(metric, direction)]


def load(eng, db_url: str, storage: str | None = None) -> Studies | None:
    """Every study in the storage beside `db_url` (or `storage`) with its trials' runs read through `eng` (the
    report's read-only engine on `db_url`); None without one."""
    import optuna

    try:
        url = storage or search.storage_url(db_url)
        store = search.storage(url, create=False)
    except search.SearchError:
        return None
    names = optuna.get_all_study_names(store) if store is not None else []
    if not names:
        return None
    runs = _runs(eng, names)
    trials, best, importances, pareto, objectives = [], [], [], [], {}
    for name in sorted(names):
        study = optuna.load_study(study_name=name, storage=store)
        attrs = study.user_attrs.get("ablate") or {}
        metrics = [m for m, _ in attrs.get("objectives", [])] or [f"value {i}" for i in range(len(study.directions))]
        objectives[name] = list(zip(metrics, (d.name.lower() for d in study.directions)))
        done = study.get_trials(deepcopy=False)
        for t in done:
            run = runs.get((name, t.number), (None, None))
            trials.append({"study": name, "number": t.number, "state": t.state.name.lower(), "params": _params(t.params),
                           **dict(zip(metrics, t.values or [None] * len(metrics))), "run_id": run[0],
                           "run_status": run[1], **{f"param {k}": v for k, v in t.params.items()}})
        complete = [t for t in done if t.state.name == "COMPLETE"]
        if not complete:
            continue
        chosen = search.best(study)
        best.append({"study": name, "per": ", ".join(f"{k}={v}" for k, v in (attrs.get("per") or {}).items()),
                     "trial": chosen.number, "params": _params(chosen.params), **dict(zip(metrics, chosen.values)),
                     "n_complete": len(complete), "n_pruned": sum(t.state.name == "PRUNED" for t in done)})
        for i, metric in enumerate(metrics):
            for param, value in _importances(study, i).items():
                importances.append({"study": name, "metric": metric, "param": param, "importance": value})
        if len(metrics) > 1:
            front = {t.number for t in study.best_trials}
            pareto += [{"study": name, "number": t.number, **dict(zip(metrics, t.values)), "front": t.number in front}
                       for t in complete]
    frame = lambda rows, cols: pd.DataFrame(rows) if rows else pd.DataFrame(columns=cols)
    return Studies(trials=frame(trials, ["study", "number", "state", "params", "run_id", "run_status"]),
                   best=frame(best, ["study", "per", "trial", "params", "n_complete", "n_pruned"]),
                   importances=frame(importances, ["study", "metric", "param", "importance"]),
                   pareto=frame(pareto, ["study", "number", "front"]), metrics=objectives)


def _runs(eng, names: list[str]) -> dict:
    """(study, trial number) -> (run id, status) of the trials' latest runs (runs.kind 'trial')."""
    with eng.connect() as conn:
        rows = conn.execute(select(record.Run.study, record.Run.trial, record.Run.id, record.Run.status)
                            .where(record.Run.kind == "trial", record.Run.study.in_(names)).order_by(record.Run.id)).all()
    return {(s, n): (i, st) for s, n, i, st in rows}


def _params(params: dict) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                     for k, v in params.items())


def _importances(study, index: int) -> dict:
    """Optuna's parameter importances for objective `index` ({} when too few trials or one value per parameter)."""
    import optuna

    sign = -1.0 if study.directions[index].name == "MAXIMIZE" else 1.0  # its default evaluator reads low as good
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")  # the sign does it
            return optuna.importance.get_param_importances(study, target=lambda t: sign * t.values[index])
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


# --- figures ----------------------------------------------------------------------------------------------------

def fig_history(s: Studies):
    """Each trial's value by trial number (pruned trials at the bottom edge), and the best so far."""
    import seaborn as sns
    from matplotlib.figure import Figure

    rows = [(name, m, d) for name, objs in s.metrics.items() for m, d in objs][:PANELS]
    rows = [r for r in rows if r[1] in s.trials and s.trials[(s.trials.study == r[0])][r[1]].notna().any()]
    if not rows:
        return None
    fig = Figure(figsize=(6.5, 2.4 * len(rows) + 0.4))  # not pyplot's, as figures.py
    axes = fig.subplots(len(rows), 1, squeeze=False)
    for ax, (name, metric, direction) in zip(axes[:, 0], rows):
        t = s.trials[s.trials.study == name].sort_values("number")
        done = t[t.state == "complete"]
        sns.scatterplot(done, x="number", y=metric, ax=ax, color="tab:blue", s=40, label="complete")
        best = done[metric].cummax() if direction == "maximize" else done[metric].cummin()
        ax.step(done.number, best, where="post", color="0.3", lw=1, label="best so far")
        pruned = t[t.state == "pruned"]
        if len(pruned):
            low = ax.get_ylim()[0]
            ax.scatter(pruned.number, [low] * len(pruned), marker="x", color="tab:red", label="pruned", clip_on=False)
        ax.set(title=f"{name}: {metric} on the {VALIDATION} split ({direction})", xlabel="trial", ylabel=metric)
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, frameon=False, loc="best")
    fig.tight_layout()
    return fig


def fig_importances(s: Studies):
    """Optuna's parameter importances per study and metric."""
    import seaborn as sns
    from matplotlib.figure import Figure

    imp = s.importances
    if imp.empty:
        return None
    panels = imp[["study", "metric"]].drop_duplicates().head(PANELS)
    fig = Figure(figsize=(6.5, 1.2 + 0.35 * imp.param.nunique() * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)
    for ax, (_, p) in zip(axes[:, 0], panels.iterrows()):
        mine = imp[(imp.study == p.study) & (imp.metric == p.metric)].sort_values("importance", ascending=False)
        sns.barplot(mine, x="importance", y="param", ax=ax, color="tab:blue")
        ax.set(title=f"{p.study}: {p.metric}", xlabel="importance (Optuna, normalised)", ylabel="", xlim=(0, 1))
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def fig_pareto(s: Studies):
    """Multi-objective studies: every complete trial on the first two metrics, the Pareto front joined."""
    import seaborn as sns
    from matplotlib.figure import Figure

    names = [n for n in s.pareto.study.unique()][:PANELS] if len(s.pareto) else []
    if not names:
        return None
    fig = Figure(figsize=(4.6 * len(names), 3.8))
    axes = fig.subplots(1, len(names), squeeze=False)
    for ax, name in zip(axes[0], names):
        (mx, dx), (my, dy) = s.metrics[name][:2]
        p = s.pareto[s.pareto.study == name]
        sns.scatterplot(p, x=mx, y=my, hue="front", palette={True: "tab:red", False: "0.6"}, ax=ax, s=50)
        front = p[p.front].sort_values(mx)
        ax.plot(front[mx], front[my], "--", color="tab:red", lw=1)
        for _, r in front.iterrows():
            ax.annotate(str(int(r.number)), (r[mx], r[my]), textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.set(title=name, xlabel=f"{mx} ({dx})", ylabel=f"{my} ({dy})")
        ax.title.set_fontsize(9)
        ax.legend(title="Pareto front", fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


FIGURES = [
    ("search_history", "Search: optimisation history",
     "Each trial's score on the validation split by trial number; the line is the best so far; x: pruned trials.",
     fig_history),
    ("search_importances", "Search: parameter importances",
     "How much each searched parameter explains the score (Optuna's get_param_importances, normalised to 1).",
     fig_importances),
    ("search_pareto", "Search: Pareto front",
     "Multi-objective studies: every complete trial; red, joined: the trials no other trial beats on both metrics.",
     fig_pareto),
]


def draw(s: Studies, out: Path, stem: str) -> list[dict]:
    """The figures with data, each written as PNG and SVG into `out`: entries shaped like figures.draw's."""
    import matplotlib
    import seaborn as sns

    made = []
    out.mkdir(parents=True, exist_ok=True)
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85), \
            matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ablate"}):
        for name, title, caption, plot in FIGURES:
            fig = plot(s)
            if fig is None:
                continue
            png, svg = out / f"{stem}-{name}.png", out / f"{stem}-{name}.svg"
            fig.savefig(png, dpi=100)
            fig.savefig(svg)
            made.append({"name": name, "title": title, "caption": caption, "png": png.name, "svg": svg.name,
                         "data": base64.b64encode(png.read_bytes()).decode("ascii")})
    return made


def section(eng, db_url: str, out: Path, stem: str, storage: str | None = None) -> dict | None:
    """The search section: tables (DataFrames), figures (drawn into `out`) and the page's tables; None when no
    study lies beside the results database."""
    s = load(eng, db_url, storage)
    if s is None:
        return None
    trials = s.trials[[c for c in s.trials.columns if not c.startswith("param ")]]
    metrics = sorted({m for objs in s.metrics.values() for m, _ in objs})
    shown = lambda df, cols: {"head": cols, "rows": [[_cell(r.get(c)) for c in cols] for r in df.to_dict("records")]}
    return {"tables": {"trials": trials, "best": s.best, "importances": s.importances, "pareto": s.pareto},
            "figures": draw(s, out, stem),
            "best": shown(s.best, ["study", "per", "trial", "params", *metrics, "n_complete", "n_pruned"]),
            "trials": shown(trials, ["study", "number", "state", "params", *metrics, "run_id", "run_status"])}


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
