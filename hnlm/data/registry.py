"""Datasets by name: packaged MovieLens, presets that reproduce the paper's preprocessing of raw files, and
your own data under a name you choose (raw Amazon 2018/2023 or Yelp files with your filters, RecBole atomic
files, or published LightGCN/RecBole splits).

A prepared dataset is cached under artifacts/<name>/data/<key>/, the key hashing the files' bytes (not their
names or dates), the filters, the split and the reader options. Every artefact keyed by the dataset name
(profiles, negatives, runs) must describe the same data, so artifacts/<name>/dataset.json records what the
name was prepared from, and once such artefacts exist the name is refused for other files or filters.

Your own data is registered by the first load that names its source (`hnlm data add NAME --source ...`, or any
command given --source): the record keeps how to load it (source, absolute paths, filters, split, reader
options), so every command and notebook then loads it by name alone (`load_dataset(NAME)`), and a file whose
bytes changed since is a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from hnlm.atomic import write_text
from hnlm.data import sources
from hnlm.data.checks import duplicate_review_counts, merge_variant_items, report, run_checks
from hnlm.data.files import content_digest, require_file
from hnlm.data.interactions import Interactions, build_interactions
from hnlm.data.prepare import filter_interactions, reindex
from hnlm.data.split import split_interactions
from hnlm.data.splitfiles import read_lightgcn, read_recbole_benchmark, recbole_benchmark_files
from hnlm.errors import DatasetConflictError, MissingInputError, UnknownDatasetError
from hnlm.paths import artifacts_dir, artifacts_root

CACHE_VERSION = 2  # bump when preparation changes what a cached dataset holds


@dataclass(frozen=True)
class Preset:
    source: str                   # ml-100k | ml-1m | amazon2018 | amazon2023 | yelp | recbole | lightgcn
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
# Formats your own data can come in (--source): raw review files, RecBole atomic files, published splits.
OWN_SOURCES = {
    "amazon2018": "Amazon Reviews 2018 JSON lines: --reviews FILE [--meta FILE]",
    "amazon2023": "Amazon Reviews 2023 JSONL: --reviews FILE [--meta FILE]",
    "yelp": "Yelp open dataset: --reviews review.json [--meta business.json]",
    "recbole": "RecBole atomic files: --path FILE.inter (or a folder with one .inter, or with "
               "NAME.train.inter/.valid.inter/.test.inter); .item/.user beside it are read too",
    "lightgcn": "LightGCN-style split: --path FOLDER with train.txt, test.txt and optional valid.txt",
}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Filters:
    """Your own filters for raw data (None: not applied). Duplicated (user, item) pairs are always collapsed."""
    min_rating: float | None = None
    start: str | None = None
    end: str | None = None
    kcore: int | None = None

    def any(self) -> bool:
        return any(v is not None for v in asdict(self).values())


@dataclass(frozen=True)
class Recipe:
    """How a name loads: your own data's source (None: a preset), files (absolute paths), filters, options."""
    source: str | None
    reviews: str | None = None
    meta: str | None = None
    path: str | None = None
    filters: Filters = Filters()
    collapse_duplicate_reviews: bool = False
    split: str = "random"
    strict: bool = True

    @classmethod
    def from_json(cls, blob: dict) -> "Recipe":
        return cls(**{**blob, "filters": Filters(**blob["filters"])})

    def command(self, name: str) -> str:
        """The `hnlm data add` line that registers this recipe again."""
        options = {"--reviews": self.reviews, "--meta": self.meta, "--path": self.path,
                   **{f"--{k.replace('_', '-')}": v for k, v in asdict(self.filters).items()}}
        flags = [f"{k} {v}" for k, v in options.items() if v is not None]
        flags += ["--collapse-duplicate-reviews"] * self.collapse_duplicate_reviews + ["--lenient"] * (not self.strict)
        return " ".join([f"hnlm data add {name} --source {self.source}", *flags, f"--split {self.split}"])


def dataset_names() -> list[str]:
    return list(PRESETS)


def _hint(preset: Preset) -> str:
    return {"amazon2018": sources.AMAZON2018_HINT, "amazon2023": sources.AMAZON2023_HINT,
            "yelp": sources.YELP_HINT}.get(preset.source, "")


