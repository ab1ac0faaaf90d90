"""Atomic file writes: every product file (results, figures, stored runs, shipped outputs, manifests, caches) is
written to a temporary name in its own folder, flushed to disk and renamed over the target, so a reader (or a
rerun after kill -9) sees the old file or the new one, never half of either. A full disk or a folder we may not
write becomes one UserFacingError that names the folder; the temporary file is removed."""

from __future__ import annotations

import errno
import os
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
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise write_error(path.parent, exc) from exc
    except BaseException:
        _remove(tmp)
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
