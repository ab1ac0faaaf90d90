"""Datasets by name: packaged MovieLens, and presets that reproduce the paper's preprocessing of raw files."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from hnlm.data import sources
from hnlm.data.interactions import Interactions, build_interactions
from hnlm.data.prepare import filter_interactions, reindex
from hnlm.data.split import split_interactions
from hnlm.errors import MissingInputError
from hnlm.paths import artifacts_dir


@dataclass(frozen=True)
class Preset:
    source: str                   # ml-100k | ml-1m | amazon2018 | amazon2023 | yelp
    domain: str                   # prompt-template domain: movies, toys, music, business, electronics, fashion
    min_rating: float | None = None
    start: str | None = None      # inclusive, YYYY-MM-DD (UTC)
    end: str | None = None        # exclusive
    kcore: int | None = None
    files: tuple[str, str] | None = None  # default file names (reviews, meta) under HNLM_DATA_DIR


PRESETS = {
    # MovieLens: every rating is a positive (the protocol RecBole's benchmarks use).
    "ml-100k": Preset("ml-100k", "movies"),
    "ml-1m": Preset("ml-1m", "movies"),
    "toys": Preset("amazon2018", "toys", 4, "2015-01-01", "2018-01-01", 10,
                   ("Toys_and_Games.json.gz", "meta_Toys_and_Games.json.gz")),
    "cds": Preset("amazon2018", "music", 4, "2014-01-01", "2016-01-01", 10,
                  ("CDs_and_Vinyl.json.gz", "meta_CDs_and_Vinyl.json.gz")),
    "yelp2018": Preset("yelp", "business", 4, "2015-01-01", "2018-01-01", 10,
                       ("yelp_academic_dataset_review.json", "yelp_academic_dataset_business.json")),
    "electronics2023": Preset("amazon2023", "electronics", 3, "2010-01-01", "2018-01-01", None,
                              ("Electronics.jsonl.gz", "meta_Electronics.jsonl.gz")),
    # The 5-core file is already filtered; kept at 5-core after the rating threshold, for generalisation only.
    "fashion": Preset("amazon2018", "fashion", 4, None, None, 5,
                      ("AMAZON_FASHION_5.json.gz", "meta_AMAZON_FASHION.json.gz")),
}

READERS = {"amazon2018": sources.read_amazon2018, "amazon2023": sources.read_amazon2023,
           "yelp": sources.read_yelp}


def dataset_names() -> list[str]:
    return list(PRESETS)


def resolve_files(name: str, reviews: str | None, meta: str | None) -> tuple[Path | None, Path | None]:
    """Explicit paths win; otherwise look under $HNLM_DATA_DIR for the preset's usual file names."""
    preset = PRESETS[name]
    if preset.files is None:
        return None, None
    data_dir = os.environ.get("HNLM_DATA_DIR")
    if reviews is None:
        if data_dir is None:
            raise MissingInputError(
                f"dataset {name!r} is read from local files that cannot be downloaded here: pass "
                f"--reviews PATH [--meta PATH], or set HNLM_DATA_DIR to a folder holding {preset.files[0]} "
                f"and {preset.files[1]}. {_hint(preset)}")
        reviews = str(Path(data_dir) / preset.files[0])
        candidate = Path(data_dir) / preset.files[1]
        meta = meta or (str(candidate) if candidate.exists() else None)
    return Path(reviews), (Path(meta) if meta else None)


def _hint(preset: Preset) -> str:
    return {"amazon2018": sources.AMAZON2018_HINT, "amazon2023": sources.AMAZON2023_HINT,
            "yelp": sources.YELP_HINT}[preset.source]


def read_raw(name: str, reviews: Path | None = None, meta: Path | None = None, strict: bool = True):
    preset = PRESETS[name]
    if preset.source == "ml-100k":
        return sources.read_ml100k()
    if preset.source == "ml-1m":
        return sources.read_ml1m()
    return READERS[preset.source](reviews, meta, strict=strict)


def _cache_key(name: str, preset: Preset, files, seed: int, split: str, strict: bool) -> str:
    stamp = [(str(f), f.stat().st_size, int(f.stat().st_mtime)) for f in files if f is not None]
    blob = json.dumps([name, asdict(preset), stamp, seed, split, strict], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_dataset(name: str, seed: int = 0, split: str = "random", reviews: str | None = None,
                 meta: str | None = None, strict: bool = True, cache: bool = True) -> Interactions:
    """Prepare a dataset by name (filter, re-index, split) and cache it under artifacts/<name>/data/.

    `strict=False` skips malformed lines of raw files and counts them in `stats["malformed_lines"]`.
    """
    if name not in PRESETS:
        raise MissingInputError(f"unknown dataset {name!r}; known: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    files = resolve_files(name, reviews, meta)
    folder = artifacts_dir(name, "data") / _cache_key(name, preset, files, seed, split, strict)
    if cache and (folder / "meta.json").exists():
        return Interactions.load(folder)
    raw = read_raw(name, *files, strict=strict)
    inter, steps = filter_interactions(raw, preset.min_rating, preset.start, preset.end, preset.kcore)
    inter, items, users = reindex(inter, raw.items, raw.users)
    part, split_counts = split_interactions(inter, seed=seed, mode=split)
    stats = {"preset": asdict(preset), "filter_steps": steps,
             "duplicates_collapsed": next(s["collapsed"] for s in steps if "collapsed" in s),
             "malformed_lines": raw.counts.get("malformed_lines", 0), **split_counts}
    data = build_interactions(name, inter, part, items, users, stats)
    if cache:
        data.save(folder)
    return data