def resolve_files(name: str, reviews: str | None, meta: str | None) -> tuple[Path | None, Path | None]:
    """A preset's files: explicit paths win, else $HNLM_DATA_DIR with the preset's usual file names.
    Every path is checked here, before anything reads or hashes it."""
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
    return _checked(reviews, "--reviews", preset), (_checked(meta, "--meta", preset) if meta else None)


def _checked(path: str | Path, option: str, preset: Preset) -> Path:
    return require_file(path, f"Check the path given to {option}. {_hint(preset)}".strip())


def resolve_dataset(name: str, source: str | None, reviews: str | None, meta: str | None, path: str | None,
                    filters: Filters) -> tuple[Preset, dict[str, Path]]:
    """The preset (or your own source with your filters) and the checked input files by role."""
    if source is None:
        if name not in PRESETS:
            raise UnknownDatasetError(unknown_name_message(name))
        if filters.any() or path is not None:
            raise UnknownDatasetError(
                f"preset {name!r} has fixed filters and files; to set your own, name your data differently and "
                f"pass --source {PRESETS[name].source} with --min-rating/--start/--end/--kcore")
        files = resolve_files(name, reviews, meta)
        return PRESETS[name], {role: f for role, f in zip(("reviews", "meta"), files) if f is not None}
    if source not in OWN_SOURCES:
        raise UnknownDatasetError(f"unknown --source {source!r}; one of: {', '.join(OWN_SOURCES)}")
    if name in PRESETS:
        raise UnknownDatasetError(f"{name!r} is a preset name; give your own data its own name (e.g. "
                                  f"--dataset my-{name}) so its caches never mix with the preset's")
    if not NAME_PATTERN.match(name):
        raise UnknownDatasetError(f"dataset name {name!r}: use letters, digits, '.', '_' or '-' (it names a folder)")
    preset = Preset(source, "item", **asdict(filters))
    if source in READERS:
        if reviews is None:
            raise MissingInputError(f"--source {source} needs --reviews FILE ({OWN_SOURCES[source]})")
        files = {"reviews": _checked(reviews, "--reviews", preset)}
        if meta:
            files["meta"] = _checked(meta, "--meta", preset)
        return preset, files
    if path is None:
        raise MissingInputError(f"--source {source} needs --path ({OWN_SOURCES[source]})")
    return preset, _split_source_files(source, Path(path).expanduser(), filters)


def unknown_name_message(name: str) -> str:
    return (f"unknown dataset {name!r}; presets: {', '.join(PRESETS)}. Register your own data once under a name "
            f"with its format: hnlm data add {name} --source {{{','.join(OWN_SOURCES)}}} ... (see hnlm data add -h)")


def _split_source_files(source: str, path: Path, filters: Filters) -> dict[str, Path]:
    if not path.exists():
        raise MissingInputError(f"--path {path} does not exist ({OWN_SOURCES[source]})")
    published = source == "lightgcn" or (path.is_dir() and recbole_benchmark_files(path) is not None)
    if published and filters.any():
        raise UnknownDatasetError(f"{path} holds a published split, used as is: drop "
                                  f"--min-rating/--start/--end/--kcore")
    if source == "lightgcn":
        if not path.is_dir():
            raise MissingInputError(f"--path {path} must be a folder holding train.txt and test.txt")
        names = ("train.txt", "test.txt", "valid.txt", "user_list.txt", "item_list.txt")
        files = {n.split(".")[0]: path / n for n in names if (path / n).exists() or n in ("train.txt", "test.txt")}
        return {role: require_file(f, OWN_SOURCES[source]) for role, f in files.items()}
    if path.is_dir():
        benchmark = recbole_benchmark_files(path)
        if benchmark is not None:
            files = {role: require_file(f, OWN_SOURCES[source]) for role, f in benchmark.items()}
            stem = benchmark["train"].name[:-len(".train.inter")]
            return {**files, **_side_files(path / f"{stem}.inter")}
        inters = sorted(path.glob("*.inter"))
        if len(inters) != 1:
            raise MissingInputError(f"--path {path} must hold exactly one .inter file (found "
                                    f"{', '.join(p.name for p in inters) or 'none'}); or pass the .inter file")
        path = inters[0]
    return {"inter": require_file(path, OWN_SOURCES[source]), **_side_files(path)}


def _side_files(inter: Path) -> dict[str, Path]:
    """The .item / .user atomic files beside an .inter file, when present."""
    return {kind: require_file(inter.with_suffix(f".{kind}"), sources.RECBOLE_HINT) for kind in ("item", "user")
            if inter.with_suffix(f".{kind}").exists()}


