"""Append-only JSON-lines cache of LLM calls, keyed by hash(model identity, prompt, decoding, schema).

Each record is one line written with a single write() on an O_APPEND file, then flushed and fsynced, so a
run killed at any point leaves whole records plus at most one torn last line. Loading ignores (and cuts
off) a torn tail; a key seen twice keeps its last record, so resuming never duplicates results."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from hnlm.paths import cache_root


def call_key(identity: str, prompt, decoding: dict, schema: dict | None) -> str:
    blob = json.dumps({"model": identity, "prompt": prompt, "decoding": decoding, "schema": schema},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def default_cache_path(identity: str) -> Path:
    root = cache_root("llm_cache")
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in identity)
    return root / f"{safe}.jsonl"


class JsonlCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict] = {}
        self.torn = 0  # torn lines dropped at load (an interrupted write)
        self._lock = threading.Lock()
        self._load()

    def _load(self):
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        *lines, tail = data.split(b"\n")  # `tail` follows the last newline: empty unless a write was torn
        for line in lines:
            try:
                rec = json.loads(line)
                self.records[rec["key"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                self.torn += 1  # skipped, never fatal: the records around it stay usable
        if tail:
            self.torn += 1
            with self.path.open("r+b") as fh:  # cut the torn tail so the next append starts a clean line
                fh.truncate(len(data) - len(tail))

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def put_many(self, records: list[dict]):
        if not records:
            return
        blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
            for r in records:
                self.records[r["key"]] = r

    def put(self, record: dict):
        self.put_many([record])
