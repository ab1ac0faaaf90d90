"""Run the numbered study notebooks in order through papermill and report wall time per notebook.

Executed notebooks go to `<runs>/<profile>/<dataset>/executed/` (git-ignored). Papermill runs them on the
project's own kernel `hnlm` (registered for the current interpreter when missing), so a fresh machine can
never fail with NoSuchKernel or pick up another Python. What a notebook prints (the `[outputs] ...` lines, the
"CF runs" progress bar, warnings) reaches the terminal as it runs, indented under the notebook's name; tables
and figures stay in the executed notebook. A notebook whose inputs the dataset lacks (hnlm.study.inputs) is
skipped with its reason in one line; a failing one prints its failing cell's first lines and the exception's
last line.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

from hnlm.atomic import write_text
from hnlm.data import load_dataset
from hnlm.data.checks import DatasetWarning
from hnlm.errors import UserFacingError
from hnlm.llm.catalog import SPEC_VAR, redact
from hnlm.paths import PROJECT_ROOT
from hnlm.study.context import default_out_dir
from hnlm.study.inputs import skip_reason
from hnlm.study.settings import settings

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
KERNEL_NAME = "hnlm"

# The study, in order. A notebook joins this list only once the package code it presents has landed.
STUDY_NOTEBOOKS = [
    "01_data",
    "02_profiles",
    "03_sns",
    "04_alignment",
    "05_hnlmrec",
    "06_main_results",
    "07_false_negatives",
    "08_popularity",
    "09_sparsity",
    "10_generalisation",
    "11_llm_size",
]


def ensure_kernel() -> str:
    """Register kernel `hnlm` for this interpreter (as `make venv` does) unless it already points here."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install
    install(kernel_name=KERNEL_NAME, display_name="hnlm (.venv)", prefix=sys.prefix)
    print(f"registered Jupyter kernel {KERNEL_NAME!r} for {sys.executable}")
    return KERNEL_NAME


def notebook_path(name: str) -> Path:
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    if not path.exists():
        raise UserFacingError(f"no notebook {path}; known: {', '.join(STUDY_NOTEBOOKS)}")
    return path


class IndentedStream:
    """Relays a kernel's stdout or stderr to `stream`, indenting each line; a carriage return (a progress bar
    redrawing its line) starts a line too, so the bar keeps its indent."""

    def __init__(self, stream, indent: str = "    "):
        self.stream, self.indent, self.at_line_start = stream, indent, True

    def write(self, text: str) -> None:
        for piece in re.split(r"([\r\n])", text):
            if piece in ("\r", "\n"):
                self.stream.write(piece)
                self.at_line_start = True
            elif piece:
                self.stream.write(self.indent + piece if self.at_line_start else piece)
                self.at_line_start = False

    def flush(self) -> None:
        self.stream.flush()


def run_notebook(name: str, parameters: dict, executed_dir: Path, kernel: str) -> float:
    """Execute one notebook, relaying what it prints; returns its wall time. Papermill's error names the
    failing cell."""
    import papermill

    executed_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    papermill.execute_notebook(str(notebook_path(name)), str(executed_dir / f"{name}.ipynb"),
                               parameters=parameters, kernel_name=kernel, cwd=str(NOTEBOOK_DIR),
                               progress_bar=False, log_output=False,
                               stdout_file=IndentedStream(sys.stdout), stderr_file=IndentedStream(sys.stderr))
    return time.perf_counter() - t0


