"""Atomic file writes: every product file (results, figures, stored runs, shipped outputs, manifests, caches) is
written to a temporary name in its own folder, flushed to disk and renamed over the target, so a reader (or a
rerun after kill -9) sees the old file or the new one, never half of either. A full disk or a folder we may not
write becomes one UserFacingError that names the folder; the temporary file is removed."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hnlm.errors import UserFacingError

_NO_SPACE = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
             errno.EROFS: "the folder is on a read-only file system", errno.EACCES: "the folder is not writable",
             errno.EPERM: "the folder is not writable"}


class WriteError(UserFacingError, OSError):
    """A product file could not be written (full disk, read-only or forbidden folder); nothing was replaced."""


WRITE_ERRNOS = frozenset(_NO_SPACE)


def make_dir(folder: str | Path) -> Path:
    """`folder` and its parents, or the one-line WriteError naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise write_error(folder, exc) from None
    return folder


def write_error(folder: Path, exc: OSError) -> WriteError:
    why = _NO_SPACE.get(exc.errno, exc.strerror or str(exc))
    return WriteError(f"cannot write into {folder}: {why}; free space or choose another folder "
                      "(HNLM_ARTIFACTS, HNLM_RUNS, HNLM_RESULTS, HNLM_FIGURES, HNLM_OUTPUTS)")


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o644):
    """Yield a temporary path beside `path` for a writer that takes a file name (np.savez, savefig, torch.save);
    on success it is fsynced and renamed to `path`, on any error removed. The folder is created."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise write_error(path.parent, exc) from exc
    try:
        yield Path(tmp)
        _replace(Path(tmp), path, mode)
    except OSError as exc:
        _remove(tmp)
        raise write_error(path.parent, exc) from exc
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_named_path(path: str | Path, mode: int = 0o644):
    """As atomic_path, but the temporary file bears `path`'s own name, in a temporary folder beside it: for
    writers that record the name in the file (torch.save names its zip archive after it), whose bytes must not
    depend on a temporary name."""
    path = Path(path)
    folder = _temporary_dir(path)
    try:
        yield folder / path.name
        _replace(folder / path.name, path, mode)
    except OSError as exc:
        raise write_error(path.parent, exc) from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _temporary_dir(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as exc:
        raise write_error(path.parent, exc) from exc


def _replace(tmp: Path, path: Path, mode: int) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder beside `path` for a writer that fills a folder (save_pretrained); on success its
    files are fsynced and it is renamed to `path`, on any error removed. An old `path` is renamed aside first and
    removed after: a kill between the two renames leaves `path` absent (made again), never a mix of two saves."""
    path = Path(path)
    tmp = _temporary_dir(path)
    try:
        yield tmp
        for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
        tmp.chmod(0o755)
        old = path.with_name(f".{path.name}.old.tmp")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)    # left by a kill between the renames
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(path.parent, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass      # the writer never created it, or it was renamed already


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_npz(path: str | Path, compressed: bool = False, **arrays) -> Path:
    """np.savez (or savez_compressed) atomically; through a file object, as numpy would add .npz to a name."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        (np.savez_compressed if compressed else np.savez)(fh, **arrays)
    return Path(path)


def append_lines(path: str | Path, lines: list[str]) -> None:
    """Append whole lines to an append-only log in one fsynced write. A torn last line (a kill mid-append) is
    ended first, so it stays one unreadable line that readers skip instead of swallowing the next record."""
    path = Path(path)
    blob = "".join(line + "\n" for line in lines).encode("utf-8")
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise write_error(path.parent, exc) from exc
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            blob = b"\n" + blob
        os.write(fd, blob)
        os.fsync(fd)
    except OSError as exc:
        raise write_error(path.parent, exc) from exc
    finally:
        os.close(fd)
