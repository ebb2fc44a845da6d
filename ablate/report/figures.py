"""The figures (seaborn/matplotlib), each written as PNG and SVG beside the report. FIGURES is the one list:
the page shows them in its order and `build` draws those that need no samples while the database groups them."""

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ablate.metrics import by_name
from ablate.report.analysis import ALL, IN_DOMAIN, OOD, Analysis, curves, order
from ablate.report.load import CURVES

FIGURE_PANELS = 8  # model x objective rows in a faceted figure (each costs ~0.5 s to draw); the tables show all


def _label(row, keys) -> str:
    return " · ".join(str(row[k]) for k in keys)


def _axis(scope: str, metric: str) -> str:
    where = {IN_DOMAIN: "in-domain", OOD: "out-of-domain (mean of sets)", ALL: "all eval sets"}[scope]
    return f"{by_name()[metric].label}, {where}"


def _panels(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return df[keys].drop_duplicates().sort_values(keys).head(FIGURE_PANELS)


def _subplots(rows: int, cols: int, width: float, height: float, right: float = 1.5):
    """A grid of axes with fixed margins in inches (room for a legend on the right): constrained or tight
    layout would cost a second or more per figure. A column shares its x axis (tick labels at the bottom)."""
    w, h = cols * width + right + 0.75, rows * height + 0.35
    fig = Figure(figsize=(w, h))  # not pyplot's: no GUI backend, no global list of open figures
    axes = fig.subplots(rows, cols, squeeze=False, sharex="col")
    fig.subplots_adjust(left=0.75 / w, right=1 - right / w, bottom=0.6 / h, top=1 - 0.35 / h, wspace=0.3,
                        hspace=0.55 if rows > 1 else 0.2)
    return fig, axes


def _palette(levels, name="tab10") -> dict:
    return dict(zip(levels, sns.color_palette(name, len(levels))))


def _scatter(a: Analysis, x: tuple[str, str], y: tuple[str, str], frontier: bool):
    """One point per cell: x and y = (scope, metric) of the trained model, bars: 95% intervals; a star per starting
    model."""
    keys = [*a.panel_keys, "richness", "coverage"]
    t = a.cells[a.cells.stage == "trained"]
    at = lambda sm: t[(t.scope == sm[0]) & (t.metric == sm[1])].set_index(keys)[["mean", "low", "high"]]
    df = at(x).merge(at(y), left_index=True, right_index=True, suffixes=("_x", "_y")).reset_index()
    df = df.dropna(subset=["mean_x", "mean_y"])
    if df.empty:
        return None
    df["panel"] = [_label(r, a.panel_keys) for _, r in df.iterrows()]
    fig, axes = _subplots(1, 1, 5.6, 4.2, right=1.8)
    ax = axes[0, 0]
    bars = lambda v: np.vstack([(df[f"mean_{v}"] - df[f"low_{v}"]).fillna(0), (df[f"high_{v}"] - df[f"mean_{v}"]).fillna(0)])
    ax.errorbar(df.mean_x, df.mean_y, xerr=bars("x"), yerr=bars("y"), fmt="none", ecolor="0.8",
                elinewidth=0.8, zorder=1)
    sns.scatterplot(df, x="mean_x", y="mean_y", hue="richness", hue_order=order(a.levels, "richness", df.richness),
                    style="panel" if df.panel.nunique() > 1 else None, s=60, ax=ax, zorder=2)
    if frontier:  # cells that no shorter cell beats on accuracy
        pts = df.sort_values(["mean_x", "mean_y"], ascending=[True, False])
        best = pts[pts.mean_y > pts.mean_y.cummax().shift(fill_value=-np.inf)]
        if len(best) > 1:
            ax.plot(best.mean_x, best.mean_y, "--", color="0.4", lw=1, zorder=1, label="frontier")
    b = a.base
    mean = lambda sm: b[(b.scope == sm[0]) & (b.metric == sm[1])].groupby("model")["mean"].mean()
    base = pd.concat([mean(x).rename("x"), mean(y).rename("y")], axis=1).dropna()
    if len(base):
        ax.scatter(base.x, base.y, marker="*", s=220, color="black", zorder=3, label="starting model")
        for model, r in base.iterrows():
            ax.annotate(str(model), (r.x, r.y), textcoords="offset points", xytext=(7, 5), fontsize=8)
    ax.set(xlabel=_axis(*x), ylabel=_axis(*y))
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, frameon=False)
    return fig


def fig_frontier(a: Analysis):
    return _scatter(a, (IN_DOMAIN, "mean_length"), (IN_DOMAIN, "accuracy"), frontier=True)


def fig_markers_ood(a: Analysis):
    if not any(s != IN_DOMAIN for s in a.eval_sets):
        return None
    return _scatter(a, (OOD, "markers_per_response"), (OOD, "accuracy"), frontier=False)


