"""Figure functions for the study: results in, matplotlib figure out, drawn in the style of `hnlm.plot_style`.

Every function takes plain data (frames/dicts the analyses produce) and returns a Figure; `save_figure`
writes it as PNG and PDF. Figures fit one column of a two-column paper (3.4 in wide, 7-7.5 pt text):
bar charts are horizontal (method names stay readable) with one panel per backbone side by side, line
charts stack their panels; legends sit below the panels, never on the data. Error bars and bands are the
std over the rows of each cell (the seeds; none with one seed). Method names are shown in paper spelling
("dns-mn" -> "DNS(M,N)"); colours, markers and hatching follow the method families of `hnlm.plot_style`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: notebooks under papermill, tests, CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402

from hnlm.atomic import atomic_path
from hnlm.paths import figures_dir  # noqa: E402
from hnlm.plot_style import (  # noqa: E402,F401
    COLUMN_WIDTH,
    FULL_WIDTH,
    PANEL_HEIGHT,
    RC,
    ablation_handles,
    apply,
    category_styles,
    display_name,
    family_handles,
    figure,
    legend_above,
    method_order,
    series_styles,
    value_limits,
    zoom_note,
)

STYLE = RC          # kept for callers of the former names
set_style = apply
BAR_ROW_IN = 0.15   # inches of figure height per bar
LINE_PANEL_HEIGHT = 1.55  # inches of one stacked line panel
MARKS_PER_LINE = 7  # markers per curve: enough to tell lines apart, few enough not to hide them
BAND_ALPHA = 0.12


def save_figure(fig, name: str, folder: Path | None = None) -> list[Path]:
    """Write `<folder>/<name>.png` and `.pdf` (folder: figures/ or HNLM_FIGURES) and close the figure."""
    folder = Path(folder) if folder else figures_dir()
    paths = [folder / f"{name}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:])
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------- helpers

def _values(frame: pd.DataFrame, column: str | None) -> list:
    """Distinct values of `column` in order of appearance (methods: classic first), [None] without it."""
    if column is None or column not in frame:
        return [None]
    values = list(dict.fromkeys(frame[column]))
    return method_order(values) if column == "method" else values


def _part(frame: pd.DataFrame, column: str | None, value) -> pd.DataFrame:
    return frame if value is None else frame[frame[column] == value]


def _mean_std(frame: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Mean and std of `value` per cell of `keys` (the rows of a cell are seeds), in order of appearance."""
    stats = frame.groupby(keys, sort=False)[value].agg(["mean", "std"]).reset_index()
    stats["std"] = stats["std"].fillna(0.0)  # one seed: no spread to show
    return stats


def _bar_panel(ax, frame: pd.DataFrame, category: str, value: str, group: str | None, categories: list,
               styles: dict) -> list[float]:
    """Horizontal mean bars with std error bars: one row per category, dodged by `group`. Returns the bar
    ends (mean -+ std) for the value axis."""
    groups = _values(frame, group)
    height = 0.8 / len(groups)
    ends = []
    for i, g in enumerate(groups):
        stats = _mean_std(_part(frame, group, g), [category], value).set_index(category).reindex(categories)
        y = np.arange(len(categories)) + (i - (len(groups) - 1) / 2) * height
        for row, c in enumerate(categories):
            colour = styles[c if g is None else g].color
            hatch = styles[c].hatch if c in styles else None  # ablation methods stay hatched whatever the colour
            ax.barh(y[row], stats["mean"].iloc[row], height=height * 0.88, color=colour, hatch=hatch,
                    hatchcolor="white", linewidth=0)
        ax.errorbar(stats["mean"], y, xerr=stats["std"], fmt="none", ecolor="#222222", elinewidth=0.7, capthick=0.7)
        ends += [*(stats["mean"] - stats["std"]).dropna(), *(stats["mean"] + stats["std"]).dropna()]
    ax.grid(axis="y", visible=False)
    ax.tick_params(axis="y", length=0)
    return ends


