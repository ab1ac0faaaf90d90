"""Opening user files safely (gzip told by its magic bytes, truncation and emptiness as clear errors) and
fingerprinting them by content, with the digest cached by (path, size, mtime) so a large file is hashed once."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hnlm.atomic import write_text
from hnlm.errors import DataFormatError, MissingInputError
from hnlm.paths import artifacts_root

GZIP_MAGIC = b"\x1f\x8b"


def require_file(path: str | Path, how_to_get: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise MissingInputError(f"input file {path} {what}. {how_to_get}")
    if path.stat().st_size == 0:
        raise DataFormatError(f"input file {path} is empty (0 bytes): download or export it again")
    return path


def is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == GZIP_MAGIC


@contextmanager
def open_text(path: Path) -> Iterator[io.TextIOBase]:
    """Text lines of `path`, gunzipped when its first bytes are gzip's (whatever its name says).

    A truncated or corrupt gzip stream and bytes that are not UTF-8 end in a DataFormatError naming the file.
    """
    handle = gzip.open(path, "rt", encoding="utf-8") if is_gzip(path) else path.open("r", encoding="utf-8")
    try:
        with handle:
            yield handle
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataFormatError(f"{path} is a truncated or corrupt gzip file ({err}); download it again "
                              f"(`gzip -t {path.name}` checks a copy)") from None
    except UnicodeDecodeError as err:
        kind = "gunzipped content" if is_gzip(path) else "file (not gzip either)"
        raise DataFormatError(f"{path}: the {kind} is not UTF-8 text at byte {err.start}; expected JSON lines "
                              f"or tab-separated text, plain or gzipped") from None


def nonblank_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) of every non-blank line of a text file, gzipped or not."""
    with open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            line = line.strip()
            if line:
                yield lineno, line


def _hash_cache_path() -> Path:
    return artifacts_root() / "file_hashes.json"


def content_digest(path: Path) -> str:
    """sha256 of the file's bytes; reused while the file's size and modification time are unchanged."""
    path = path.resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_path = _hash_cache_path()
    cache = _read_hash_cache(cache_path)
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    # drop this file's older entries and those of files that are gone (tests' temporary files, moved data)
    cache = {k: v for k, v in _read_hash_cache(cache_path).items()
             if not k.startswith(f"{path}|") and Path(k.split("|")[0]).exists()}
    cache[key] = digest.hexdigest()
    write_text(cache_path, json.dumps(cache, indent=0))  # concurrent writers: the last one wins, whole
    return cache[key]


def _read_hash_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
