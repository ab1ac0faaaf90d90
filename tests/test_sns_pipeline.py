"""Module 2 end to end with a real (small) LLM and the real MiniLM encoder: generate, resume, embed,
ground, measure, load the bank and the grounded pools for training."""

import dataclasses
import json

import numpy as np
import pytest
import scipy.sparse as sp

from hnlm.data import load_dataset
from hnlm.errors import MissingInputError
from hnlm.llm.backends import make_backend
from hnlm.llm.encoders import get_text_encoder
from hnlm.semantic import sns
from hnlm.semantic.sns import Budget

pytestmark = pytest.mark.slow


def test_generate_resume_build_and_load(tmp_path, monkeypatch):
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("HNLM_LLM_CACHE", str(tmp_path / "llm_cache"))
    data = load_dataset("ml-100k", seed=0)
    budget = Budget(1)
    pairs = sns.select_pairs(data, budget, seed=0)
    pairs = pairs[pairs["user"] < 2]
    builder = sns.PromptBuilder(data, context="history")
    backend = make_backend("smollm2-135m", batch_size=2, progress=False)
    out = sns.sns_dir(data.name, "smollm2-135m", "0")
    first = sns.generate_negatives(data, backend, pairs, builder, out, chunk=2)
    assert first["generated"] == 2
    again = sns.generate_negatives(data, backend, pairs, builder, out, chunk=2)
    assert again["generated"] == 0 and again["already_done"] == 2  # resumable: nothing regenerated
    records = sns.read_negatives(out / "negatives.jsonl")
    assert len(records) == 2 and records["ok"].sum() >= 1  # schema-constrained decoding
    assert all(len(str(t).split()) <= sns.MAX_WORDS for t in records.loc[records["ok"].astype(bool), "text"])

    with pytest.raises(Exception, match="have no generated output"):
        sns.build_artifacts(data, "smollm2-135m", budget, get_text_encoder("minilm"))
    built = sns.build_artifacts(data, "smollm2-135m", budget, get_text_encoder("minilm"), pool=5,
                                allow_missing=True)
    q = built["quality"]
    assert q["not_generated"] == data.n_users - 2 and q["requested"] == 2
    for key in ("valid_json_rate", "names_train_item_share", "false_hard_negative_share",
                "sim_to_positive_mean", "coverage_users"):
        assert key in q
    assert json.loads((out / "quality_per-user-1.json").read_text()) == q

    bank = sns.load_bank(data, "smollm2-135m", budget)
    assert bank.dim == 384 and len(bank) == int(records["ok"].sum())
    np.testing.assert_allclose(np.linalg.norm(bank.emb, axis=1), 1.0, atol=1e-4)
    grounded = sns.load_grounded(data, "smollm2-135m", budget)
    for u, pool in zip(grounded["user"], grounded["pool"]):
        assert len(pool) == 5 and not set(pool) & set(data.train_items(int(u)).tolist())

    other_split = load_dataset("ml-100k", seed=1)  # its own split's folder holds nothing
    with pytest.raises(MissingInputError, match="split-1/bank_per-user-1.npz is missing"):
        sns.load_bank(other_split, "smollm2-135m", budget)


def test_sampled_candidate_picks_are_reproducible_and_valid(tmp_path, monkeypatch):
    """Sampled decoding with one seed gives the same answers in two independent runs (separate caches), on
    the packaged SmolLM2 with two prompts; the answers are item ids from each pair's candidate list."""
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    data = load_dataset("ml-100k", seed=0)
    pairs = sns.select_pairs(data, Budget(1), seed=0)
    pairs = pairs[pairs["user"] < 2]
    sampling = {"temperature": 1.0, "top_p": 0.9, "seed": 7}
    builder = sns.PickPromptBuilder(data, context="history", decoding=sns.sampling_tag(**sampling))
    runs = []
    for run in ("a", "b"):
        backend = make_backend("smollm2-135m", batch_size=2, progress=False,
                               cache_path=tmp_path / f"cache-{run}.jsonl", **sampling)
        out = tmp_path / run
        out.mkdir()
        sns.generate_negatives(data, backend, pairs, builder, out, chunk=2)
        runs.append(sns.read_negatives(out / builder.records_file, builder.tag, sns.PICK_COLUMNS))
    a, b = runs
    assert len(a) == 2 and a["ok"].all()
    assert a["picked"].tolist() == b["picked"].tolist() and a["reasoning"].tolist() == b["reasoning"].tolist()
    for cands, picked in zip(a["candidates"], a["picked"]):
        assert set(picked) <= set(cands) and len(picked) <= sns.PICK_MAX


