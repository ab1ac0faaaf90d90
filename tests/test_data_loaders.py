"""Readers for each raw format, on small files written here in the real formats (plain and gzip)."""

import gzip
import json

import pytest

from hnlm.data import sources
from hnlm.data.registry import load_dataset
from hnlm.errors import DataFormatError, DegenerateDatasetError, EmptyDatasetError, MissingInputError


def write_lines(path, records, broken_line=None):
    lines = [json.dumps(r) for r in records]
    if broken_line is not None:
        lines.insert(broken_line, '{"reviewerID": "A1", "asin": ')
    text = "\n".join(lines) + "\n"
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def amazon2018_reviews(n_users=12, n_items=12, per_user=11):
    """Every user rates `per_user` items with 5 stars inside 2016; user 0 also has a low rating."""
    rows = []
    for u in range(n_users):
        for j in range(per_user):
            i = (u + j) % n_items
            rows.append({"reviewerID": f"U{u}", "asin": f"B{i:03d}", "overall": 5.0,
                         "unixReviewTime": 1460000000 + 1000 * j, "reviewText": f"review {u}-{i}",
                         "summary": "great"})
    rows.append({"reviewerID": "U0", "asin": "B011", "overall": 2.0, "unixReviewTime": 1460000000})
    return rows


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_amazon2018_reader_plain_and_gzip(tmp_path, suffix):
    path = write_lines(tmp_path / f"Toys{suffix}", amazon2018_reviews())
    meta = write_lines(tmp_path / "meta_Toys.json.gz",
                       [{"asin": f"B{i:03d}", "title": f"Toy {i}", "brand": "Acme",
                         "description": ["Fun", "for kids"], "category": ["Toys & Games", "Puzzles"]}
                        for i in range(12)])
    raw = sources.read_amazon2018(path, meta)
    assert len(raw.inter) == 12 * 11 + 1
    assert set(raw.inter.columns) == set(sources.INTER_COLUMNS)
    assert raw.inter["review"].iloc[0] == "great. review 0-0"
    item = raw.items.set_index("item").loc["B003"]
    assert item["title"] == "Toy 3" and item["categories"] == "Toys & Games, Puzzles"
    assert item["description"] == "Fun for kids"


def test_amazon2018_malformed_line_strict_and_lenient(tmp_path):
    path = write_lines(tmp_path / "Toys.json", amazon2018_reviews(), broken_line=5)
    with pytest.raises(DataFormatError, match=r"Toys\.json:6"):
        sources.read_amazon2018(path, strict=True)
    raw = sources.read_amazon2018(path, strict=False)
    assert raw.counts["malformed_lines"] == 1
    assert len(raw.inter) == 12 * 11 + 1


def test_missing_required_field_names_file_and_line(tmp_path):
    records = amazon2018_reviews()
    del records[3]["asin"]
    path = write_lines(tmp_path / "Toys.json", records)
    with pytest.raises(DataFormatError, match=r"Toys\.json:4: required field 'asin'"):
        sources.read_amazon2018(path)
    assert sources.read_amazon2018(path, strict=False).counts["malformed_lines"] == 1


def test_amazon2023_reader_converts_milliseconds(tmp_path):
    reviews = write_lines(tmp_path / "Electronics.jsonl", [
        {"user_id": "AE1", "parent_asin": "P1", "asin": "X", "rating": 4.0, "timestamp": 1500000000123,
         "title": "Nice", "text": "works"},
        {"user_id": "AE2", "parent_asin": "P2", "rating": 3.0, "timestamp": 1500000001000, "text": "ok"},
    ])
    meta = write_lines(tmp_path / "meta_Electronics.jsonl", [
        {"parent_asin": "P1", "title": "Cable", "main_category": "All Electronics", "categories": [],
         "description": ["USB"], "store": "Acme"},
        {"parent_asin": "P2", "title": "Plug", "categories": ["Electronics", "Power"]},
    ])
    raw = sources.read_amazon2023(reviews, meta)
    assert raw.inter["timestamp"].tolist() == [1500000000, 1500000001]
    items = raw.items.set_index("item")
    assert items.loc["P1", "categories"] == "All Electronics"
    assert items.loc["P2", "categories"] == "Electronics, Power"
    assert items.loc["P1", "brand"] == "Acme"


def test_yelp_reader(tmp_path):
    reviews = write_lines(tmp_path / "review.json", [
        {"review_id": "r1", "user_id": "y1", "business_id": "b1", "stars": 5, "date": "2016-03-01 10:00:00",
         "text": "Great tacos"},
        {"review_id": "r2", "user_id": "y2", "business_id": "b1", "stars": 2, "date": "2017-05-01 10:00:00",
         "text": "meh"},
    ])
    business = write_lines(tmp_path / "business.json", [
        {"business_id": "b1", "name": "Taco Place", "city": "Phoenix", "state": "AZ",
         "categories": "Mexican, Restaurants"}])
    raw = sources.read_yelp(reviews, business)
    assert raw.inter["timestamp"].iloc[0] == 1456826400
    assert raw.items.set_index("item").loc["b1", "title"] == "Taco Place"
    assert raw.inter["review"].iloc[0] == "Great tacos"


def test_missing_file_says_how_to_obtain(tmp_path):
    with pytest.raises(MissingInputError, match="Amazon Review Data"):
        sources.read_amazon2018(tmp_path / "nope.json.gz")


def test_preset_without_path_explains(monkeypatch):
    monkeypatch.delenv("HNLM_DATA_DIR", raising=False)
    with pytest.raises(MissingInputError, match="--reviews PATH"):
        load_dataset("toys", cache=False)


def test_toys_preset_end_to_end(tmp_path):
    path = write_lines(tmp_path / "Toys.json.gz", amazon2018_reviews())
    with pytest.raises(DegenerateDatasetError, match="only 12 items"):
        load_dataset("toys", reviews=str(path), cache=False)
    data = load_dataset("toys", reviews=str(path), cache=False, check=False)  # 12 items: inspection only
    # the 2-star rating is dropped by the threshold; 12 users x 11 items survive 10-core
    assert data.n_users == 12 and data.n_items == 12
    assert data.train.nnz + data.valid.nnz + data.test.nnz == 12 * 11
    assert data.stats["filter_steps"][1]["step"] == "rating >= 4"


def test_empty_after_filtering_reports_each_step(tmp_path):
    path = write_lines(tmp_path / "Toys.json", amazon2018_reviews(per_user=3))
    with pytest.raises(EmptyDatasetError) as err:
        load_dataset("toys", reviews=str(path), cache=False)
    message = str(err.value)
    assert "loaded: 37 interactions" in message and "10-core: 0 interactions" in message


def test_duplicates_collapsed_and_counted(tmp_path):
    records = amazon2018_reviews()
    records.append(dict(records[0], unixReviewTime=records[0]["unixReviewTime"] + 5))
    path = write_lines(tmp_path / "Toys.json", records)
    data = load_dataset("toys", reviews=str(path), cache=False, check=False)
    assert data.stats["duplicates_collapsed"] == 1
    assert data.train.nnz + data.valid.nnz + data.test.nnz == 12 * 11
