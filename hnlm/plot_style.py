"""The one look of every study figure: paper-column sizes and fonts, a fixed style per method, outside legends
and zoomed value axes. `hnlm.plots` draws with it; nothing else sets colours or rcParams.

Methods are grouped by the family their declaration gives (`hnlm.methods.Method.family`; a label such as
"hnlmrec-text@smollm2-135m" is mapped to its method by `hnlm.methods.method_of`), so the split shows at a glance:
- classic samplers: cool colours (greys, blues, teal, purples);
- LLM-based methods: warm colours (reds, oranges, gold, magenta, brown);
- ablations (methods declared as the ablation of another): dashed lines and hatched bars, in their family's
  colours.
Known methods keep fixed styles in every figure. Any other name takes a free slot of its family's palette,
starting at a slot chosen by a CRC-32 of the name, so its style depends only on the set of names drawn.
"""

from __future__ import annotations

import itertools
import math
import zlib
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # headless: notebooks under papermill, tests, CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

COLUMN_WIDTH = 3.4   # inches, one column of a two-column paper
FULL_WIDTH = 7.0     # inches, both columns
PANEL_HEIGHT = 2.0   # inches of one row of panels, legend not included
RC = {
    "font.size": 7.5, "axes.titlesize": 7.5, "axes.labelsize": 7.5, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "legend.title_fontsize": 7, "legend.frameon": False, "legend.handlelength": 2.2,
    "legend.columnspacing": 1.2, "legend.handletextpad": 0.5, "legend.borderaxespad": 0.2,
    "figure.dpi": 150, "savefig.dpi": 300, "savefig.bbox": "tight", "savefig.pad_inches": 0.02,
    "axes.spines.top": False, "axes.spines.right": False, "axes.linewidth": 0.6, "axes.edgecolor": "#333333",
    "axes.grid": True, "axes.axisbelow": True, "grid.color": "#e0e0e0", "grid.linewidth": 0.5,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.major.size": 2.5, "ytick.major.size": 2.5,
    "lines.linewidth": 1.0, "lines.markersize": 3, "hatch.linewidth": 0.6, "errorbar.capsize": 1.5,
    "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType fonts embedded: editable text, accepted by publishers
}

FAMILY_LABELS = {"classic": "classic sampler", "llm": "LLM-based"}
FAMILY_COLOURS = {"classic": "#08519c", "llm": "#d95f02"}  # one typical colour of each family, for legends
ABLATION_LABEL = "ablation"
ABLATION_LINESTYLE = (0, (3.5, 1.5))  # dashed, dense enough to read on short curves
ABLATION_HATCH = "//////"
MARKERS = ("o", "s", "^", "v", "D", "<", ">", "p", "h", "X", "*", "P")
# Palettes by family: the known methods' slots first (fixed styles), then spare slots for other names.
PALETTES = {
    "classic": ("#4d4d4d", "#9a9a9a", "#08519c", "#6baed6", "#54278f", "#35978f", "#9e9ac8",
                "#2171b5", "#01665e", "#807dba", "#c6c6c6", "#084081"),
    "llm": ("#d95f02", "#8c2d04", "#fdae6b", "#e6ab02", "#e7298a", "#cb181d", "#fb6a4a",
            "#fcbba1", "#a50f15", "#fec44f", "#c51b7d", "#f16913"),
}
KNOWN_SLOTS = {
    "classic": ("rns", "pns", "dns", "dns-mn", "mixgcf", "dens", "ahns"),
    "llm": ("sns", "sns-grounded", "sns-random", "sns-shuffled", "rlmrec-con", "hnlmrec-text", "hnlmrec-soft"),
}
# Categories that are not methods (backbones, datasets, head/tail items): colour-blind-safe Okabe-Ito colours.
CATEGORY_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#000000", "#f0e442")
DISPLAY_NAMES = {
    "rns": "RNS", "pns": "PNS", "dns": "DNS", "dns-mn": "DNS(M,N)", "mixgcf": "MixGCF", "dens": "DENS",
    "ahns": "AHNS", "sns": "SNS", "rlmrec-con": "RLMRec-Con", "hnlmrec": "HNLMRec", "mf": "MF",
    "lightgcn": "LightGCN",
}
# Bars start at 0 unless the smallest bar end is above this share of the largest: then the axis zooms to the
# data (and its label says where it starts), so 0.36 vs 0.39 stays visible.
ZOOM_RATIO = 0.5


