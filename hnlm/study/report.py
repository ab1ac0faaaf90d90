"""`hnlm study report`: the results section of the findings (results/<dataset>/README.md) as GitHub markdown,
built only from the result files a `full` study writes to results/<dataset>/ (`NotebookRun.write_result`).
Each table is preceded by the files it comes from; a missing file is named with the notebook that makes it,
never filled in. `--write` replaces the block between RESULTS_BEGIN and RESULTS_END of the findings file
(`findings_file`, or the FILE given), so a rerun updates it mechanically.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from hnlm.atomic import write_text
from hnlm.cf.trainer import TrainConfig
from hnlm.errors import MissingInputError, UserFacingError
from hnlm.paths import PROJECT_ROOT
from hnlm.plot_style import display_name

FINDINGS_FILE = "README.md"                      # in results/<dataset>/: the findings the tables back
RESULTS_BEGIN = "<!-- results:begin -->"
RESULTS_END = "<!-- results:end -->"
METRIC = TrainConfig.metric                      # model selection and every comparison of the study
CUTOFF = METRIC.split("@")[1]
MAIN_METRICS = (f"recall@{CUTOFF}", f"ndcg@{CUTOFF}")
POPULARITY_COLUMNS = tuple(f"{c}@{CUTOFF}" for c in ("head_recall", "tail_recall", "tail_share", "coverage"))
GAIN_LEGEND = (f"Δ: relative gain in test {METRIC} [95% interval] (p of the paired t-test over seeds, "
               "p of the crossed paired bootstrap over seeds and users; each raw / Holm-adjusted over the methods "
               "compared with that baseline)")


@dataclass(frozen=True)
class Source:
    """One result file of a notebook; `key` picks one table out of the notebook's JSON."""
    notebook: str
    filename: str
    key: str | None = None


@dataclass(frozen=True)
class Section:
    title: str
    sources: tuple[Source, ...]
    render: Callable[..., str]   # one DataFrame per source -> markdown


# ------------------------------------------------------------------------------------------ formatting

def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def p_value(p) -> str:
    if is_missing(p):
        return "–"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def percent(value) -> str:
    return "–" if is_missing(value) else f"{value:+.1%}"


def interval(low, high) -> str:
    return f"[{percent(low)}, {percent(high)}]"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def shown_path(path: Path) -> str:
    """The path as the README names it: relative to the checkout when inside it."""
    path = path.resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def in_order(values) -> list:
    return list(dict.fromkeys(values))


# ------------------------------------------------------------------------------------------ reading

def read(folder: Path, source: Source) -> pd.DataFrame:
    path = folder / source.filename
    if source.key is None:
        return pd.read_csv(path)
    result = json.loads(path.read_text(encoding="utf-8"))
    if source.key not in result:
        raise UserFacingError(f"{path} has no {source.key!r} table: rerun notebook {source.notebook}")
    return pd.DataFrame(result[source.key])


def rerun_hint(source: Source, dataset: str) -> str:
    return f"`hnlm study --notebooks {source.notebook} --dataset {dataset}`"


def source_line(folder: Path, sources) -> str:
    names = [shown_path(folder / s.filename) + (f" (`{s.key}`)" if s.key else "") for s in sources]
    return "Source: " + ", ".join(names)


def missing_line(folder: Path, dataset: str, title: str, missing) -> str:
    files = ", ".join(shown_path(folder / s.filename) for s in missing)
    hints = " and ".join(in_order(rerun_hint(s, dataset) for s in missing))
    return f"_{title}: {files} missing; run {hints}._"


# ------------------------------------------------------------------------------------------ tables

def table_cell(cells: pd.DataFrame, key: tuple, column: str) -> str:
    return str(cells.loc[key, column]) if key in cells.index else "–"


def seeds_cell(cells: pd.DataFrame, method: str, backbones: list[str]) -> str:
    counts = [table_cell(cells, (method, b), "seeds") for b in backbones]
    return counts[0] if len(set(counts)) == 1 else " / ".join(counts)


def main_table(table: pd.DataFrame) -> str:
    """One row per method (the CSV's order), mean ± std of MAIN_METRICS for each backbone side by side."""
    backbones = in_order(table["backbone"])
    cells = table.set_index(["method", "backbone"])
    header = ["method", *[f"{display_name(b)} {m}" for b in backbones for m in MAIN_METRICS], "seeds"]
    rows = [[display_name(method), *[table_cell(cells, (method, b), m) for b in backbones for m in MAIN_METRICS],
             seeds_cell(cells, method, backbones)] for method in in_order(table["method"])]
    return markdown_table(header, rows)


def flag(column: pd.Series) -> pd.Series:
    """A True/False column as booleans, whether the CSV reader parsed it or left it as text."""
    return column.astype(str) == "True"


def p_cell(row: dict, column: str) -> str:
    """The raw p, and its Holm adjustment when the table has one (result files from before it have none)."""
    holm = row.get(f"{column}_holm")
    return p_value(row[column]) + ("" if holm is None else f" / {p_value(holm)}")


