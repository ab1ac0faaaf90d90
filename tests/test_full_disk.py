"""A full disk and a read-only folder, made for real (a small tmpfs the test mounts, then remounts read-only):
one `error:` line naming the folder, exit 2, and nothing half-written that a rerun would trust.

Mounting needs root (or CAP_SYS_ADMIN); where it is not permitted the tests skip and say so."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hnlm.atomic import WriteError
from hnlm.study.context import NotebookRun


@pytest.fixture
def small_mount(tmp_path):
    """A 32 KiB tmpfs: too small for ml-100k's prepared dataset (about 200 KiB)."""
    folder = tmp_path / "mnt"
    folder.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def hnlm(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hnlm", *argv], capture_output=True, text=True,
                          env={**os.environ, **env})


def leftovers(folder: Path) -> list[str]:
    """Files a rerun could trust: any file but an empty folder tree."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_dataset_cache_on_a_full_disk_is_one_line_and_leaves_no_entry(small_mount):
    proc = hnlm("data", "stats", "ml-100k", HNLM_ARTIFACTS=str(small_mount))
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"error: cannot write into {small_mount}") and "the disk is full" in err
    assert leftovers(small_mount) == []      # no meta.json (which marks a complete entry), no temporary file


def test_read_only_artefact_root_is_one_line_naming_the_folder(small_mount):
    read_only(small_mount)
    proc = hnlm("data", "stats", "ml-100k", HNLM_ARTIFACTS=str(small_mount / "root"))
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err, err
    assert f"cannot write into {small_mount}" in err and "read-only file system" in err


def test_a_result_that_does_not_fit_keeps_the_previous_one_whole(small_mount, monkeypatch):
    """A notebook's result table on a full disk: the earlier file stays as it was, nothing else is left."""
    monkeypatch.setenv("HNLM_RESULTS", str(small_mount / "results"))
    run = NotebookRun("06_main_results", "ml-100k", "qwen2.5-0.5b", "full", [0], small_mount / "run", {})
    run.write_result("table.json", json.dumps({"rows": 1}))
    with pytest.raises(WriteError, match=f"cannot write into {small_mount}.*the disk is full"):
        run.write_result("table.json", json.dumps({"rows": "x" * 40_000}))
    assert json.loads((small_mount / "run" / "table.json").read_text()) == {"rows": 1}
    assert leftovers(small_mount) == ["results/ml-100k/table.json", "run/table.json"]
    read_only(small_mount)
    with pytest.raises(WriteError, match="read-only file system"):
        run.write_result("table.json", json.dumps({"rows": 2}))
    assert json.loads((small_mount / "run" / "table.json").read_text()) == {"rows": 1}