@dataclass(frozen=True)
class SeriesStyle:
    """How one method (or other category) is drawn, in lines, bars and legends."""
    color: str
    linestyle: object = "-"
    marker: str = "o"
    hatch: str | None = None
    label: str = ""

    def line_kwargs(self) -> dict:
        return {"color": self.color, "linestyle": self.linestyle, "marker": self.marker, "label": self.label}

    def legend_handle(self, kind: str = "line"):
        """Legend entry: "line" (with marker), "plain" (line only) or "bar" (filled, hatched if ablation)."""
        if kind == "plain":
            return Line2D([], [], color=self.color, linestyle=self.linestyle, label=self.label)
        if kind == "bar":
            return Patch(facecolor=self.color, edgecolor="white" if self.hatch else self.color, hatch=self.hatch,
                         linewidth=0, label=self.label)
        return Line2D([], [], **self.line_kwargs())


def apply() -> None:
    """Set the paper rcParams (idempotent; every figure function calls it through `figure`)."""
    plt.rcParams.update(RC)


def figure(width: float = COLUMN_WIDTH, height: float = PANEL_HEIGHT, ncols: int = 1, nrows: int = 1, **kw):
    """(fig, axes) in the paper style with constrained layout (room for outside legends)."""
    apply()
    return plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", **kw)


# -------------------------------------------------------------------------------------------- methods

def base_name(method: str) -> str:
    """The method without an "@llm" or ":option" suffix ("hnlmrec-text@qwen2.5-0.5b" -> "hnlmrec-text")."""
    for sep in ("@", ":"):
        method = method.split(sep, 1)[0]
    return method


def _declaration(method: str):
    # imported here: the method registry loads every method's module (torch, transformers), which figures
    # that draw no method should not pay for
    from hnlm.methods import method_of
    return method_of(method)


def method_family(method: str) -> str:
    """The family ("classic" or "llm") of the method a label stands for, as the method registry declares it."""
    return _declaration(method).family


def is_ablation(method: str) -> bool:
    """Whether the label's method is declared as the ablation of another."""
    return _declaration(method).ablation_of is not None


def display_name(value) -> str:
    """Paper spelling of a method or backbone ("dns-mn" -> "DNS(M,N)", "hnlmrec-text@x" -> "HNLMRec-text@x");
    the longest known prefix is replaced, anything else is kept as written."""
    text = str(value)
    head, tail = text, ""
    for sep in ("@", ":"):
        if sep in head:
            head, rest = head.split(sep, 1)
            tail = sep + rest + tail
    key = head.lower()
    for known in sorted(DISPLAY_NAMES, key=len, reverse=True):
        if key == known or key.startswith(known + "-"):
            return DISPLAY_NAMES[known] + head[len(known):] + tail
    return text


def method_order(methods) -> list[str]:
    """Distinct methods, classic samplers first, then LLM-based; order of appearance within a family."""
    distinct = list(dict.fromkeys(methods))
    return sorted(distinct, key=lambda m: method_family(m) != "classic")


def method_styles(methods) -> dict[str, SeriesStyle]:
    """Style of each method, distinct within this set: known names take their fixed slot, other names
    (sorted, so the result does not depend on the input order) the first free slot from their hash. A family
    with more names than palette slots reuses colours with another line style."""
    distinct = list(dict.fromkeys(methods))
    taken: dict[str, set[int]] = {family: set() for family in PALETTES}
    slots = {}
    known = [m for m in distinct if m.lower() in KNOWN_SLOTS[method_family(m)]]
    for method in known:
        family = method_family(method)
        slots[method] = KNOWN_SLOTS[family].index(method.lower())
        taken[family].add(slots[method])
    for method in sorted(set(distinct) - set(known)):
        family = method_family(method)
        slots[method] = _free_slot(_preferred_slot(method, family), taken[family], len(PALETTES[family]))
        taken[family].add(slots[method])
    return {m: _slot_style(m, method_family(m), slots[m]) for m in distinct}


def _free_slot(preferred: int, taken: set[int], size: int) -> int:
    """First untaken slot from `preferred` on, wrapping around the palette; once every colour is taken, the
    next round of slots (same colours, another line style)."""
    for round_ in itertools.count():
        for step in range(size):
            slot = round_ * size + (preferred + step) % size
            if slot not in taken:
                return slot


def _preferred_slot(method: str, family: str) -> int:
    base = base_name(method).lower()
    known = KNOWN_SLOTS[family]
    if base in known:  # a variant ("sns@qwen2.5-0.5b") starts at its base method's slot
        return known.index(base)
    spare = len(PALETTES[family]) - len(known)  # a new name starts among the slots no known method owns
    return len(known) + zlib.crc32(method.encode()) % spare