def gain_rows(part: pd.DataFrame) -> list[list]:
    return [[display_name(r["method"]), f"{r['mean']:.4f}", percent(r["relative_gain"]),
             interval(r["gain_ci_low"], r["gain_ci_high"]), p_cell(r, "t_p"), p_cell(r, "bootstrap_p")]
            for r in part.to_dict("records")]


def comparison_tables(comparisons: pd.DataFrame) -> str:
    """Per backbone: each method against the baseline chosen on validation, in METRIC."""
    chosen = comparisons[(comparisons["metric"] == METRIC) & flag(comparisons["baseline_chosen_on_valid"])]
    blocks = []
    for (backbone, baseline), part in chosen.groupby(["backbone", "baseline"], sort=False):
        header = ["method", f"test {METRIC}", f"Δ vs **{display_name(baseline)}**", "95% interval",
                  "p (t-test, seeds; raw / Holm)", "p (bootstrap; raw / Holm)"]
        intro = (f"{display_name(backbone)}: baseline **{display_name(baseline)}** (test {METRIC} "
                 f"{part['baseline_mean'].iloc[0]:.4f}), {int(part['seeds'].max())} seeds, "
                 f"{int(part['users'].max())} users")
        blocks.append(intro + "\n\n" + markdown_table(header, gain_rows(part)))
    return "\n\n".join(blocks) or f"No {METRIC} comparison against a baseline chosen on validation in this file."


def cap_count(part: pd.DataFrame) -> str:
    """"k of N runs" stopped by the epoch cap, with the methods they belong to."""
    capped = part[flag(part["stopped_by_cap"])]
    text = f"{len(capped)} of {len(part)} runs"
    if len(capped):
        by_method = capped["method"].value_counts(sort=False)
        text += " (" + ", ".join(f"{display_name(m)} {n}" for m, n in by_method.items()) + ")"
    return text


def convergence_lines(runs: pd.DataFrame) -> str:
    lines = []
    for backbone, part in runs.groupby("backbone", sort=False):
        best = part.groupby("method", sort=False)["best_epoch"].mean()
        epochs = ", ".join(f"{display_name(m)} {e:.1f}" for m, e in best.items())
        lines.append(f"- {display_name(backbone)}: mean best epoch {epochs}; stopped by the epoch cap: "
                     f"{cap_count(part)}.")
    return "\n".join(lines)


def gain_cell(row: dict) -> str:
    return (f"{percent(row['relative_gain'])} {interval(row['gain_ci_low'], row['gain_ci_high'])} "
            f"({p_cell(row, 't_p')}, {p_cell(row, 'bootstrap_p')})")


def baseline_header(comparisons: pd.DataFrame, baseline: str) -> str:
    chosen = flag(comparisons.loc[comparisons["baseline"] == baseline, "baseline_chosen_on_valid"]).any()
    return f"Δ vs **{display_name(baseline)}**" + (" (chosen on valid)" if chosen else "")


def method_table(table: pd.DataFrame, comparisons: pd.DataFrame) -> str:
    """Rows of a notebook's mean ± std table, test METRIC and one Δ column per baseline it was compared with."""
    comparisons = comparisons[comparisons["metric"] == METRIC]
    baselines = in_order(comparisons["baseline"])
    cells = {(r["backbone"], r["method"], r["baseline"]): gain_cell(r) for r in comparisons.to_dict("records")}
    header = ["backbone", "method", f"test {METRIC}", *[baseline_header(comparisons, b) for b in baselines]]
    rows = [[display_name(r["backbone"]), display_name(r["method"]), r[METRIC],
             *["baseline" if r["method"] == b else cells.get((r["backbone"], r["method"], b), "–")
               for b in baselines]]
            for r in table.to_dict("records")]
    return GAIN_LEGEND + "\n\n" + markdown_table(header, rows)


def ablation_gains(comparisons: pd.DataFrame) -> str:
    """Each method against its own ablations (hnlm.study.compare.ablation_table) in METRIC."""
    header = ["backbone", "method", "ablation", f"test {METRIC}", "ablation's", "Δ over the ablation"]
    rows = [[display_name(r["backbone"]), display_name(r["method"]), display_name(r["baseline"]), f"{r['mean']:.4f}",
             f"{r['baseline_mean']:.4f}", gain_cell(r)]
            for r in comparisons[comparisons["metric"] == METRIC].to_dict("records")]
    return GAIN_LEGEND + "\n\n" + markdown_table(header, rows)


def popularity_table(table: pd.DataFrame) -> str:
    header = ["backbone", "method", *[c.replace("_", " ") for c in POPULARITY_COLUMNS]]
    rows = [[display_name(r["backbone"]), display_name(r["method"]), *[r[c] for c in POPULARITY_COLUMNS]]
            for r in table.to_dict("records")]
    return markdown_table(header, rows)


