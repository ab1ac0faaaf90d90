"""hnlm.atomic: a write is all or nothing, and an unwritable folder is one error that names it."""

import os

import pytest

from hnlm import atomic


def test_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "r.json"
    atomic.write_text(target, "old")
    atomic.write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.json"]


def test_failing_writer_keeps_the_old_file(tmp_path):
    target = tmp_path / "r.json"
    atomic.write_text(target, "old")
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_error_naming_it(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(atomic.WriteError, match=str(folder)):
        atomic.write_text(folder / "r.json", "x")


def test_folder_is_replaced_whole_and_a_failed_save_keeps_the_old_one(tmp_path):
    target = tmp_path / "final"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "a.bin").write_bytes(b"1")
    with pytest.raises(RuntimeError), atomic.atomic_dir(target) as tmp:
        (tmp / "a.bin").write_bytes(b"2")
        raise RuntimeError("killed mid-save")
    assert (target / "a.bin").read_bytes() == b"1"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "b.bin").write_bytes(b"3")
    assert sorted(p.name for p in target.iterdir()) == ["b.bin"]     # the new save only, not a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_named_path_gives_the_writer_the_final_name(tmp_path):
    """torch.save names its zip archive after the file: the bytes must not depend on a temporary name."""
    import torch
    direct, atomic_copy = tmp_path / "direct" / "w.pt", tmp_path / "w.pt"
    direct.parent.mkdir()
    torch.save({"w": torch.ones(2)}, direct)
    with atomic.atomic_named_path(atomic_copy) as tmp:
        assert tmp.name == "w.pt" and tmp.parent != tmp_path
        torch.save({"w": torch.ones(2)}, tmp)
    assert atomic_copy.read_bytes() == direct.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["direct", "w.pt"]


def test_append_after_a_torn_line_keeps_the_next_record_whole(tmp_path):
    log = tmp_path / "negatives.jsonl"
    atomic.append_lines(log, ['{"a": 1}'])
    with log.open("a") as fh:
        fh.write('{"b": ')                       # a kill mid-append
    atomic.append_lines(log, ['{"c": 3}', '{"d": 4}'])
    assert log.read_text().splitlines() == ['{"a": 1}', '{"b": ', '{"c": 3}', '{"d": 4}']