def _slot_style(method: str, family: str, slot: int) -> SeriesStyle:
    palette = PALETTES[family]
    round_ = slot // len(palette)
    ablation = is_ablation(method)
    linestyle = ABLATION_LINESTYLE if ablation else "-"
    if round_:
        linestyle = (0, (1, 1)) if round_ % 2 else (0, (5, 1, 1, 1))
    return SeriesStyle(color=palette[slot % len(palette)], linestyle=linestyle, marker=MARKERS[slot % len(MARKERS)],
                       hatch=ABLATION_HATCH if ablation else None, label=display_name(method))


def category_styles(values) -> dict[str, SeriesStyle]:
    """Styles for categories that are not methods (backbones, datasets, head/tail items), in order given."""
    distinct = list(dict.fromkeys(values))
    return {v: SeriesStyle(color=CATEGORY_COLOURS[i % len(CATEGORY_COLOURS)], marker=MARKERS[i % len(MARKERS)],
                           label=display_name(v)) for i, v in enumerate(distinct)}


def series_styles(column: str | None, values) -> dict[str, SeriesStyle]:
    """Method styles when `column` holds methods (named "method"), category styles otherwise."""
    return method_styles(values) if column == "method" else category_styles(values)


def family_handles(methods) -> list:
    """Legend entries explaining method colours: one per family present (cool or warm), plus the ablation
    hatching if any method is an ablation."""
    handles = [Patch(facecolor=FAMILY_COLOURS[family], label=label) for family, label in FAMILY_LABELS.items()
               if any(method_family(m) == family for m in methods)]
    return handles + ablation_handles(methods)


def ablation_handles(methods) -> list:
    """[the "ablation" hatch entry] if any of `methods` is an ablation, else []."""
    if not any(is_ablation(str(m)) for m in methods):
        return []
    return [Patch(facecolor="white", edgecolor="#555555", hatch=ABLATION_HATCH, linewidth=0.6, label=ABLATION_LABEL)]


# ------------------------------------------------------------------------------------ legends, axes

def legend_above(fig, handles: list, ncol: int | None = None):
    """A figure legend above all panels (off the data; the bottom stays free for a shared axis label), in as
    many columns as fit the figure's width; the figure grows by the legend's height so the panels keep
    theirs. Returns the legend (None without handles)."""
    if not handles:
        return None
    labels = [h.get_label() for h in handles]
    ncol = ncol or _legend_columns(labels, fig.get_figwidth())
    fig.set_figheight(fig.get_figheight() + 0.14 * math.ceil(len(labels) / ncol) + 0.06)
    return fig.legend(handles=handles, labels=labels, loc="outside upper center", ncol=ncol)


def _legend_columns(labels: list[str], width_in: float) -> int:
    """Most columns whose estimated width (7 pt text, entries filled column by column) fits `width_in`."""
    entry = [0.36 + 0.052 * len(label) for label in labels]  # handle + gaps + text, inches
    for ncol in range(len(labels), 1, -1):
        rows = math.ceil(len(labels) / ncol)
        columns = [entry[i:i + rows] for i in range(0, len(entry), rows)]
        if sum(max(c) for c in columns) <= 0.97 * width_in:
            return len(columns)
    return 1


def value_limits(low: float, high: float) -> tuple[float, float, bool]:
    """(lower, upper, zoomed) for a value axis whose bars/error bars span low..high: from 0 unless that
    would leave the differences unreadable (low > ZOOM_RATIO * high), then from a round number under low."""
    low, high = float(low), float(high)
    pad = 0.08 * (high - low) if high > low else 0.05 * abs(high) or 0.05
    if low > 0 and low > ZOOM_RATIO * high:
        step = _round_step((high - low + 2 * pad) / 4)
        return round(math.floor((low - pad) / step) * step, 12), high + pad, True
    return min(0.0, low - pad), max(0.0, high + pad), False


def _round_step(size: float) -> float:
    """Largest 1, 2 or 5 times a power of ten not above `size`."""
    power = 10 ** math.floor(math.log10(size))
    return max(m for m in (1, 2, 5) if m * power <= size * (1 + 1e-9)) * power


def zoom_note(label: str, lower: float) -> str:
    """Axis label saying the axis does not start at 0."""
    return f"{label} (axis starts at {lower:.4g})"