def _bar_figure(frame: pd.DataFrame, category: str, value: str, group: str | None, panel: str | None,
                value_label: str, category_label: str = ""):
    """Bar panels side by side (one per `panel` value) sharing both axes, categories on the vertical axis.
    The value axis starts at 0 unless that would hide the differences; then its label says where it starts."""
    panels = _values(frame, panel)
    categories = _values(frame, category)
    group = group if group in frame else None
    groups = _values(frame, group)
    width = COLUMN_WIDTH if len(panels) <= 2 else FULL_WIDTH
    rows_in = BAR_ROW_IN * len(categories) * (1 + 0.45 * (len(groups) - 1))
    fig, axes = figure(width, 0.55 + rows_in, ncols=len(panels), sharex=True, sharey=True, squeeze=False)
    styles = series_styles(category, categories)
    if group:  # colours show the group; method styles stay for the hatching of ablations
        styles.update(series_styles(group, groups))
    ends = []
    for ax, value_ in zip(axes[0], panels):
        ends += _bar_panel(ax, _part(frame, panel, value_), category, value, group, categories, styles)
        ax.set_title(display_name(value_) if value_ is not None else "")
    lower, upper, zoomed = value_limits(min(ends), max(ends)) if ends else (0.0, 1.0, False)
    axes[0][0].set_xlim(lower, upper)
    # zoomed axes get 4-digit ticks: fewer of them per panel keeps the labels apart in a paper column
    axes[0][0].xaxis.set_major_locator(MaxNLocator(nbins=max(2, 5 - len(panels))))
    label = zoom_note(value_label, lower) if zoomed else value_label
    if len(panels) == 1:
        axes[0][0].set_xlabel(label)
    else:
        fig.supxlabel(label, fontsize=RC["axes.labelsize"])
    axes[0][0].set_yticks(np.arange(len(categories)), [display_name(c) for c in categories])
    axes[0][0].set_ylim(len(categories) - 0.5, -0.5)  # first category on top
    axes[0][0].set_ylabel(category_label)
    if group:
        ablations = ablation_handles(categories) if category == "method" else []
        legend_above(fig, [styles[g].legend_handle("bar") for g in groups] + ablations)
    elif category == "method":
        legend_above(fig, family_handles(categories))
    return fig


def _line_panel(ax, frame: pd.DataFrame, x: str, y: str, hue: str | None, styles: dict, positions=None) -> None:
    """Mean curve per hue value with a std band; markers spread along each curve, offset between curves."""
    for i, name in enumerate(styles):
        stats = _mean_std(_part(frame, hue, name), [x], y)
        if stats.empty:
            continue
        xs = stats[x].map(positions).to_numpy(float) if positions else stats[x].to_numpy(float)
        mean, std = stats["mean"].to_numpy(float), stats["std"].to_numpy(float)
        step = max(1, len(xs) // MARKS_PER_LINE)
        ax.plot(xs, mean, **styles[name].line_kwargs(), markevery=(i % step, step))
        if std.any():
            ax.fill_between(xs, mean - std, mean + std, color=styles[name].color, alpha=BAND_ALPHA, linewidth=0)


def _line_figure(frame: pd.DataFrame, x: str, y: str, hue: str | None, panel: str | None, xlabel: str,
                 ylabel: str):
    """Line panels stacked in one column (shared x), one legend for all below them."""
    panels = _values(frame, panel)
    hue = hue if hue in frame else None
    styles = series_styles(hue, _values(frame, hue)) if hue else {None: category_styles([ylabel])[ylabel]}
    numeric = pd.api.types.is_numeric_dtype(frame[x])
    positions = None if numeric else {v: i for i, v in enumerate(dict.fromkeys(frame[x]))}
    height = PANEL_HEIGHT if len(panels) == 1 else LINE_PANEL_HEIGHT * len(panels)
    fig, axes = figure(COLUMN_WIDTH, height, nrows=len(panels), sharex=True, squeeze=False)
    for ax, value in zip(axes[:, 0], panels):
        _line_panel(ax, _part(frame, panel, value), x, y, hue, styles, positions)
        ax.set_ylabel(ylabel)
        if value is not None:
            ax.set_title(display_name(value), loc="left", fontweight="bold")
    if positions:
        axes[-1, 0].set_xticks(list(positions.values()), [str(v) for v in positions])
    axes[-1, 0].set_xlabel(xlabel)
    if hue:
        legend_above(fig, [s.legend_handle() for s in styles.values()])
    return fig


# ------------------------------------------------------------------------------------------ data (01)

def plot_distributions(history: dict[str, np.ndarray], popularity: dict[str, np.ndarray]):
    """Left: users by training-history length; right: item popularity by rank (log-log), per dataset."""
    fig, (ax1, ax2) = figure(COLUMN_WIDTH, 1.75, ncols=2)
    styles = category_styles(list(dict.fromkeys([*history, *popularity])))
    for name, lengths in history.items():
        lengths = np.asarray(lengths)
        lengths = lengths[lengths > 0]
        bins = np.logspace(np.log10(lengths.min()), np.log10(max(lengths.max(), lengths.min() + 1)), 25)
        ax1.hist(lengths, bins=bins, histtype="step", density=True, color=styles[name].color, linewidth=1.0)
    ax1.set(xscale="log", yscale="log", xlabel="training interactions\nper user", ylabel="share of users")
    for name, pop in popularity.items():
        ranked = np.sort(np.asarray(pop))[::-1]
        ax2.plot(np.arange(1, len(ranked) + 1) / len(ranked), np.maximum(ranked, 0.5), color=styles[name].color)
    ax2.set(yscale="log", xlabel="item rank\n(share of catalogue)", ylabel="training interactions")
    legend_above(fig, [s.legend_handle("plain") for s in styles.values()] if len(styles) > 1 else [])
    return fig


# ------------------------------------------------------------------------------- results (06, 04, 10)

def plot_metric_bars(table: pd.DataFrame, metric: str, hue: str = "backbone", x: str = "method"):
    """Mean +- std bars of `metric` from a long frame with columns x, hue, seed, metric: one panel per `hue`
    value (backbones), one bar per `x` value (methods, coloured by family)."""
    return _bar_figure(table, x, metric, None, hue if hue in table else None, metric)


def plot_convergence(curves: pd.DataFrame, metric: str = "recall@20", hue: str = "method",
                     col: str | None = None):
    """Validation metric by epoch (mean over seeds, band = std) from a frame with epoch, hue, seed, metric;
    one stacked panel per `col` value."""
    return _line_figure(curves, "epoch", metric, hue, col, "epoch", f"valid {metric}")


def plot_tuning(best: pd.DataFrame, metric: str = "recall@20"):
    """Best valid `metric` by learning rate (log axis), one line per method, one stacked panel per backbone, from
    `hnlm.study.tuning.best_by_lr`."""
    fig = _line_figure(best, "lr", "valid", "method", "backbone", "learning rate", f"best valid {metric}")
    rates = sorted(best["lr"].unique())
    for ax in fig.axes:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())     # only the tried rates are labelled
        ax.set_xticks(rates, [f"{r:g}" for r in rates] if ax is fig.axes[-1] else [])
    return fig


