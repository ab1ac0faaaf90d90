"""Crash consistency of the whole study, tested like a database: `hnlm study --profile smoke` is killed with
SIGKILL (its whole process group: the runner and the notebook kernel, as a power cut would) at 20 random points,
resumed by running the same command again each time, and its final product files must equal an uninterrupted
run's.

Scope, to keep the test to a few minutes on two cores: notebooks 06_main_results (the CF grid and its run store,
result tables, figures) and 07_false_negatives (which reads 06's runs); 01_data adds only restart time. The kills
take turns: a random 0.3-10 s from the start (start-up, data loading); a random 0-2 s after the attempt's n-th new
product file (n random in 1-6: mid-training, mid-write), which reaches later stages as the run store fills; a
random 0-8 s after the last notebook starts. The stages hit are printed. After every kill no product file
may be torn: each JSON, CSV, NPZ, PNG and PDF must read whole. At the end:
- the run store holds each (backbone, method, seed) run once, with its .json and .npz;
- every product file equals the uninterrupted run's byte for byte, except fields that time the work (JSON keys
  and CSV columns `timings` or with `s` as a word of their name: wall_s, train_s_per_epoch) and the study's
  timing report study_timings.json, which differ by nature; figures compare byte for byte with
  SOURCE_DATE_EPOCH set;
- the executed notebooks (papermill's logs, not read by the study) and temporary files a kill left behind
  (hidden `.<name>.*.tmp`, never read: every reader opens the final name) are not product files.

`hnlm finetune` and `hnlm sns` (SmolLM2 in float32, smoke sizes: a 2-step fine-tune with a 2-user bank, SNS for
4 users in chunks of 2) get the same treatment, 4 and 3 kills on a schedule (the delays random): one a random
few seconds from the start (start-up, data, teacher or LLM load), then each a random delay after a file the
stage writes appears in the attempt (see FINETUNE_KILLS, SNS_KILLS; one may miss when its stage outruns it).
Their product files are the run folder (without checkpoints/, the trainer's resumption state) and the SNS
folder; they must equal an uninterrupted run's byte for byte, except the fields that time the work or record
how this process got there (summary.json's train_runtime_s, resumed_from_step, finetune_reused; SNS meta's
generation counts: already done, generated, from the LLM cache), and negatives.jsonl, an append log compared
as the records its reader sees (a kill leaves a torn line that it skips).
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hnlm.semantic.sns import read_negatives
from hnlm.study.experiments import RUN_LABELS

NOTEBOOKS = ["06_main_results", "07_false_negatives"]
KILLS = 20
TIMING_KEY = re.compile(r"(^timings$|(^|_)s($|_))")      # wall_s, train_s_per_epoch, eval_s, ...


def study_env(root: Path) -> dict:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    for var, sub in (("HNLM_ARTIFACTS", "artifacts"), ("HNLM_RUNS", "runs"), ("HNLM_FIGURES", "figures"),
                     ("HNLM_RESULTS", "results"), ("HNLM_LLM_CACHE", "artifacts/llm_cache"),
                     ("HNLM_ENCODER_CACHE", "artifacts/encoders")):
        env[var] = str(root / sub)
    return env


def command(root: Path) -> list[str]:
    return [sys.executable, "-m", "hnlm", "study", "--profile", "smoke", "--notebooks", *NOTEBOOKS,
            "--out-dir", str(root / "out")]


def product_files(root: Path) -> dict[str, Path]:
    found = {}
    for base in ("out", "figures"):
        for path in (root / base).rglob("*"):
            rel = str(path.relative_to(root))
            if path.is_file() and "/executed/" not in rel and not path.name.startswith("."):
                found[rel] = path
    return found


def mtimes(root: Path) -> dict[str, int]:
    stamps = {}
    for rel, path in product_files(root).items():
        try:
            stamps[rel] = path.stat().st_mtime_ns
        except FileNotFoundError:     # replaced between listing and stat
            pass
    return stamps


def read_whole(path: Path) -> None:
    """Raise unless `path` reads as a complete file of its kind."""
    data = path.read_bytes()
    if path.suffix == ".parquet":
        pd.read_parquet(path)
    elif path.suffix == ".pt":
        import torch
        torch.load(path, weights_only=True)
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file
        load_file(path)
    elif path.suffix == ".json":
        json.loads(data)
    elif path.suffix == ".csv":
        pd.read_csv(path)
    elif path.suffix == ".npz":
        with np.load(path) as arrays:
            [arrays[k] for k in arrays.files]
    elif path.suffix == ".png":
        assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82"), "torn PNG"
    elif path.suffix == ".pdf":
        assert data.rstrip().endswith(b"%%EOF"), "torn PDF"


def assert_none_torn(files: dict[str, Path], when: str) -> None:
    for rel, path in files.items():
        try:
            read_whole(path)
        except Exception as err:  # noqa: BLE001 - any failure to read is a torn file
            pytest.fail(f"{when}: {rel} is torn: {err}")


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not TIMING_KEY.search(k)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def same_product(a: Path, b: Path) -> bool:
    if a.suffix == ".json":
        return without_timings(json.loads(a.read_text())) == without_timings(json.loads(b.read_text()))
    if a.suffix == ".csv":
        fa, fb = pd.read_csv(a), pd.read_csv(b)
        keep = [c for c in fa.columns if not TIMING_KEY.search(c)]
        return list(fa.columns) == list(fb.columns) and fa[keep].equals(fb[keep])
    return a.read_bytes() == b.read_bytes()


def attempt(root: Path, rng: random.Random, log: Path, kind: str) -> str | None:
    """Run the study and kill its process group: `early`, a random 0.3-10 s from its start (start-up, data
    loading); `writes`, a random 0-2 s after its n-th new product file (n random in 1-6); `late`, a random 0-8 s
    after the last notebook starts. Returns the notebook it was in when killed and what it wrote last
    ("startup" before the first notebook), or None when it finished first."""
    before = mtimes(root)
    with log.open("w") as out:
        proc = subprocess.Popen(command(root), env=study_env(root), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + rng.uniform(0.3, 10) if kind == "early" else None
    wanted, written = rng.randint(1, 6), []
    while proc.poll() is None:
        written = sorted(mtimes(root).items() - before.items(), key=lambda item: item[1])
        if deadline is None and (len(written) >= wanted if kind == "writes" else
                                 kind == "late" and f"  {NOTEBOOKS[-1]} ..." in log.read_text()):
            deadline = time.monotonic() + rng.uniform(0, 2 if kind == "writes" else 8)
        if deadline is not None and time.monotonic() >= deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            started = re.findall(r"^  (\d\d_\w+) \.\.\.$", log.read_text(), re.M)
            last = written[-1][0] if written else ""
            kind = "run store" if "/cf_runs/" in last else "figures" if last.startswith("figures") else \
                "results" if last else "before any write"
            return f"{started[-1]} ({kind})" if started else "startup"
        time.sleep(0.05)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return None


@pytest.mark.slow
def test_killed_study_resumes_to_the_same_results(tmp_path):
    chaos, clean = tmp_path / "study", tmp_path / "clean"     # one path for both: files may record it
    t0 = time.perf_counter()
    subprocess.run(command(chaos), env=study_env(chaos), check=True, capture_output=True)
    chaos.rename(clean)
    reference = {rel: clean / rel for rel in product_files(clean)}
    rng = random.Random(20261207)
    stages, resumes = [], 0
    while len(stages) < KILLS:
        stage = attempt(chaos, rng, tmp_path / "attempt.log", kind=("early", "writes", "late")[resumes % 3])
        resumes += 1
        if stage is not None:
            stages.append(stage)
            assert_none_torn(product_files(chaos), f"after kill {len(stages)} (in {stage})")
    subprocess.run(command(chaos), env=study_env(chaos), check=True, capture_output=True)   # finish, untouched
    final = product_files(chaos)

    runs = sorted(p for p in final if "/cf_runs/" in p)
    assert sorted(runs) == sorted(p for p in reference if "/cf_runs/" in p)
    by_key = {}
    for p in runs:
        if p.endswith(".json"):
            stored = json.loads(final[p].read_text())
            by_key.setdefault(stored["key"], []).append({k: v for k, v in stored.items() if k not in RUN_LABELS})
    # one training per key: a tuning trial and the table row at its chosen point share it (a relabelled copy)
    assert all(all(body == same[0] for body in same) for same in by_key.values())
    timing_reports = {"out/study_timings.json"}
    assert set(final) == set(reference)
    mismatches = [rel for rel in sorted(reference) if rel not in timing_reports
                  and not same_product(reference[rel], final[rel])]
    leftover_tmp = sorted(str(p.relative_to(chaos)) for p in chaos.rglob(".*.tmp"))
    print(f"\nchaos: {len(stages)} kills ({', '.join(f'{s}: {stages.count(s)}' for s in sorted(set(stages)))}), "
          f"{resumes} resumes, {len(reference) - len(timing_reports)} files compared, {len(mismatches)} mismatches, "
          f"{len(leftover_tmp)} temporary files left by kills, {time.perf_counter() - t0:.0f} s")
    assert not mismatches, mismatches
    assert len({stage.split(" ")[0] for stage in stages}) >= 2, stages


# ------------------------------------------------------------ hnlm finetune and hnlm sns

SMOKE_FINETUNE = ["finetune", "--dataset", "ml-100k", "--llm", "smollm2-135m", "--max-steps", "2",
                  "--batch-size", "2", "--save-steps", "1", "--max-length", "160", "--quality-pairs", "4",
                  "--centring-queries", "4", "--infer-users", "2", "--infer-batch", "1", "--teacher", "mf",
                  "--teacher-epochs", "1"]
SMOKE_SNS = ["sns", "--dataset", "ml-100k", "--llm", "smollm2-135m", "--context", "history", "--limit-users", "4",
             "--chunk", "2"]
# (file written in the attempt, or None: from the start; delay range in s): each kill in the stage it names
FINETUNE_KILLS = [(None, (3, 12), "start-up, data, teacher"),
                  ("examples.parquet", (0, 2), "LLM load, trainer set-up, first step"),
                  ("checkpoints/checkpoint-", (0, 3), "training, checkpoint saves"),
                  ("final/", (0, 2), "quality and embedding passes, bank writes")]
SNS_KILLS = [(None, (2, 5), "start-up, data, LLM load"),           # before the first prompt is cached
             ("negatives.jsonl", (0, 3), "generation of the next chunk"),
             ("negatives.jsonl", (0, 0.5), "last chunk, embedding, grounding, writes")]
HOW_IT_RAN = {"train_runtime_s", "resumed_from_step", "finetune_reused", "generation"}


def stage_env(root: Path) -> dict:
    return {**study_env(root), "HNLM_LLM_DTYPE": "float32"}


def stage_files(root: Path, checkpoints: bool = False) -> dict[str, Path]:
    """A stage's product files: the fine-tuning run folder (its checkpoints only when asked), the SNS folder."""
    found = {}
    for base in ("artifacts/ml-100k/hnlmrec", "artifacts/ml-100k/sns"):
        for path in (root / base).rglob("*"):
            rel = path.relative_to(root)
            if path.is_file() and (checkpoints or "checkpoints" not in rel.parts) and \
                    not any(part.startswith(".") for part in rel.parts):
                found[str(rel)] = path
    return found


