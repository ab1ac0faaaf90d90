"""Figure functions on small synthetic study data: each returns a figure in the paper style, legends stay
off the data, bar charts zoom to the data, methods are styled by family."""

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from hnlm import plot_style, plots
from hnlm.errors import UserFacingError
from hnlm.methods import get_method  # the registry loads every method's module: at collection, not in a test

CLASSIC = ["rns", "pns", "dns", "dns-mn", "mixgcf", "dens", "ahns"]
LLM = ["sns", "sns-grounded", "sns-random", "sns-shuffled", "rlmrec-con", "hnlmrec-text", "hnlmrec-soft"]
METHODS = ["rns", "dns", "sns", "sns-random"]
BACKBONES = ["mf", "lightgcn"]


@pytest.fixture(scope="module")
def runs():
    rng = np.random.default_rng(0)
    base = dict(zip(METHODS, [0.36, 0.37, 0.39, 0.38]))
    return pd.DataFrame([{"backbone": b, "method": m, "seed": s, "recall@20": base[m] + rng.normal(0, 0.002)}
                         for b in BACKBONES for m in METHODS for s in range(2)])


@pytest.fixture(scope="module")
def curves():
    rng = np.random.default_rng(1)
    return pd.DataFrame([{"backbone": b, "method": m, "seed": s, "epoch": e,
                          "recall@20": 0.3 * (1 - np.exp(-e / 2)) + rng.normal(0, 0.003)}
                         for b in BACKBONES for m in METHODS for s in range(2) for e in range(1, 6)])


def legends(fig):
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]


def assert_legends_off_data(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for legend in legends(fig):
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), (legend, ax.get_title())


def all_figures(runs, curves):
    rng = np.random.default_rng(2)
    long = runs.assign(items=np.where(runs["seed"] == 0, "head", "tail"))
    groups = runs.assign(group=np.where(runs["seed"] == 0, "1-20", "21-80"))
    return {
        "distributions": plots.plot_distributions({"a": rng.integers(1, 50, 40), "b": rng.integers(1, 90, 40)},
                                                  {"a": rng.integers(0, 30, 25), "b": rng.integers(0, 9, 25)}),
        "metric_bars": plots.plot_metric_bars(runs, "recall@20", hue="backbone", x="method"),
        "convergence": plots.plot_convergence(curves, "recall@20", hue="method", col="backbone"),
        "grouped_bar": plots.plot_grouped(long, x="method", y="recall@20", hue="items", col="backbone", xlabel=""),
        "grouped_line": plots.plot_grouped(groups, x="group", y="recall@20", hue="method", kind="line",
                                           col="backbone"),
        "lines": plots.plot_lines({"text": [3, 2, 1.5], "soft": [3, 2.5, 1]}, "step", "loss"),
        "hist": plots.plot_hist({"generated": rng.normal(0.5, 0.1, 50), "random": rng.normal(0.3, 0.1, 50)},
                                "cosine"),
    }


def test_every_figure_function_returns_a_figure_with_legends_off_the_data(runs, curves, tmp_path):
    figures = all_figures(runs, curves)
    for name, fig in figures.items():
        assert isinstance(fig, Figure), name
        assert fig.get_figwidth() <= plot_style.COLUMN_WIDTH, name
        assert legends(fig), name
        assert_legends_off_data(fig)
    paths = plots.save_figure(figures["metric_bars"], "bars", tmp_path)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
    assert b"/FontFile2" in paths[1].read_bytes()  # TrueType embedded (pdf.fonttype 42)


def test_metric_bars_zoom_to_the_data_and_say_so(runs):
    fig = plots.plot_metric_bars(runs, "recall@20")
    stats = runs.groupby(["backbone", "method"])["recall@20"].agg(["mean", "std"])
    lower, upper = fig.axes[0].get_xlim()
    assert 0.3 < lower <= (stats["mean"] - stats["std"]).min()
    assert upper >= (stats["mean"] + stats["std"]).max()
    assert f"axis starts at {lower:.4g}" in fig.get_supxlabel()
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["RNS", "DNS", "SNS", "SNS-random"]
    for ax in fig.axes:  # std error bars on every bar
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == 1 and len(bars[0].lines[2][0].get_segments()) == len(METHODS)