def identity(preset: Preset, files: dict[str, Path], collapse_duplicate_reviews: bool) -> dict:
    """What the prepared data depends on: source, filters, the files' content and the reader options."""
    kept = {k: v for k, v in asdict(preset).items() if k not in ("files", "domain")}
    return {"preset": kept, "files": {role: content_digest(f) for role, f in sorted(files.items())},
            "collapse_duplicate_reviews": collapse_duplicate_reviews, "version": CACHE_VERSION}


def _digest(blob) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def check_name(name: str, ident: dict) -> None:
    """Refuse `name` for other files or filters once artefacts derived from its data exist (profiles,
    negatives, runs: they are keyed by the name and hold its item ids). Prepared-data caches alone do not
    count: they are keyed by content, so changing the filters of a new dataset is fine."""
    record_path = artifacts_root() / name / "dataset.json"
    if not record_path.exists():
        return
    recorded = json.loads(record_path.read_text())["identity"]
    derived = sorted(p.name for p in record_path.parent.iterdir() if p.name not in ("data", "dataset.json"))
    if recorded == ident or not derived:
        return
    changed = [k for k in ("preset", "files", "collapse_duplicate_reviews", "version")
               if recorded.get(k) != ident.get(k)]
    raise DatasetConflictError(
        f"dataset name {name!r} already holds artefacts ({', '.join(derived)}) made from other "
        f"{' and '.join(changed)} (recorded in {record_path}); give this data another name, or delete "
        f"{record_path.parent} to start that dataset over")


def record_name(name: str, ident: dict, files: dict[str, Path], recipe: Recipe | None) -> None:
    """Record what `name` was last prepared from (read by check_name) and, for your own data, how to load it
    by name (read by `registered`)."""
    record_path = artifacts_root() / name / "dataset.json"
    record = {"identity": ident, "paths": {role: str(f) for role, f in files.items()}}
    if recipe is not None:
        record["recipe"] = asdict(recipe)
    write_text(record_path, json.dumps(record, indent=2))


def registered(name: str) -> tuple[Recipe, dict]:
    """The recipe of your own data registered as `name` and the identity it was registered with."""
    record_path = artifacts_root() / name / "dataset.json"
    if not record_path.exists():
        raise UnknownDatasetError(unknown_name_message(name))
    record = json.loads(record_path.read_text())
    if "recipe" not in record:
        raise UnknownDatasetError(f"dataset {name!r} was prepared before names kept how to load them "
                                  f"({record_path}): register it again with hnlm data add {name} --source ...")
    return Recipe.from_json(record["recipe"]), record["identity"]


def check_unchanged(name: str, recipe: Recipe, files: dict[str, Path], ident: dict, recorded: dict) -> None:
    """A registered name loads only the bytes it was registered with: a changed file is a one-line error."""
    changed = [str(files[role]) for role in sorted(files)
               if recorded["files"].get(role) != ident["files"][role]]
    changed += [f"{role} (gone)" for role in sorted(set(recorded["files"]) - set(files))]
    if changed:
        raise DatasetConflictError(
            f"dataset {name!r}: {', '.join(changed)} changed since it was registered (sha256 differs); "
            f"register the new data under another name, or again with `{recipe.command(name)}`")


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def recipe_of(name: str, split: str | None, strict: bool | None, source: str | None, reviews: str | None,
              meta: str | None, path: str | None, filters: Filters | None,
              collapse_duplicate_reviews: bool) -> tuple[Recipe, dict | None]:
    """(recipe, identity it was registered with) of a load: a preset, or your own data given with `source` (a
    new registration), as the arguments say (identity None); else the name's registration, whose files the
    caller must not give. `split`/`strict` None: the registered ones, else "random" and strict."""
    if source is not None or name in PRESETS:   # resolve_dataset refuses a preset your own path or filters
        recipe = Recipe(source, _absolute(reviews), _absolute(meta), _absolute(path), filters or Filters(),
                        collapse_duplicate_reviews, split or "random", True if strict is None else strict)
        return recipe, None
    if reviews or meta or path or (filters is not None and filters.any()) or collapse_duplicate_reviews:
        raise UnknownDatasetError(f"{name!r} is not a preset: give --source with its files, or drop the file and "
                                  f"filter options to load it as registered")
    recipe, recorded = registered(name)
    return replace(recipe, split=split or recipe.split, strict=recipe.strict if strict is None else strict), recorded