def sparsity_table(summary: pd.DataFrame) -> str:
    """Test METRIC per user group of training-history length, with the relative gain over the reference method."""
    gain = next(c for c in summary.columns if c.startswith("gain_vs_"))
    histories = in_order(summary["history"])
    cells = {(r["backbone"], r["method"], r["history"]): f"{r[METRIC]:.4f} ({percent(r[gain])})"
             for r in summary.to_dict("records")}
    keys = in_order(zip(summary["backbone"], summary["method"]))
    header = ["backbone", "method", *[f"history {h}" for h in histories]]
    rows = [[display_name(b), display_name(m), *[cells.get((b, m, h), "–") for h in histories]] for b, m in keys]
    intro = f"Test {METRIC} (relative gain vs {display_name(gain.removeprefix('gain_vs_'))})"
    return intro + "\n\n" + markdown_table(header, rows)


# ------------------------------------------------------------------------------------------ the report

MAIN_SOURCE = Source("06_main_results", "06_main_table.csv")
SECTIONS = (
    Section(f"Main table (notebook 06): test {' and '.join(MAIN_METRICS)}, mean ± std over seeds",
            (MAIN_SOURCE,), main_table),
    Section(f"Against the strongest classic sampler, chosen on validation {METRIC} (notebook 06)",
            (Source("06_main_results", "06_comparisons.csv"),), comparison_tables),
    Section("Convergence (notebook 06): mean epoch of the best validation score, runs stopped by the epoch cap",
            (Source("06_main_results", "06_runs.csv"),), convergence_lines),
    Section("Alignment, ablations and the methods built to beat the strongest sampler (notebook 04)",
            (Source("04_alignment", "04_table.csv"), Source("04_alignment", "04_alignment.json", "comparisons")),
            method_table),
    Section("What the LLM adds: each method against its own ablations (notebook 04)",
            (Source("04_alignment", "04_ablations.csv"),), ablation_gains),
    Section("HNLMRec, text vs soft-prompt CF signal (notebook 05)",
            (Source("05_hnlmrec", "05_table.csv"), Source("05_hnlmrec", "05_hnlmrec.json", "comparisons")),
            method_table),
    Section(f"Popularity (notebook 08): head vs long-tail items, top-{CUTOFF}, mean ± std over seeds",
            (Source("08_popularity", "08_popularity_table.csv"),), popularity_table),
    Section("Sparsity (notebook 09): users grouped by training-history length",
            (Source("09_sparsity", "09_sparsity.json", "summary"),), sparsity_table),
    Section("Transfer (notebook 10): the encoder fine-tuned on the source dataset, applied untuned to the target",
            (Source("10_generalisation", "10_table.csv"), Source("10_generalisation", "10_comparisons.csv")),
            method_table),
    Section("LLM size (notebook 11)",
            (Source("11_llm_size", "11_table.csv"), Source("11_llm_size", "11_comparisons.csv")), method_table),
)


def render_section(folder: Path, dataset: str, section: Section) -> str:
    missing = [s for s in section.sources if not (folder / s.filename).exists()]
    if missing:
        return missing_line(folder, dataset, section.title, missing)
    frames = [read(folder, s) for s in section.sources]
    return "\n\n".join([f"**{section.title}**", source_line(folder, section.sources), section.render(*frames)])


def render_report(folder: Path, dataset: str, main_only: bool = False) -> str:
    """The whole results section (`main_only`: its main table, as the top README shows it); raises if even
    the main table is missing."""
    if not (folder / MAIN_SOURCE.filename).exists():
        raise MissingInputError(f"{folder / MAIN_SOURCE.filename} is missing: run "
                                f"{rerun_hint(MAIN_SOURCE, dataset)} (profile full) first")
    command = "hnlm study report --main" if main_only else "hnlm study report"
    head = f"<!-- made by `{command}` from {shown_path(folder)}/: rerun it, do not edit this block -->"
    sections = SECTIONS[:1] if main_only else SECTIONS
    return "\n\n".join([head, *[render_section(folder, dataset, s) for s in sections]])


def findings_file(folder: Path) -> Path:
    """The findings of the results in `folder` (results/<dataset>/): where `--write` puts the tables."""
    return folder / FINDINGS_FILE


def write_between_markers(path: Path, markdown: str) -> None:
    """Replace the text between RESULTS_BEGIN and RESULTS_END in `path` (markers kept, the rest untouched)."""
    text = path.read_text(encoding="utf-8")
    one_block = text.count(RESULTS_BEGIN) == text.count(RESULTS_END) == 1
    if not one_block or text.index(RESULTS_BEGIN) > text.index(RESULTS_END):
        raise UserFacingError(f"{path} needs exactly one {RESULTS_BEGIN} line followed by one {RESULTS_END} line "
                              "where the results go")
    before, rest = text.split(RESULTS_BEGIN)
    after = rest.split(RESULTS_END)[1]
    write_text(path, f"{before}{RESULTS_BEGIN}\n{markdown}\n{RESULTS_END}{after}")
