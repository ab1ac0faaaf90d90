"""Published splits: LightGCN-style `train.txt`/`test.txt` (+ optional `valid.txt`) and RecBole's benchmark
files `<name>.train.inter`/`.valid.inter`/`.test.inter`. The split is taken as published: no filter runs.

LightGCN lines are `user item item ...` with integer ids (as in the LightGCN, NGCF and MixGCF repositories);
ids are kept, so the catalogue is ids 0..max. Optional `user_list.txt`/`item_list.txt` (`org_id remap_id`
lines, as LightGCN's amazon-book ships) give the original ids. Without `valid.txt`, a validation split is
carved from train.txt with a seed, and recorded in `stats["valid_source"]`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hnlm.atomic import write_text
from hnlm.data.files import nonblank_lines, open_text, require_file
from hnlm.data.interactions import Interactions, build_interactions
from hnlm.data.prepare import reindex
from hnlm.data.sources import read_recbole
from hnlm.data.split import MIN_FOR_HELDOUT
from hnlm.errors import DataFormatError

PARTS = ("train", "valid", "test")
LIGHTGCN_HINT = "LightGCN split files hold one line per user: 'user item item ...' with integer ids."
VALID_RATIO = 0.1  # share of each user's train.txt items carved out as validation when valid.txt is absent


def read_id_lines(path: Path) -> pd.DataFrame:
    """(user, item) integer pairs of one LightGCN-style file; a non-integer token names file and line."""
    users, items = [], []
    for lineno, line in nonblank_lines(path):
        try:
            ids = [int(t) for t in line.split()]
        except ValueError:
            raise DataFormatError(f"{path}:{lineno}: expected integer ids 'user item item ...', got "
                                  f"{line[:60]!r}. {LIGHTGCN_HINT}") from None
        if min(ids) < 0:
            raise DataFormatError(f"{path}:{lineno}: negative id. {LIGHTGCN_HINT}")
        users.extend([ids[0]] * (len(ids) - 1))
        items.extend(ids[1:])
    return pd.DataFrame({"user": np.asarray(users, np.int64), "item": np.asarray(items, np.int64)})


def _id_list(path: Path) -> pd.Series | None:
    """org_id by remap_id from a LightGCN user_list.txt / item_list.txt (header `org_id remap_id`; the
    remap id is the last token, so original ids may hold spaces)."""
    if not path.exists():
        return None
    with open_text(path) as handle:
        lines = [line.rstrip("\n") for line in handle if line.strip()]
    if not lines or lines[0].split() != ["org_id", "remap_id"]:
        raise DataFormatError(f"{path}: expected a first line 'org_id remap_id'")
    names, ids = [], []
    for lineno, line in enumerate(lines[1:], start=2):
        org, _, remap = line.rpartition(" ")
        if not remap.isdigit():
            raise DataFormatError(f"{path}:{lineno}: expected 'org_id remap_id', got {line[:60]!r}")
        names.append(org)
        ids.append(int(remap))
    return pd.Series(names, index=np.asarray(ids, np.int64), dtype=object)


def _id_table(n: int, names: pd.Series | None) -> pd.DataFrame:
    ids = pd.Series(np.arange(n).astype(str))
    if names is not None:
        ids = pd.Series(names.reindex(np.arange(n)).fillna(ids).to_numpy())
    return pd.DataFrame({"original_id": ids.astype(str)})


def carve_valid(train: pd.DataFrame, seed: int, ratio: float = VALID_RATIO) -> np.ndarray:
    """Mask of train rows moved to validation: round(ratio * n) (at least 1) of each user's items, for users
    with at least MIN_FOR_HELDOUT train items, drawn by one generator seeded by `seed` (users in id order)."""
    rng = np.random.default_rng(seed)
    order = train.sort_values(["user", "item"], kind="stable").index.to_numpy()
    users = train["user"].to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(order) else np.array([], int)
    ends = np.r_[starts[1:], len(order)]
    mask = np.zeros(len(train), bool)
    for lo, hi in zip(starts, ends):
        if hi - lo >= MIN_FOR_HELDOUT:
            rows = order[lo:hi][rng.permutation(hi - lo)]
            mask[rows[:max(1, int(round((hi - lo) * ratio)))]] = True
    return mask


def read_lightgcn(folder: Path, name: str, seed: int = 0) -> Interactions:
    folder = Path(folder)
    files = {p: folder / f"{p}.txt" for p in PARTS}
    for part in ("train", "test"):
        require_file(files[part], f"A LightGCN split folder holds train.txt and test.txt. {LIGHTGCN_HINT}")
    frames = {p: read_id_lines(require_file(f, LIGHTGCN_HINT)) for p, f in files.items()
              if p != "valid" or f.exists()}
    if "valid" in frames:
        valid_source = "valid.txt"
    else:
        carved = carve_valid(frames["train"], seed)
        frames["valid"], frames["train"] = frames["train"][carved], frames["train"][~carved]
        valid_source = (f"carved from train.txt: {VALID_RATIO:.0%} of the items of each user with >= "
                        f"{MIN_FOR_HELDOUT}, seed {seed}")
    user_names, item_names = _id_list(folder / "user_list.txt"), _id_list(folder / "item_list.txt")
    n_users = max(int(f["user"].max()) + 1 if len(f) else 0 for f in frames.values())
    n_items = max(int(f["item"].max()) + 1 if len(f) else 0 for f in frames.values())
    n_users = max(n_users, len(user_names) if user_names is not None else 0)
    n_items = max(n_items, len(item_names) if item_names is not None else 0)
    inter = _published(frames)
    stats = {"split_files": {p: str(f) for p, f in files.items() if f.exists()}, "valid_source": valid_source}
    return _assemble(name, inter, _id_table(n_items, item_names), _id_table(n_users, user_names), stats, seed)


def recbole_benchmark_files(folder: Path) -> dict[str, Path] | None:
    """{train, valid, test: path} when `folder` holds RecBole's `<stem>.train.inter` etc., else None."""
    found = sorted(Path(folder).glob("*.train.inter"))
    if not found:
        return None
    if len(found) > 1:
        raise DataFormatError(f"{folder} holds several benchmark splits ({', '.join(p.name for p in found)}); "
                              f"pass the folder of one dataset")
    stem = found[0].name[:-len(".train.inter")]
    return {p: Path(folder) / f"{stem}.{p}.inter" for p in PARTS}