def load_dataset(name: str, seed: int = 0, split: str | None = None, reviews: str | None = None,
                 meta: str | None = None, strict: bool | None = None, cache: bool = True, *,
                 source: str | None = None, path: str | None = None, filters: Filters | None = None,
                 collapse_duplicate_reviews: bool = False, check: bool = True) -> Interactions:
    """Prepare a dataset by name (filter, re-index, split; or a published split as is) and cache it.

    `name` is a preset (PRESETS), with `source` (OWN_SOURCES) your own name for your own files (which
    registers it), or a name registered earlier, loaded by name alone with the files' digests checked:
    `reviews`/`meta` for raw review files, `path` for RecBole atomic files or a LightGCN split folder.
    `filters` (your own data only) sets the rating threshold, date window and k-core.
    `split` None: "random", or the one the name was registered with.
    `strict=False` skips malformed lines of raw files and counts them in `stats["malformed_lines"]` (None: strict,
    or as registered).
    `collapse_duplicate_reviews` merges product ids that carry the same review (product variants).
    Sanity checks land in `stats["checks"]`; warnings are issued as DatasetWarning, and a dataset on which
    ranking metrics would be meaningless raises DegenerateDatasetError unless `check=False`.
    """
    recipe, recorded = recipe_of(name, split, strict, source, reviews, meta, path, filters,
                                 collapse_duplicate_reviews)
    preset, files = resolve_dataset(name, recipe.source, recipe.reviews, recipe.meta, recipe.path, recipe.filters)
    ident = identity(preset, files, recipe.collapse_duplicate_reviews)
    if recorded is not None:
        check_unchanged(name, recipe, files, ident, recorded)
    split, strict, collapse_duplicate_reviews = recipe.split, recipe.strict, recipe.collapse_duplicate_reviews
    key = _digest([ident, seed, split, strict])[:12]
    folder = artifacts_root() / name / "data" / key
    if cache:
        check_name(name, ident)
    if cache and (folder / "meta.json").exists():
        data = Interactions.load(folder)
    else:
        data = prepare(name, preset, files, seed, split, strict, collapse_duplicate_reviews)
        data.stats.update(identity=_digest(ident), files={role: str(f) for role, f in files.items()})
        if cache:
            data.save(artifacts_dir(name, "data", key))
    if cache and recorded is None:   # a load by name leaves its registration as it is
        record_name(name, ident, files, recipe if recipe.source is not None else None)
    report(data, check)
    return data


def prepare(name: str, preset: Preset, files: dict[str, Path], seed: int, split: str, strict: bool,
            collapse_duplicate_reviews: bool) -> Interactions:
    if preset.source == "lightgcn":
        data = read_lightgcn(files["train"].parent, name, seed)
        data.stats["checks"] = run_checks(data)
        return data
    if "train" in files:
        data = read_recbole_benchmark(files["train"].parent, name, seed)
        data.stats["checks"] = run_checks(data)
        return data
    raw = read_raw(preset, files, strict)
    raw_counts = duplicate_review_counts(raw.inter)
    inter = raw.inter
    if collapse_duplicate_reviews:
        inter, merged = merge_variant_items(inter)
        raw_counts.update(merged)
    inter, steps = filter_interactions(replace(raw, inter=inter), preset.min_rating, preset.start, preset.end,
                                       preset.kcore)
    inter, items, users = reindex(inter, raw.items, raw.users)
    part, split_counts = split_interactions(inter, seed=seed, mode=split)
    stats = {"preset": asdict(preset), "filter_steps": steps,
             "duplicates_collapsed": next(s["collapsed"] for s in steps if "collapsed" in s),
             "malformed_lines": raw.counts.get("malformed_lines", 0), **split_counts}
    data = build_interactions(name, inter, part, items, users, stats)
    data.stats["checks"] = run_checks(data, raw_counts)
    return data


def read_raw(preset: Preset, files: dict[str, Path], strict: bool = True) -> sources.RawData:
    if preset.source == "ml-100k":
        return sources.read_ml100k()
    if preset.source == "ml-1m":
        return sources.read_ml1m()
    if preset.source == "recbole":
        return sources.read_recbole(files["inter"], files.get("item"), files.get("user"), strict=strict)
    return READERS[preset.source](files["reviews"], files.get("meta"), strict=strict)