def plot_grouped(frame: pd.DataFrame, x: str, y: str, hue: str = "method", kind: str = "bar",
                 col: str | None = None, xlabel: str | None = None, ylabel: str | None = None):
    """Bars (or lines) of y by x per hue, one panel per `col` value: head/tail metrics (08), user groups
    (09), alpha sweeps (04). Error bars: std over the rows of each cell (seeds). Bars are horizontal (x
    values on the vertical axis); `xlabel`/`ylabel` label the x and y variables wherever they are drawn."""
    hue = hue if hue in frame and hue != x else None
    if kind == "bar":
        return _bar_figure(frame, x, y, hue, col, ylabel or y, xlabel if xlabel is not None else x)
    return _line_figure(frame, x, y, hue, col, xlabel if xlabel is not None else x, ylabel or y)


def plot_lines(series: dict[str, list[float]], xlabel: str, ylabel: str, logy: bool = False):
    """Simple curves (training loss by step, share by epoch), one line per key."""
    fig, ax = figure(COLUMN_WIDTH, PANEL_HEIGHT)
    styles = category_styles(series)
    for name, values in series.items():
        ax.plot(np.arange(1, len(values) + 1), values, color=styles[name].color)
    ax.set(xlabel=xlabel, ylabel=ylabel, yscale="log" if logy else "linear")
    if len(series) > 1:
        legend_above(fig, [styles[name].legend_handle("plain") for name in series])
    return fig


def plot_hist(samples: dict[str, np.ndarray], xlabel: str, bins: int = 30):
    """Overlaid density histograms (e.g. similarity of generated vs random negatives to the positive)."""
    fig, ax = figure(COLUMN_WIDTH, PANEL_HEIGHT)
    styles = category_styles(samples)
    for name, values in samples.items():
        ax.hist(np.asarray(values, dtype=float), bins=bins, histtype="step", density=True, color=styles[name].color,
                linewidth=1.0)
    ax.set(xlabel=xlabel, ylabel="density")
    legend_above(fig, [styles[name].legend_handle("plain") for name in samples])
    return fig