def test_bars_start_at_zero_when_the_data_fill_the_axis(runs):
    long = pd.concat([runs.assign(items="head"), runs.assign(items="tail", **{"recall@20": runs["recall@20"] / 8})])
    fig = plots.plot_grouped(long, x="method", y="recall@20", hue="items", col="backbone")
    assert fig.axes[0].get_xlim()[0] == 0
    assert fig.get_supxlabel() == "recall@20"


@pytest.mark.parametrize("low, high, zoomed", [(0.36, 0.39, True), (0.05, 0.45, False), (-0.02, 0.03, False)])
def test_value_limits_cover_the_data(low, high, zoomed):
    lower, upper, was_zoomed = plot_style.value_limits(low, high)
    assert lower <= low and upper >= high and was_zoomed == zoomed
    assert (lower > 0) == zoomed


def test_methods_are_styled_by_family_and_ablations_are_dashed_and_hatched():
    styles = plot_style.method_styles(CLASSIC + LLM)
    assert len({s.color for s in styles.values()}) == len(styles)  # distinct hues, 14 methods
    hues = {m: mcolors.rgb_to_hsv(mcolors.to_rgb(s.color)) for m, s in styles.items()}
    for m in CLASSIC:  # cool: grey (low saturation) or blue..purple
        h, sat, _ = hues[m]
        assert sat < 0.15 or 0.4 <= h <= 0.8, m
    for m in LLM:  # warm: red..gold, or magenta
        h, sat, _ = hues[m]
        assert sat > 0.3 and (h <= 0.15 or h >= 0.85), m
    for m in CLASSIC + LLM:
        ablation = m.endswith(("-random", "-shuffled"))
        assert (styles[m].linestyle != "-") == ablation and (styles[m].hatch is not None) == ablation, m


def test_labels_take_their_methods_family_deterministically_and_stay_distinct():
    # families and ablations come from the method declarations: "dnsmn-guard" (a text-embedding guard) is
    # declared LLM-based though its name shows no LLM, "teacher-negatives" a classic sampler
    names = ["sns", "hnlmrec-text@qwen2.5-0.5b", "hnlmrec-text@smollm2-135m", "dnsmn-guard", "teacher-negatives",
             "rns", "sns-dnsmn-shuffled"]
    styles = plot_style.method_styles(names)
    assert styles == plot_style.method_styles(list(reversed(names)))
    assert [plot_style.method_family(n) for n in names] == ["llm"] * 4 + ["classic"] * 2 + ["llm"]
    assert get_method("dnsmn-guard").family == "llm" and get_method("sns-dnsmn-shuffled").ablation_of
    assert styles["sns-dnsmn-shuffled"].hatch and styles["teacher-negatives"].color in plot_style.PALETTES["classic"]
    assert len({(s.color, s.linestyle) for s in styles.values()}) == len(names)
    many = plot_style.method_styles([f"sns@llm-{i}" for i in range(20)])  # more than one palette: line styles differ
    assert len({(s.color, s.linestyle) for s in many.values()}) == 20


def test_a_label_of_no_method_is_refused():
    with pytest.raises(UserFacingError, match="'my-sampler' names no method"):
        plot_style.method_styles(["rns", "my-sampler"])


def test_display_names_use_paper_spelling():
    shown = [plot_style.display_name(n) for n in ["dns-mn", "mixgcf", "hnlmrec-text@qwen2.5-0.5b", "sns:alpha=0.1",
                                                   "rlmrec-con", "lightgcn", "head"]]
    assert shown == ["DNS(M,N)", "MixGCF", "HNLMRec-text@qwen2.5-0.5b", "SNS:alpha=0.1", "RLMRec-Con", "LightGCN",
                     "head"]


def test_one_seed_and_no_panel_column_still_draw():
    one = pd.DataFrame({"method": ["rns", "pns"], "seed": [0, 0], "recall@20": [0.30, 0.31]})
    fig = plots.plot_metric_bars(one, "recall@20")  # no backbone column: one panel, axis label on it
    assert len(fig.axes) == 1 and "axis starts at" in fig.axes[0].get_xlabel()
    curve = pd.DataFrame({"method": "rns", "seed": 0, "epoch": [1, 2, 3], "share": [np.nan, 0.1, 0.2]})
    fig = plots.plot_convergence(curve, "share")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["RNS"]