def fig_curves(a: Analysis):
    df = curves(a.steps, a.panel_keys)
    if df.empty:
        return None
    panels = _panels(df, a.panel_keys)
    names = [n for n in CURVES if n in set(df.name)]
    colors = _palette(order(a.levels, "richness", df.richness))
    fig, axes = _subplots(len(panels), len(names), 3.4, 2.5)
    for i, (_, p) in enumerate(panels.iterrows()):
        mine = df.merge(p.to_frame().T, on=a.panel_keys)
        for j, name in enumerate(names):
            ax = axes[i, j]
            for level, color in colors.items():
                c = mine[(mine.name == name) & (mine.richness == level)].sort_values("step")
                if c.empty:
                    continue
                ax.plot(c.step, c["mean"], color=color, lw=1.4, label=level)
                ax.fill_between(c.step, c["mean"] - c.se.fillna(0), c["mean"] + c.se.fillna(0), color=color,
                                alpha=0.2, lw=0)
            ax.set_title(f"{_label(p, a.panel_keys)} | {CURVES[name]}", fontsize=9)
            ax.set_xlabel("step" if i == len(panels) - 1 else "")
    axes[0, -1].legend(title="richness", bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, frameon=False)
    return fig


def fig_richness(a: Analysis):
    delta = a.cells[a.cells.stage == "delta"]
    cols = [(s, m) for s, m in ((IN_DOMAIN, "accuracy"), (OOD, "accuracy"), (ALL, "markers_per_response"))
            if ((delta.scope == s) & (delta.metric == m)).any()]
    if not cols:
        return None
    panels = _panels(delta, a.panel_keys)
    richness, coverage = order(a.levels, "richness", delta.richness), order(a.levels, "coverage", delta.coverage)
    colors = _palette(coverage, "viridis")
    fig, axes = _subplots(len(panels), len(cols), 3.4, 2.5)
    for i, (_, p) in enumerate(panels.iterrows()):
        mine = delta.merge(p.to_frame().T, on=a.panel_keys)
        for j, (scope, metric) in enumerate(cols):
            ax = axes[i, j]
            d = mine[(mine.scope == scope) & (mine.metric == metric)]
            for c_i, cov in enumerate(coverage):
                row = d[d.coverage == cov].set_index("richness").reindex(richness)
                x = np.arange(len(richness)) + (c_i - (len(coverage) - 1) / 2) * 0.06
                bars = np.vstack([(row["mean"] - row.low).fillna(0), (row.high - row["mean"]).fillna(0)])
                ax.errorbar(x, row["mean"], yerr=bars, marker="o", ms=4, capsize=2, lw=1.2,
                            color=colors[cov], label=cov)
            ax.axhline(0, color="0.5", lw=0.8)
            ax.set_xticks(range(len(richness)), richness)
            ax.set_title(f"{_label(p, a.panel_keys)} | Δ {_axis(scope, metric)}", fontsize=9)
            ax.set_xlabel("richness" if i == len(panels) - 1 else "")
    axes[0, -1].legend(title="coverage", bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, frameon=False)
    return fig


def fig_marker_words(a: Analysis):
    w = a.words
    if w.empty or not (w.value.fillna(0) > 0).any():
        return None
    words = w[w.richness == "base"].sort_values("value", ascending=False).word.drop_duplicates().tolist()
    words += [x for x in w.word.unique() if x not in words]
    levels = order(a.levels, "richness", w.richness[w.richness != "base"])
    colors = {"base": "0.25", **dict(zip(levels, sns.color_palette("flare", len(levels))))}
    width = 0.8 / len(colors)
    panels = _panels(w, a.panel_keys)
    fig, axes = _subplots(len(panels), 1, 8.5, 2.5)
    for ax, (_, p) in zip(axes[:, 0], panels.iterrows()):
        mine = w.merge(p.to_frame().T, on=a.panel_keys).pivot_table(index="word", columns="richness", values="value")
        mine = mine.reindex(index=words, columns=list(colors))
        for i, (level, color) in enumerate(colors.items()):
            ax.bar(np.arange(len(words)) + (i - (len(colors) - 1) / 2) * width, mine[level].fillna(0), width,
                   color=color, label="starting model" if level == "base" else level)
        ax.set_xticks(range(len(words)), words)
        ax.set(title=_label(p, a.panel_keys), ylabel="per response")
        ax.title.set_fontsize(9)
        ax.legend(title="richness", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8, frameon=False)
    return fig


def _ci_bars(rows: pd.DataFrame) -> np.ndarray:
    """Asymmetric error bars [below, above] from the rows' 95% interval (none where there is no interval)."""
    return np.vstack([(rows.estimate - rows.low).fillna(0).to_numpy(), (rows.high - rows.estimate).fillna(0).to_numpy()])