def test_sampled_negatives_are_reproducible_with_their_seed_and_copies_are_drawn_again(tmp_path, monkeypatch):
    """K = 2 sampled negatives for 3 users on SmolLM2, twice with one seed (separate caches: the same records,
    redraws included) and once with another seed (other texts). The copy filter here counts every catalogue
    title as the users' (a real DrawFilter over an all-ones matrix), so copies occur and are drawn again: every
    rejected text is a copy or names no item, every kept one is neither, and a pair left with rejects only is
    invalid with its last draw's reason."""
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    data = load_dataset("ml-100k", seed=0)
    pairs = sns.select_pairs(data, Budget(1), seed=0)
    pairs = pairs[pairs["user"] < 3]
    everything = sns.DrawFilter(sp.csr_matrix(np.ones((data.n_users, data.n_items))),
                                list(data.items["title"].fillna("")), sns.genre_words_of(data))

    def run(name: str, decoding: sns.Decoding):
        backend = make_backend("smollm2-135m", batch_size=4, progress=False,
                               cache_path=tmp_path / f"cache-{name}.jsonl", **decoding.backend_options())
        builders = sns.sample_builders(data, "history", None, 0, decoding)
        for b in builders:
            b._filter = everything
        (tmp_path / name).mkdir()
        sns.generate_negatives(data, backend, pairs, builders, tmp_path / name, chunk=2)
        return sns.read_samples(tmp_path / name / "negatives.jsonl", [b.tag for b in builders])

    decoding = sns.Decoding(samples=2, tries=3)
    a, b = run("a", decoding), run("b", decoding)
    cols = ["user", "item", "sample", "ok", "text", "reasoning", "tries", "rejected"]
    assert len(a) == 6 and a[cols].equals(b[cols])
    other = run("c", dataclasses.replace(decoding, seed=decoding.seed + 100, samples=1))
    assert (other["reasoning"].tolist() != a.loc[a["sample"] == 0, "reasoning"].tolist())
    assert sum(len(r) for r in a["rejected"]) > 0   # copies happened and were drawn again
    for r in a.itertuples():
        assert all(everything.reject_reason(r.user, t) is not None for t in r.rejected)
        if r.ok:
            assert everything.reject_reason(r.user, r.text) is None and r.tries == len(r.rejected) + 1
        elif r.reason in sns.FILTER_REASONS:
            assert r.tries == len(r.rejected) == decoding.tries and r.text is None
            assert everything.reject_reason(r.user, r.rejected[-1]) == r.reason


def test_records_of_a_laxer_filter_are_rejudged_and_draw_on_with_the_seeds_a_fresh_run_uses(tmp_path, monkeypatch):
    """K = 2 sampled negatives for 3 users on SmolLM2, first under a laxer filter (no training items: only texts
    naming no item are drawn again), then re-judged under a strict one (every catalogue title is the users'):
    a kept draw the strict rules accept stands as it was, a rejected one joins the rejects and drawing goes on
    from the next try. A fresh strict run over the same LLM cache gives the same records without drawing
    anything new: the re-judged output is the one the strict rules make, a try's seed being the same."""
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    data = load_dataset("ml-100k", seed=0)
    pairs = sns.select_pairs(data, Budget(1), seed=0)
    pairs = pairs[pairs["user"] < 3]
    titles, genres = list(data.items["title"].fillna("")), sns.genre_words_of(data)
    lax = sns.DrawFilter(sp.csr_matrix((data.n_users, data.n_items)), titles, genres)
    strict = sns.DrawFilter(sp.csr_matrix(np.ones((data.n_users, data.n_items))), titles, genres)
    decoding = sns.Decoding(samples=2, tries=3)
    backend = make_backend("smollm2-135m", batch_size=4, progress=False, cache_path=tmp_path / "cache.jsonl",
                           **decoding.backend_options())

    def run(name: str, rules, prior=None):
        builders = sns.sample_builders(data, "history", None, 0, decoding)
        for b in builders:
            b._filter = rules
        (tmp_path / name).mkdir()
        counts = sns.generate_negatives(data, backend, pairs, builders, tmp_path / name, chunk=2, prior=prior)
        return sns.read_samples(tmp_path / name / "negatives.jsonl", [b.tag for b in builders]), counts

    old, _ = run("lax", lax)
    prior = {(int(r.sample), int(r.user), int(r.item)): r._asdict() for r in old.itertuples()}
    new, counts = run("rejudged", strict, prior)
    assert counts["rejudged"] == len(old) == len(new) == 6
    now_rejected = 0
    for a, b in zip(old.sort_values(["user", "sample"]).itertuples(), new.sort_values(["user", "sample"]).itertuples()):
        if not a.ok or strict.reject_reason(a.user, a.text) is None:
            assert (b.ok, b.text, b.tries, b.rejected) == (a.ok, a.text, a.tries, a.rejected)
            continue
        now_rejected += 1
        assert b.rejected[:a.tries] == [*a.rejected, a.text]
        assert b.tries > a.tries or (b.tries == a.tries == decoding.tries and not b.ok)
        assert all(strict.reject_reason(b.user, t) is not None for t in b.rejected)
        assert not b.ok or strict.reject_reason(b.user, b.text) is None
    assert now_rejected > 0   # the strict rules rejected kept draws, which drew on
    fresh, counts = run("fresh", strict)
    cols = ["user", "item", "sample", "ok", "text", "reasoning", "tries", "rejected"]
    key = ["user", "sample"]
    assert fresh.sort_values(key)[cols].reset_index(drop=True).equals(new.sort_values(key)[cols].reset_index(drop=True))
    assert counts["from_llm_cache"] == counts["generated"]