def read_recbole_benchmark(folder: Path, name: str, seed: int = 0) -> Interactions:
    files = recbole_benchmark_files(folder)
    stem = files["train"].name[:-len(".train.inter")]
    item_file, user_file = Path(folder) / f"{stem}.item", Path(folder) / f"{stem}.user"
    raws = {p: read_recbole(f, item_file if item_file.exists() else None,
                            user_file if user_file.exists() else None) for p, f in files.items()}
    frames = {p: raw.inter.assign(part=PARTS.index(p)) for p, raw in raws.items()}
    inter = pd.concat(frames.values(), ignore_index=True)
    inter, items, users = reindex(inter, raws["train"].items, raws["train"].users)
    inter = _published({p: inter[inter["part"] == PARTS.index(p)] for p in PARTS})
    stats = {"split_files": {p: str(f) for p, f in files.items()}, "valid_source": files["valid"].name}
    return _assemble(name, inter, items, users, stats, seed)


def _published(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One frame (user, item, part, review, timestamp); a pair repeated inside a file counts once."""
    parts = []
    for p, frame in frames.items():
        frame = frame.assign(part=PARTS.index(p))
        for col, default in (("review", ""), ("timestamp", 0)):
            if col not in frame:
                frame[col] = default
        parts.append(frame[["user", "item", "part", "review", "timestamp"]])
    return pd.concat(parts, ignore_index=True)


def _assemble(name: str, inter: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, extra: dict,
              seed: int) -> Interactions:
    loaded = len(inter)
    inter = inter.drop_duplicates(["user", "item", "part"]).reset_index(drop=True)
    part = inter["part"].to_numpy(np.int8)
    counts = {p: int((part == k).sum()) for k, p in enumerate(PARTS)}
    step = {"step": "published split", "interactions": len(inter), "users": int(inter["user"].nunique()),
            "items": int(inter["item"].nunique())}
    stats = {"preset": None, "filter_steps": [step], "duplicates_collapsed": loaded - len(inter),
             "malformed_lines": 0, "split_mode": "published", "split_seed": seed, "split_ratios": None,
             "users_train_only": int(len(users) - inter.loc[part > 0, "user"].nunique()), **counts, **extra}
    data = build_interactions(name, inter, part, items, users, stats)
    data.stats["heldout_pairs_also_in_train"] = int(data.train.multiply(data.valid + data.test).nnz)
    return data


def write_lightgcn(data: Interactions, folder: Path) -> dict[str, Path]:
    """train.txt / valid.txt / test.txt ('user item item ...', users with items only) plus user_list.txt and
    item_list.txt mapping the integer ids back to the original ones; `read_lightgcn` reads them back."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for part in PARTS:
        matrix = getattr(data, part)
        lines = [" ".join(map(str, [u, *matrix.indices[matrix.indptr[u]:matrix.indptr[u + 1]]]))
                 for u in range(matrix.shape[0]) if matrix.indptr[u + 1] > matrix.indptr[u]]
        out[part] = folder / f"{part}.txt"
        write_text(out[part], "\n".join(lines) + "\n")
    for kind, table in (("user", data.users), ("item", data.items)):
        rows = [f"{org} {remap}" for remap, org in enumerate(table["original_id"])]
        write_text(folder / f"{kind}_list.txt", "\n".join(["org_id remap_id", *rows]) + "\n")
    return out