def fig_seeds(a: Analysis):
    """Per model x objective (a row) and direction (a column): each seed's own estimate as a dot above the pooled
    estimate with its 95% interval, so a reader sees whether every seed agrees."""
    d = a.directions.dropna(subset=["estimate"])
    if d.empty:
        return None
    panels = _panels(d, ["model", "objective"])
    numbers = list(dict.fromkeys(d.direction))
    fig, axes = _subplots(len(panels), len(numbers), 2.5, 1.5, right=0.3)
    for row, (_, p) in zip(axes, panels.iterrows()):
        mine = d[(d.model == p.model) & (d.objective == p.objective)].set_index("direction")
        for ax, number in zip(row, numbers):
            ax.axvline(0, color="0.5", lw=0.8)
            ax.set_yticks([0, 1], ["pooled", "seeds"] if ax is row[0] else ["", ""])
            ax.set_ylim(-0.6, 1.6)
            ax.set_title(f"({number}) {p.model} · {p.objective}" if ax is row[0] else f"({number})", fontsize=8,
                         loc="left")
            if number not in mine.index:
                continue
            r = mine.loc[number]
            seeds = pd.Series(r.per_seed, dtype=float)
            ax.scatter(seeds.values, np.ones(len(seeds)), s=14, color="tab:blue", zorder=3)
            ax.errorbar([r.estimate], [0], xerr=_ci_bars(mine.loc[[number]]), fmt="D", ms=4, color="black",
                        capsize=2, lw=1.2)
    return fig


def fig_dose(a: Analysis):
    """Direction 4 against the dose knob: one panel per self-distillation objective x baseline, one line per model
    (the testbed beside its control), bars: 95% intervals."""
    d = a.dose[a.dose.eval_set != "trend"]
    if d.empty:
        return None
    panels = _panels(d, ["objective", "baseline"])
    colors = _palette(sorted(d.model.unique()))
    fig, axes = _subplots(1, len(panels), 4.2, 3.2)
    for ax, (_, p) in zip(axes[0], panels.iterrows()):
        mine = d[(d.objective == p.objective) & (d.baseline == p.baseline)]
        for model, line in mine.groupby("model"):
            ax.errorbar(line.knob, line.estimate, yerr=_ci_bars(line), marker="o", ms=4, capsize=2, lw=1.2,
                        color=colors[model], label=model)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set(xlabel="dose: chance a move is hard (world carry)",
               ylabel=f"OOD accuracy, {p.objective} − {p.baseline}" if ax is axes[0, 0] else "")
        ax.set_title(f"direction 4 · {p.objective} − {p.baseline}", fontsize=9)
    axes[0, -1].legend(title="model", bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, frameon=False)
    return fig


@dataclass(frozen=True)
class Plot:
    name: str
    title: str
    caption: str
    draw: Callable  # Analysis -> a matplotlib figure, or None when there is nothing to plot
    samples: bool   # reads the per-cell statistics (drawn once the samples are aggregated)


FIGURES = [
    Plot("frontier", "Accuracy vs. length frontier",
         "One point per cell (trained model, mean over seeds; bars: 95% intervals over seeds and problems). Star: "
         "the starting model. Dashed: cells no shorter cell beats on accuracy.", fig_frontier, samples=True),
    Plot("markers_ood", "Markers vs. out-of-domain accuracy",
         "One point per cell: epistemic markers per response and accuracy on the out-of-domain sets (mean of sets).",
         fig_markers_ood, samples=True),
    Plot("curves", "Training curves",
         "rollout/reward, rollout/mean_length and rollout/markers_per_response per step: mean over coverage levels "
         "and seeds, band ± se.", fig_curves, samples=False),
    Plot("richness", "Richness effect per coverage level",
         "Change from the starting model (trained − base, paired by problem) by richness, one line per coverage "
         "level, bars: 95% intervals over seeds and problems.",
         fig_richness, samples=True),
    Plot("seeds", "Do the seeds agree?",
         "Per direction (a column) and model × objective (a row): each training seed's own paired estimate (dots) "
         "above the pooled estimate with its 95% interval (diamond and bar). A verdict every seed supports has all "
         "its dots on one side of zero.", fig_seeds, samples=True),
    Plot("dose", "Direction 4 against the dose",
         "Out-of-domain accuracy of self-distillation minus the teacherless baseline at the broadest coverage, per "
         "eval suite by its share of hard moves (the world's carry knob), one line per model; bars: 95% intervals "
         "(paired, two-way clustered over seeds and problems). The rule "
         "fixed in advance is in the table 'Direction 4 against the dose'.", fig_dose, samples=True),
    Plot("marker_words", "Which marker words disappear",
         "Each marker word per response: the starting model and the trained models by richness (mean over runs).",
         fig_marker_words, samples=False),
]


def draw(a: Analysis, out: Path, stem: str, plots: list[Plot]) -> dict[str, dict]:
    """Draw `plots` that have data, each written as PNG and SVG: {name: the page's entry, PNG inline}."""
    made = {}
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85), \
            matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ablate", "axes.titley": 1.01}):
        for p in plots:
            fig = p.draw(a)
            if fig is None:
                continue
            png, svg = out / f"{stem}-{p.name}.png", out / f"{stem}-{p.name}.svg"
            fig.savefig(png, dpi=100, pil_kwargs={"compress_level": 3})
            fig.savefig(svg)
            made[p.name] = {"name": p.name, "title": p.title, "caption": p.caption, "png": png.name, "svg": svg.name,
                            "data": base64.b64encode(png.read_bytes()).decode("ascii")}
    return made
