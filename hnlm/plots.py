"""Figure functions for the study: results in, matplotlib figure out, one paper-column style.

Every function takes plain data (frames/dicts the analyses produce) and returns a Figure; `save_figure`
writes it as PNG and PDF. Sizes fit one column of a two-column paper (3.4 in wide) at 8 pt.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: notebooks under papermill, tests, CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from hnlm.paths import figures_dir  # noqa: E402

COLUMN_WIDTH = 3.4   # inches, one paper column
FULL_WIDTH = 7.0     # inches, both columns
STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "legend.title_fontsize": 7, "figure.dpi": 150, "savefig.dpi": 300,
    "savefig.bbox": "tight", "axes.spines.top": False, "axes.spines.right": False, "lines.linewidth": 1.2,
    "lines.markersize": 3, "pdf.fonttype": 42, "ps.fonttype": 42,
}


def set_style() -> None:
    sns.set_theme(style="whitegrid", palette="colorblind", rc=STYLE)


def figure(width: float = COLUMN_WIDTH, height: float = 2.3, ncols: int = 1, nrows: int = 1, **kw):
    set_style()
    return plt.subplots(nrows, ncols, figsize=(width, height), constrained_layout=True, **kw)


def save_figure(fig, name: str, folder: Path | None = None) -> list[Path]:
    """Write `<folder>/<name>.png` and `.pdf` (folder: figures/ or HNLM_FIGURES) and close the figure."""
    folder = Path(folder) if folder else figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
    return paths


# ------------------------------------------------------------------------------------------ data (01)

def plot_distributions(history: dict[str, np.ndarray], popularity: dict[str, np.ndarray]):
    """Left: users by training-history length; right: item popularity by rank (log-log), per dataset."""
    fig, (ax1, ax2) = figure(FULL_WIDTH, 2.3, ncols=2)
    for name, lengths in history.items():
        lengths = np.asarray(lengths)
        lengths = lengths[lengths > 0]
        bins = np.logspace(np.log10(lengths.min()), np.log10(max(lengths.max(), lengths.min() + 1)), 25)
        ax1.hist(lengths, bins=bins, histtype="step", density=True, label=name)
    ax1.set(xscale="log", yscale="log", xlabel="training interactions per user", ylabel="share of users")
    for name, pop in popularity.items():
        ranked = np.sort(np.asarray(pop))[::-1]
        ax2.plot(np.arange(1, len(ranked) + 1) / len(ranked), np.maximum(ranked, 0.5), label=name)
    ax2.set(yscale="log", xlabel="item rank (share of catalogue)", ylabel="training interactions")
    ax2.legend(frameon=False)
    ax1.legend(frameon=False)
    return fig


# ------------------------------------------------------------------------------- results (06, 04, 10)

def plot_metric_bars(table: pd.DataFrame, metric: str, hue: str = "backbone", x: str = "method"):
    """Mean +- std bars of `metric` from a long frame with columns x, hue, seed, metric."""
    fig, ax = figure(COLUMN_WIDTH, 2.3)
    sns.barplot(data=table, x=x, y=metric, hue=hue if hue in table else None, errorbar="sd", ax=ax,
                capsize=0.1, err_kws={"linewidth": 0.8})
    ax.set(xlabel="", ylabel=metric)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    if ax.get_legend() is not None:
        ax.legend(frameon=False, title=None)
    return fig


def plot_convergence(curves: pd.DataFrame, metric: str = "recall@20", hue: str = "method",
                     col: str | None = None):
    """Validation metric by epoch (mean over seeds, band = std) from a frame with epoch, hue, seed, metric."""
    cols = sorted(curves[col].unique()) if col else [None]
    fig, axes = figure(COLUMN_WIDTH * min(len(cols), 2), 2.3, ncols=len(cols), squeeze=False)
    for ax, value in zip(axes[0], cols):
        part = curves if value is None else curves[curves[col] == value]
        sns.lineplot(data=part, x="epoch", y=metric, hue=hue, errorbar="sd", marker="o", ax=ax)
        ax.set(title=value or "", xlabel="epoch", ylabel=f"valid {metric}")
        ax.legend(frameon=False, title=None)
    return fig


def plot_grouped(frame: pd.DataFrame, x: str, y: str, hue: str = "method", kind: str = "bar",
                 col: str | None = None, xlabel: str | None = None, ylabel: str | None = None):
    """Bars (or lines) of y by x per hue, one panel per `col` value: head/tail metrics (08), user groups
    (09), alpha sweeps (04). Error bars: std over the rows of each cell (seeds)."""
    cols = list(dict.fromkeys(frame[col])) if col else [None]
    fig, axes = figure(COLUMN_WIDTH * min(len(cols), 2), 2.3, ncols=len(cols), squeeze=False)
    for ax, value in zip(axes[0], cols):
        part = frame if value is None else frame[frame[col] == value]
        if kind == "bar":
            sns.barplot(data=part, x=x, y=y, hue=hue, errorbar="sd", ax=ax, err_kws={"linewidth": 0.8})
        else:
            sns.lineplot(data=part, x=x, y=y, hue=hue, errorbar="sd", marker="o", ax=ax, sort=False)
        ax.set(title=value or "", xlabel=xlabel or x, ylabel=ylabel or y)
        ax.tick_params(axis="x", rotation=30)
        if ax.get_legend() is not None:
            ax.legend(frameon=False, title=None)
    return fig


def plot_lines(series: dict[str, list[float]], xlabel: str, ylabel: str, logy: bool = False):
    """Simple curves (training loss by step, share by epoch), one line per key."""
    fig, ax = figure(COLUMN_WIDTH, 2.3)
    for name, values in series.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, yscale="log" if logy else "linear")
    if len(series) > 1:
        ax.legend(frameon=False)
    return fig


def plot_hist(samples: dict[str, np.ndarray], xlabel: str, bins: int = 30):
    """Overlaid density histograms (e.g. similarity of generated vs random negatives to the positive)."""
    fig, ax = figure(COLUMN_WIDTH, 2.3)
    for name, values in samples.items():
        ax.hist(np.asarray(values, dtype=float), bins=bins, histtype="step", density=True, label=name)
    ax.set(xlabel=xlabel, ylabel="density")
    ax.legend(frameon=False)
    return fig