def killed_attempt(args: list[str], root: Path, rng: random.Random, trigger: str | None,
                   delays: tuple[float, float]) -> bool:
    """Run `hnlm <args>` and SIGKILL it a random `delays` s after it writes a file whose path holds `trigger`
    (None: after its start); returns whether it was killed (False: it finished first)."""
    before = {rel: p.stat().st_mtime_ns for rel, p in stage_files(root, checkpoints=True).items()}
    proc = subprocess.Popen([sys.executable, "-m", "hnlm", *args], env=stage_env(root), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + rng.uniform(*delays) if trigger is None else None
    while proc.poll() is None:
        if deadline is None:
            for rel, path in stage_files(root, checkpoints=True).items():
                try:
                    fresh = trigger in rel and path.stat().st_mtime_ns != before.get(rel)
                except FileNotFoundError:
                    continue
                if fresh:
                    deadline = time.monotonic() + rng.uniform(*delays)
                    break
        if deadline is not None and time.monotonic() >= deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    assert proc.returncode == 0, f"hnlm {' '.join(args)} failed"
    return False


def same_stage_product(a: Path, b: Path) -> bool:
    if a.name == "negatives.jsonl":
        cols = list(read_negatives(a).columns)
        return read_negatives(a).sort_values(["user", "item"]).reset_index(drop=True).equals(
            read_negatives(b)[cols].sort_values(["user", "item"]).reset_index(drop=True))
    if a.suffix == ".json":
        def kept(p):
            return {k: v for k, v in without_timings(json.loads(p.read_text())).items() if k not in HOW_IT_RAN}
        return kept(a) == kept(b)
    return same_product(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("args,kills", [(SMOKE_FINETUNE, FINETUNE_KILLS), (SMOKE_SNS, SNS_KILLS)],
                         ids=["finetune", "sns"])
def test_killed_llm_stage_resumes_to_the_same_products(tmp_path, args, kills):
    work, clean = tmp_path / "stage", tmp_path / "clean"     # one path for both: summaries record it
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hnlm", *args], env=stage_env(work), check=True, capture_output=True)
    work.rename(clean)
    reference = stage_files(clean)
    for shared in ("artifacts/ml-100k/data", "artifacts/ml-100k/dataset.json", "artifacts/encoders"):
        copy = shutil.copytree if (clean / shared).is_dir() else shutil.copy2
        (work / shared).parent.mkdir(parents=True, exist_ok=True)
        copy(clean / shared, work / shared)          # prepared data and text vectors: not what is tested here
    rng = random.Random(20261207)
    killed, resumes = [], 0
    for trigger, delays, stage in kills:
        resumes += 1
        if killed_attempt(args, work, rng, trigger, delays):
            killed.append(stage)
            assert_none_torn(stage_files(work), f"after kill {len(killed)} (in {stage})")
    subprocess.run([sys.executable, "-m", "hnlm", *args], env=stage_env(work), check=True, capture_output=True)
    final = stage_files(work)
    mismatches = [rel for rel in sorted(reference) if rel not in final or not same_stage_product(reference[rel],
                                                                                              final[rel])]
    print(f"\nchaos {args[0]}: {len(killed)} kills ({'; '.join(killed)}), {resumes} resumes, "
          f"{len(reference)} files compared, {len(mismatches)} mismatches, {time.perf_counter() - t0:.0f} s")
    assert set(final) == set(reference), set(final) ^ set(reference)
    assert not mismatches, mismatches
    assert len(killed) >= len(kills) - 1, killed      # a kill may miss only when its stage outran its delay
