"""Your own data: generic Amazon sources with your filters, content-hash cache identity, published splits
(LightGCN, RecBole), sanity checks, and one clear error for each bad input."""

import argparse
import fcntl
import gzip
import importlib.util
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from hnlm.cli import main
from hnlm.data import Filters, load_dataset
from hnlm.data.checks import DatasetWarning
from hnlm.data.options import add_dataset_options, dataset_from_args
from hnlm.data.splitfiles import write_lightgcn
from hnlm.errors import (
    DataFormatError,
    DatasetConflictError,
    DegenerateDatasetError,
    MissingInputError,
    MissingItemTextError,
    UnknownDatasetError,
    UserFacingError,
)
from tests.test_data_loaders import write_lines

# the tiny data here sets off warnings on purpose; the tests that are about them catch them with pytest.warns
pytestmark = pytest.mark.filterwarnings("ignore::hnlm.data.checks.DatasetWarning")


@pytest.fixture(autouse=True)
def artefacts(tmp_path, monkeypatch):
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.delenv("HNLM_DATA_DIR", raising=False)


def reviews(n_users=60, n_items=60, per_user=20, seed=0):
    """Each user rates `per_user` consecutive items (5 stars), one more with 2 stars; spread over 2015-2017."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for j in range(per_user + 1):
            i = (u + j) % n_items
            rows.append({"reviewerID": f"U{u}", "asin": f"B{i:03d}", "overall": 5.0 if j < per_user else 2.0,
                         "unixReviewTime": int(1420070400 + rng.integers(0, 3 * 365 * 86400)),
                         "reviewText": f"review {u}-{i}", "summary": "ok"})
    return rows


def meta(items):
    return [{"asin": f"B{i:03d}", "title": f"Lipstick {i}", "category": ["Beauty"]} for i in items]


def same_matrices(a, b):
    return all((getattr(a, p) != getattr(b, p)).nnz == 0 and getattr(a, p).shape == getattr(b, p).shape
               for p in ("train", "valid", "test"))


# ---------------------------------------------------------------- your own raw data, your filters

def test_own_amazon2018_with_filters_and_item_text(tmp_path):
    path = write_lines(tmp_path / "All_Beauty.json.gz", reviews())
    meta_path = write_lines(tmp_path / "meta_All_Beauty.json", meta(range(30)))
    data = load_dataset("beauty", source="amazon2018", reviews=str(path), meta=str(meta_path),
                        filters=Filters(min_rating=4, kcore=5))
    assert (data.n_users, data.n_items) == (60, 60)
    assert [s["step"] for s in data.stats["filter_steps"]] == ["loaded", "rating >= 4", "duplicates collapsed",
                                                                "5-core"]
    assert data.summary()["interactions"] == 60 * 20
    assert data.items_without_text == 30 and data.has_item_text
    assert any("30 of 60 items have no text" in w for w in data.summary()["warnings"])
    assert data.item_text(0).startswith("Lipstick 0")


def test_id_only_data_works_for_cf_and_llm_methods_refuse_it(tmp_path):
    path = write_lines(tmp_path / "r.json", reviews())
    with pytest.warns(DatasetWarning, match="no item has text"):
        data = load_dataset("beauty", source="amazon2018", reviews=str(path), cache=False)
    assert not data.has_item_text and data.train.nnz > 0
    with pytest.raises(MissingItemTextError, match="--meta FILE"):
        data.require_item_text("profile generation")


def test_cache_identity_is_the_content_not_the_name_size_or_date(tmp_path):
    first = write_lines(tmp_path / "r.json", reviews())
    data = load_dataset("beauty", source="amazon2018", reviews=str(first), check=False)
    # the same bytes elsewhere: same dataset, served from the cache
    copy = tmp_path / "copy.json"
    copy.write_bytes(first.read_bytes())
    again = load_dataset("beauty", source="amazon2018", reviews=str(copy), check=False)
    assert again.stats["identity"] == data.stats["identity"] and same_matrices(again, data)
    # other bytes with the same size and modification time (e.g. unpacked with preserved dates): another
    # dataset, so the name is refused once artefacts made from the first data exist
    (tmp_path / "artifacts" / "beauty" / "profiles").mkdir()
    other_bytes = tmp_path / "other.json"
    other_bytes.write_text(first.read_text().replace('"U0"', '"V0"'))
    stat = first.stat()
    os.utime(other_bytes, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert other_bytes.stat().st_size == stat.st_size
    with pytest.raises(DatasetConflictError, match=r"artefacts \(profiles\) made from other files"):
        load_dataset("beauty", source="amazon2018", reviews=str(other_bytes), check=False)
    # an edited file (new modification time) is hashed again
    first.write_text(first.read_text().replace('"U1"', '"W1"'))
    edited = load_dataset("beauty-edited", source="amazon2018", reviews=str(first), check=False)
    assert edited.stats["identity"] != data.stats["identity"]
    # other filters under the same name are refused too; under another name they are fine
    with pytest.raises(DatasetConflictError, match="other preset"):
        load_dataset("beauty", source="amazon2018", reviews=str(copy), filters=Filters(kcore=10), check=False)
    other = load_dataset("beauty-10core", source="amazon2018", reviews=str(copy), filters=Filters(kcore=10),
                         check=False)
    assert other.stats["identity"] != data.stats["identity"]
    # before anything is derived from a name, its data may change (e.g. filters tried until one fits)
    assert load_dataset("beauty-10core", source="amazon2018", reviews=str(copy), check=False).n_items == 60


def test_presets_keep_their_results_and_refuse_own_filters(tmp_path):
    path = write_lines(tmp_path / "Toys.json", reviews(n_users=12, n_items=12, per_user=11))
    preset = load_dataset("toys", reviews=str(path), cache=False, check=False)
    own = load_dataset("mytoys", source="amazon2018", reviews=str(path), cache=False, check=False,
                       filters=Filters(min_rating=4, start="2015-01-01", end="2018-01-01", kcore=10))
    assert same_matrices(preset, own)
    with pytest.raises(UnknownDatasetError, match="name your data differently"):
        load_dataset("toys", reviews=str(path), filters=Filters(kcore=5))
    with pytest.raises(UnknownDatasetError, match="preset name"):
        load_dataset("toys", source="amazon2018", reviews=str(path))


# ---------------------------------------------------------------- sanity checks

def test_small_catalogue_is_an_error_and_heavy_users_a_warning(tmp_path):
    path = write_lines(tmp_path / "r.json", reviews(n_users=30, n_items=8, per_user=6))
    with pytest.raises(DegenerateDatasetError, match="only 8 items after filtering.*recall@50 is 1"):
        load_dataset("tiny", source="amazon2018", reviews=str(path), filters=Filters(min_rating=4))
    with pytest.warns(DatasetWarning, match="30 of 30 users interacted with >= 50%"):
        data = load_dataset("tiny", source="amazon2018", reviews=str(path), filters=Filters(min_rating=4),
                            check=False)
    assert data.summary()["users_with_most_of_catalogue"] == 30
    assert "error: only 8 items" in data.describe()


def test_duplicate_reviews_across_product_ids_counted_and_collapsed(tmp_path):
    rows = reviews()
    # user U0's review of B000 is listed again under two variant ids, as Amazon's files do
    variants = [dict(rows[0], asin=v) for v in ("V001", "V002")]
    path = write_lines(tmp_path / "r.json", rows + variants)
    data = load_dataset("dups", source="amazon2018", reviews=str(path), cache=False, check=False)
    counts = data.summary()
    assert counts["duplicate_review_rows"] == 3 and counts["duplicate_review_distinct"] == 1
    assert any("3 review rows repeat 1 distinct reviews" in w for w in counts["warnings"])
    assert data.n_items == 62
    merged = load_dataset("dups-merged", source="amazon2018", reviews=str(path), cache=False, check=False,
                          collapse_duplicate_reviews=True)
    assert merged.n_items == 60 and merged.summary()["items_merged"] == 2
    assert merged.stats["duplicates_collapsed"] == 2


# ---------------------------------------------------------------- a name registered once, loaded by name

def test_registered_name_loads_alone_with_its_split_and_a_changed_file_is_one_error(tmp_path, capsys):
    path = write_lines(tmp_path / "Beauty.json.gz", reviews(n_users=60, n_items=80))
    meta_path = write_lines(tmp_path / "meta_Beauty.json", meta(range(80)))
    assert main(["data", "add", "mine", "--source", "amazon2018", "--reviews", str(path), "--meta", str(meta_path),
                 "--min-rating", "4", "--kcore", "5", "--split", "temporal"]) == 0
    assert "registered mine: 60 users, 71 items" in capsys.readouterr().out
    given = load_dataset("mine", source="amazon2018", reviews=str(path), meta=str(meta_path),
                         filters=Filters(min_rating=4, kcore=5), split="temporal")
    by_name = load_dataset("mine")   # what every notebook does
    assert same_matrices(by_name, given) and by_name.stats["identity"] == given.stats["identity"]
    assert by_name.has_item_text and not same_matrices(by_name, load_dataset("mine", split="random"))
    assert same_matrices(load_dataset("mine"), given)   # a load with another split leaves the registration
    with pytest.raises(UnknownDatasetError, match="give --source"):
        load_dataset("mine", reviews=str(path))
    write_lines(meta_path, meta(range(79)))   # the registered file changes
    with pytest.raises(DatasetConflictError, match=r"meta_Beauty\.json changed since it was registered.*"
                                                   r"hnlm data add mine --source amazon2018 --reviews "):
        load_dataset("mine")
    assert main(["data", "stats", "mine"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset 'mine': ") and err.count("\n") == 1


def test_unregistered_name_and_add_without_source_say_how_to_register(capsys):
    with pytest.raises(UnknownDatasetError, match="hnlm data add nosuch --source"):
        load_dataset("nosuch")
    assert main(["data", "add", "nosuch"]) == 2
    assert "needs --source" in capsys.readouterr().err


# ---------------------------------------------------------------- published splits

def test_lightgcn_split_files_round_trip(tmp_path):
    data = load_dataset("ml-100k", seed=0)
    write_lightgcn(data, tmp_path / "split")
    back = load_dataset("ml100k-lightgcn", source="lightgcn", path=str(tmp_path / "split"))
    assert same_matrices(back, data)
    assert back.items["original_id"].tolist() == data.items["original_id"].tolist()
    assert back.stats["split_mode"] == "published" and back.stats["valid_source"] == "valid.txt"
    assert not back.has_item_text


def test_lightgcn_without_valid_carves_it_from_train_with_a_seed(tmp_path):
    data = load_dataset("ml-100k", seed=0)
    write_lightgcn(data, tmp_path / "split")
    (tmp_path / "split" / "valid.txt").unlink()
    a = load_dataset("lg", source="lightgcn", path=str(tmp_path / "split"), seed=3, cache=False)
    b = load_dataset("lg", source="lightgcn", path=str(tmp_path / "split"), seed=3, cache=False)
    c = load_dataset("lg", source="lightgcn", path=str(tmp_path / "split"), seed=4, cache=False)
    assert same_matrices(a, b) and not same_matrices(a, c)
    assert (a.train + a.valid != data.train).nnz == 0 and (a.test != data.test).nnz == 0
    assert a.train.multiply(a.valid).nnz == 0 and a.valid.nnz > 0.08 * data.train.nnz
    assert "carved from train.txt" in a.stats["valid_source"] and "seed 3" in a.stats["valid_source"]


def test_lightgcn_bad_line_names_file_and_line(tmp_path):
    (tmp_path / "train.txt").write_text("0 1 2\n1 2 x\n")
    (tmp_path / "test.txt").write_text("0 3\n")
    with pytest.raises(DataFormatError, match=r"train\.txt:2: expected integer ids"):
        load_dataset("lg", source="lightgcn", path=str(tmp_path), cache=False)
    (tmp_path / "test.txt").unlink()
    with pytest.raises(MissingInputError, match="test.txt"):
        load_dataset("lg", source="lightgcn", path=str(tmp_path), cache=False)


def test_heldout_pairs_also_in_train_are_counted(tmp_path):
    (tmp_path / "train.txt").write_text("".join(f"{u} " + " ".join(str((u + j) % 80) for j in range(10)) + "\n"
                                                for u in range(20)))
    (tmp_path / "test.txt").write_text("0 0 50\n1 60\n")  # (0, 0) is in train too
    with pytest.warns(DatasetWarning, match="1 valid/test pairs are also in train"):
        data = load_dataset("lg", source="lightgcn", path=str(tmp_path), cache=False)
    assert data.stats["heldout_pairs_also_in_train"] == 1
    # the catalogue is ids 0..max (as LightGCN reads it): ids 29..49 and 51..59 never occur, and are counted
    assert data.n_items == 61 and data.summary()["items_without_interactions"] == 30


def packaged_ml100k_inter() -> Path:
    base = Path(list(importlib.util.find_spec("recbole").submodule_search_locations)[0])
    return base / "dataset_example" / "ml-100k" / "ml-100k.inter"


def test_recbole_atomic_files_match_the_ml100k_loader():
    own = load_dataset("my-ml100k", source="recbole", path=str(packaged_ml100k_inter()), seed=0)
    preset = load_dataset("ml-100k", seed=0)
    assert (own.n_users, own.n_items, own.summary()["interactions"]) == (943, 1682, 100_000)
    assert same_matrices(own, preset)
    assert own.items.loc[0, "title"] == "Toy Story" and own.items_without_text == 0


def test_an_empty_id_is_a_malformed_row_not_a_phantom_item(tmp_path):
    """RecBole .inter and JSON sources: strict names the file and row; lenient skips and counts it."""
    rows = "".join(f"u{u}\ti{(u + j) % 60}\n" for u in range(60) for j in range(5))
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\n" + rows + "u1\t\n" + " \ti3\n")
    with pytest.raises(DataFormatError, match=r"x.inter: data row 301 \(after the header\) has an empty item_id"):
        load_dataset("x", source="recbole", path=str(tmp_path / "x.inter"), cache=False, check=False)
    data = load_dataset("x", source="recbole", path=str(tmp_path / "x.inter"), cache=False, check=False,
                        strict=False)
    assert (data.n_users, data.n_items, data.stats["malformed_lines"]) == (60, 60, 2)
    records = [{"reviewerID": f"u{u}", "asin": f"i{(u + j) % 60}", "overall": 5, "unixReviewTime": 1}
               for u in range(60) for j in range(5)]
    write_lines(tmp_path / "r.json", records + [{"reviewerID": "u1", "asin": "", "overall": 5, "unixReviewTime": 1}])
    with pytest.raises(DataFormatError, match=r"r.json:301: required field 'asin' is empty"):
        load_dataset("r", source="amazon2018", reviews=str(tmp_path / "r.json"), cache=False, check=False)
    data = load_dataset("r", source="amazon2018", reviews=str(tmp_path / "r.json"), cache=False, check=False,
                        strict=False, filters=Filters(kcore=1))
    assert (data.n_items, data.stats["malformed_lines"]) == (60, 1)


def test_filters_the_data_cannot_support_are_refused(tmp_path):
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\n" + "".join(f"u{u}\ti{(u + j) % 60}\n"
                                                                                 for u in range(60) for j in range(5)))
    assert load_dataset("x", source="recbole", path=str(tmp_path / "x.inter"), cache=False,
                        check=False).train.nnz > 0
    with pytest.raises(DataFormatError, match="no ratings; drop --min-rating"):
        load_dataset("x", source="recbole", path=str(tmp_path), filters=Filters(min_rating=4), cache=False)
    with pytest.raises(DataFormatError, match="no timestamps; drop --start/--end"):
        load_dataset("x", source="recbole", path=str(tmp_path), filters=Filters(start="2015-01-01"), cache=False)


def test_recbole_benchmark_files_are_used_as_published(tmp_path):
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    rows = {"train": [(u, i) for u in range(3) for i in range(60) if (u + i) % 3], "valid": [(0, 0), (1, 1)],
            "test": [(0, 3), (2, 2)]}
    for part, pairs in rows.items():
        (tmp_path / f"shop.{part}.inter").write_text(header + "".join(f"u{u}\ti{i}\t5\t0\n" for u, i in pairs))
    (tmp_path / "shop.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(f"i{i}\tThing {i}\n"
                                                                                     for i in range(60)))
    data = load_dataset("shop", source="recbole", path=str(tmp_path), cache=False)
    assert (data.train.nnz, data.valid.nnz, data.test.nnz) == (len(rows["train"]), 2, 2)
    assert data.n_items == 60 and data.stats["split_mode"] == "published" and data.has_item_text
    with pytest.raises(UnknownDatasetError, match="published split"):
        load_dataset("shop", source="recbole", path=str(tmp_path), filters=Filters(kcore=5), cache=False)


# ---------------------------------------------------------------- bad inputs: one clear error each

def test_missing_reviews_or_meta_path_names_the_option(tmp_path):
    good = write_lines(tmp_path / "r.json", reviews())
    with pytest.raises(MissingInputError, match=r"nope\.json\.gz does not exist.*--reviews"):
        load_dataset("toys", reviews=str(tmp_path / "nope.json.gz"))
    with pytest.raises(MissingInputError, match=r"meta\.json does not exist.*--meta"):
        load_dataset("toys", reviews=str(good), meta=str(tmp_path / "meta.json"))


def test_truncated_gzip_is_a_clear_error(tmp_path):
    full = write_lines(tmp_path / "full.json.gz", reviews())
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(full.read_bytes()[:len(full.read_bytes()) // 2])
    with pytest.raises(DataFormatError, match=r"cut\.json\.gz is a truncated or corrupt gzip file") as err:
        load_dataset("beauty", source="amazon2018", reviews=str(cut))
    assert "\n" not in str(err.value)  # the CLI prints it as one line (test_data_prepare runs the CLI)


def test_gzip_told_by_content_not_name(tmp_path):
    gz_named_plain = write_lines(tmp_path / "plain.json", reviews())
    gz_named_plain.rename(tmp_path / "plain.json.gz")
    plain_named_gz = tmp_path / "zipped.json"
    plain_named_gz.write_bytes(gzip.compress((tmp_path / "plain.json.gz").read_bytes()))
    a = load_dataset("a", source="amazon2018", reviews=str(tmp_path / "plain.json.gz"), cache=False)
    b = load_dataset("b", source="amazon2018", reviews=str(plain_named_gz), cache=False)
    assert same_matrices(a, b) and a.train.nnz > 0


def test_empty_and_unknown(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(DataFormatError, match="empty.json is empty"):
        load_dataset("beauty", source="amazon2018", reviews=str(empty))
    blank = tmp_path / "blank.json"
    blank.write_text("\n\n")
    with pytest.raises(DataFormatError, match="no usable records"):
        load_dataset("beauty", source="amazon2018", reviews=str(blank))
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'beauty'.*--source"):
        load_dataset("beauty")
    with pytest.raises(UnknownDatasetError, match="unknown --source"):
        load_dataset("beauty", source="amazon2020", reviews=str(empty))


def test_hf_model_unavailable_offline_is_one_line(monkeypatch):
    from hnlm.llm.models import load_causal_lm
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingInputError) as err:
        load_causal_lm("hf:nobody/no-such-model-anywhere", device="cpu")
    message = str(err.value)
    assert "\n" not in message and "not in the local Hugging Face cache" in message
    assert "hf download nobody/no-such-model-anywhere" in message
    with pytest.raises(MissingInputError, match="model folder ./no-such-folder does not exist"):
        load_causal_lm("./no-such-folder", device="cpu")


def test_finetune_refuses_an_unavailable_llm_before_any_training(capsys):
    """`hnlm finetune --llm` with a model that cannot be loaded offline fails in one line, before the teacher."""
    from hnlm.cli import main
    assert main(["finetune", "--llm", "hf:nobody/no-such-model-anywhere", "--max-steps", "1"]) == 2
    err = capsys.readouterr()
    assert "not in the local Hugging Face cache" in err.err and "teacher" not in err.out + err.err


# ---------------------------------------------------------------- command-line options, artefact root

def test_dataset_options_reach_load_dataset(tmp_path):
    data = load_dataset("ml-100k", seed=0)
    write_lightgcn(data, tmp_path / "split")
    parser = argparse.ArgumentParser()
    add_dataset_options(parser)
    args = parser.parse_args(["--dataset", "mine", "--source", "lightgcn", "--path", str(tmp_path / "split")])
    assert same_matrices(dataset_from_args(args), data)
    with pytest.raises(UserFacingError):
        dataset_from_args(parser.parse_args(["--dataset", "mine", "--source", "lightgcn"]))


def test_one_artefact_root_moves_every_cache(tmp_path, monkeypatch):
    from hnlm.llm.cache import default_cache_path
    from hnlm.llm.models import model_cache_dir
    from hnlm.paths import cache_root
    for name in ("HNLM_LLM_CACHE", "HNLM_MODEL_CACHE", "HNLM_ENCODER_CACHE"):   # set by the test session
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "artifacts"
    assert default_cache_path("m").parent == root / "llm_cache"
    assert model_cache_dir("smollm2-135m") == root / "models" / "smollm2-135m"
    assert cache_root("encoders") == root / "encoders"
    monkeypatch.setenv("HNLM_LLM_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_path("m").parent == tmp_path / "elsewhere"


def test_a_model_conversion_under_way_elsewhere_is_waited_for_not_repeated(tmp_path, monkeypatch):
    """Two test workers (or launched processes) needing the converted LLM at once: one converts, the other waits
    on the lock and then uses that copy instead of replacing a folder the first may be loading."""
    from hnlm.llm.models import converted_folder
    monkeypatch.setenv("HNLM_MODEL_CACHE", str(tmp_path))
    target = tmp_path / "smollm2-135m"
    with (tmp_path / ".smollm2-135m.lock").open("w") as lock, ThreadPoolExecutor(1) as pool:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is converting
        waiting = pool.submit(converted_folder, "smollm2-135m")
        time.sleep(0.5)
        assert not waiting.done()
        target.mkdir()
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_bytes(b"theirs")
        fcntl.flock(lock, fcntl.LOCK_UN)
        assert waiting.result(timeout=60) == target
    assert (target / "model.safetensors").read_bytes() == b"theirs"