def study_data(dataset: str, profile: str):
    """The study's dataset as the notebooks load it (a bad name or a changed file stops here, in one line);
    01_data reports its warnings, so they are not repeated here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        return load_dataset(dataset, seed=settings(profile, "01_data")["split_seed"])


def failure_lines(err: Exception, cell_lines: int = 4) -> list[str]:
    """A failed notebook in a few lines: its failing cell's first lines and failing line, and the exception's
    last line (papermill's PapermillExecutionError carries them); another error's last line."""
    last = [line for line in f"{getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', err)}"
            .splitlines() if line.strip()][-1:]
    source = getattr(err, "source", None)
    if not source:
        return last
    lines = [line for line in source.splitlines() if line.strip()]
    more = ["  ..."] if len(lines) > cell_lines else []
    failing = failing_line(getattr(err, "traceback", None) or [])
    return ([f"in cell {getattr(err, 'exec_count', '?')}:"] + ["  " + line for line in lines[:cell_lines]] + more
            + ([f"failing {failing}"] if failing else []) + last)


ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")


def failing_line(traceback: list[str]) -> str | None:
    """'line N: code' of the arrow IPython's traceback puts in the notebook cell's frame."""
    for entry in traceback:
        text = ANSI_CODE.sub("", entry)
        if text.startswith("Cell In"):
            for line in text.splitlines():
                found = re.match(r"-+>\s*(\d+)\s?(.*)", line)
                if found:
                    return f"line {found[1]}: {found[2].strip()}"
    return None


def skipped_lines(report: dict) -> list[str]:
    """The study summary's skipped notebooks, those skipped for the same reason on one line."""
    by_reason = {}
    for name, r in report.items():
        if r.get("skipped"):
            by_reason.setdefault(r["skipped"], []).append(name)
    return [f"  skipped {', '.join(names)}: {reason}" for reason, names in by_reason.items()]


def notebook_llm(llm: str) -> str:
    """The --llm spec as the notebooks, the log and the timing report get it: without the credentials of its
    URL (papermill writes parameters into the executed notebook). The full spec reaches the kernels through
    their environment (catalog.SPEC_VAR), where only make_backend reads it."""
    public = redact(llm)
    if public != llm:
        os.environ[SPEC_VAR] = llm
    return public


def run_study(profile: str, dataset: str, llm: str, notebooks=None, seeds=None, out_dir=None,
              stop_on_error: bool = False) -> dict:
    """Run `notebooks` (default: the whole study) and return {name: {"wall_s", "ok", "error" or "skipped": why}}."""
    names = list(notebooks or STUDY_NOTEBOOKS)
    for name in names:
        notebook_path(name)
    out = Path(out_dir) if out_dir else default_out_dir(profile, dataset)
    llm = notebook_llm(llm)
    params = {"dataset": dataset, "llm": llm, "profile": profile, "seeds": list(seeds) if seeds else None,
              "out_dir": str(out)}
    data = study_data(dataset, profile)
    kernel = ensure_kernel()
    report = {}
    print(f"study: profile {profile}, dataset {dataset}, llm {llm} -> {out}")
    for name in names:
        reason = skip_reason(name, data, llm, profile, report)
        if reason:
            report[name] = {"ok": False, "wall_s": 0.0, "skipped": reason}
            print(f"  {name:<22} skipped: {reason}", flush=True)
            continue
        print(f"  {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            wall = run_notebook(name, params, out / "executed", kernel)
            report[name] = {"ok": True, "wall_s": round(wall, 1)}
            print(f"  {name:<22} {wall:8.1f} s", flush=True)
        except Exception as err:  # papermill's error carries the failing cell; keep going to the next
            wall = time.perf_counter() - t0
            report[name] = {"ok": False, "wall_s": round(wall, 1), "error": f"{type(err).__name__}: {err}"[:2000]}
            print(f"  {name:<22} {wall:8.1f} s  FAILED (see {out / 'executed' / (name + '.ipynb')})", flush=True)
            print("\n".join("      " + line for line in failure_lines(err)), flush=True)
            if stop_on_error:
                break
    total = sum(r["wall_s"] for r in report.values())
    print(f"  {'total':<22} {total:8.1f} s")
    for line in skipped_lines(report):
        print(line)
    write_text(out / "study_timings.json", json.dumps({"params": params, "notebooks": report,
                                                       "total_s": round(total, 1)}, indent=2))
    return report
