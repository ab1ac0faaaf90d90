"""Shipped LLM outputs: manifests, lookup by content, loud failures on damaged files, use by the study, verify."""

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hnlm.cli import main
from hnlm.data import first_users, load_dataset
from hnlm.llm.backends import make_backend
from hnlm.paths import cache_root, outputs_root
from hnlm.semantic import outputs, sns
from hnlm.semantic import profiles as pf
from hnlm.semantic.bank import NegativeBank
from hnlm.semantic.common import SNS_DECODING, Budget, OtherSplitError, select_pairs
from hnlm.semantic.hnlmrec import banks, transfer
from hnlm.semantic.hnlmrec.finetune import FinetuneConfig
from hnlm.semantic.hnlmrec.run import RunConfig, TeacherConfig, bank_files, run_folder
from hnlm.study import pipeline, publish
from hnlm.study.llm_outputs import LLM_SIZE, block_users, prepare, sns_settings, units
from hnlm.study.settings import settings
from hnlm.study.verify import list_outputs, shared_prefix_share, verify

KEY = {"model": "m:abc", "schema": {"type": "object"}, "decoding": {"max_new_tokens": 40},
       "templates": {"t.txt": "aa"}, "split": "f1", "split_seed": 0}
BF16 = {"dtype": "bfloat16", "device": "cuda", "device_name": "NVIDIA H200", "torch": "2.x", "transformers": "5.x"}


@pytest.fixture(scope="module")
def data():
    return load_dataset("ml-100k", seed=0)


def rows(n=2):
    return [{"id": i, "ok": True, "summarization": f"text {i}", "reasoning": "r", "reason": None,
             "prompt_sha": f"p{i}"} for i in range(n)]


def made_bank(users, items, emb) -> NegativeBank:
    return NegativeBank(np.asarray(emb, np.float32), users, items, source="test")


def ship(root, key=KEY, n=2, kind="profiles-item"):
    return outputs.publish_records(kind, "ml-100k", "m", "split-0", rows(n), key, BF16, root=root)


def test_manifest_round_trip_and_republish_replaces(tmp_path):
    mpath = ship(tmp_path)
    found = outputs.find("profiles-item", "ml-100k", "m", "split-0", tmp_path)
    m = found.manifest
    assert m["records"] == 2 and m["key"] == KEY and m["made_with"] == BF16
    assert m["sha256"] == outputs.sha256_file(found.path)
    assert found.rows() == rows() and found.path.parent == mpath.parent
    ship(tmp_path, n=3)
    files = sorted(p.name for p in mpath.parent.iterdir())
    assert len(files) == 2       # the slot's previous file is gone
    assert outputs.find("profiles-item", "ml-100k", "m", "split-0", tmp_path).manifest["records"] == 3

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((50, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    outputs.publish_vectors("hnlmrec-bank", "ml-100k", "m", "text_split-0",
                            made_bank(np.arange(50), np.arange(50) + 7, emb), KEY, BF16, root=tmp_path)
    vec = outputs.find("hnlmrec-bank", "ml-100k", "m", "text_split-0", tmp_path)
    a = vec.bank()
    assert a.emb.dtype == np.float32 and a.items.tolist() == list(range(7, 57))
    assert vec.manifest["vectors"]["fp16_min_cosine"] > 0.99999
    assert outputs.min_cosine(emb, a.emb) == pytest.approx(vec.manifest["vectors"]["fp16_min_cosine"])


def test_lookup_is_by_content_and_reports_the_dtype(tmp_path):
    ship(tmp_path)
    wanted = {(0,): "p0", (1,): "p1"}
    hit = outputs.lookup("profiles-item", "ml-100k", "m", "split-0", KEY, wanted, root=tmp_path)
    assert hit.shipped is not None and [r["id"] for r in hit.rows] == [0, 1]
    assert "bfloat16 on cuda (NVIDIA H200)" in hit.shipped.line()     # another dtype: found and reported
    only_first = outputs.lookup("profiles-item", "ml-100k", "m", "split-0", KEY, {(0,): "p0"}, root=tmp_path)
    assert [r["id"] for r in only_first.rows] == [0]
    setting = outputs.lookup("profiles-item", "ml-100k", "m", "split-0", {**KEY, "decoding": {"max_new_tokens": 41}},
                             wanted, root=tmp_path)
    assert setting.shipped is None and setting.reason.endswith("decoding changed")
    template = outputs.lookup("profiles-item", "ml-100k", "m", "split-0", {**KEY, "templates": {"t.txt": "bb"}},
                              wanted, root=tmp_path)
    assert template.shipped is None and "template t.txt changed" in template.reason
    prompt = outputs.lookup("profiles-item", "ml-100k", "m", "split-0", KEY, {(0,): "p0", (1,): "changed"},
                            root=tmp_path)
    assert prompt.shipped is None and "1 of 2 prompts changed" in prompt.reason
    more = outputs.lookup("profiles-item", "ml-100k", "m", "split-0", KEY, {**wanted, (2,): "p2"}, root=tmp_path)
    assert more.shipped is None and "1 not shipped" in more.reason
    assert [r["id"] for r in more.rows] == [0, 1]       # the part shipped so far: a blocked job resumes from it
    assert prompt.rows is None                           # a changed prompt: nothing of it may be reused
    absent = outputs.lookup("profiles-user", "ml-100k", "m", "split-0", KEY, wanted, root=tmp_path)
    assert absent.shipped is None and absent.reason.startswith("none shipped")


def test_regenerate_ignores_what_is_shipped(tmp_path, monkeypatch):
    ship(tmp_path)
    monkeypatch.setenv(outputs.REGENERATE_VAR, "1")
    miss = outputs.lookup("profiles-item", "ml-100k", "m", "split-0", KEY, {(0,): "p0"}, root=tmp_path)
    assert miss.shipped is None and "HNLM_REGENERATE" in miss.reason


def rewrite(found, data: bytes):
    """Replace a shipped file's bytes and make its manifest agree on the sha256 (a bad publish, not a bit flip)."""
    found.path.write_bytes(data)
    m = dict(found.manifest, sha256=outputs.sha256_bytes(data))
    found.manifest_path.write_text(json.dumps(m))


def test_damaged_outputs_are_errors_naming_file_and_command(tmp_path):
    ship(tmp_path)
    found = outputs.find("profiles-item", "ml-100k", "m", "split-0", tmp_path)
    good = found.path.read_bytes()
    found.path.write_bytes(good.replace(b"text 0", b"text X"))
    with pytest.raises(outputs.ShippedOutputError, match=r"sha256.*hnlm study --llm-only --publish.*--stages profiles"):
        outputs.find("profiles-item", "ml-100k", "m", "split-0", tmp_path)
    rewrite(found, good[:-5])
    with pytest.raises(outputs.ShippedOutputError, match=f"{found.path}.*torn line"):
        outputs.lookup("profiles-item", "ml-100k", "m", "split-0", KEY, {(0,): "p0"}, root=tmp_path)
    rewrite(found, good.split(b"\n")[0] + b"\n")
    with pytest.raises(outputs.ShippedOutputError, match="holds 1 records, its manifest says 2"):
        outputs.find("profiles-item", "ml-100k", "m", "split-0", tmp_path).rows()
    rewrite(found, good)
    with pytest.raises(OtherSplitError, match=f"{found.path} was made from another training split .fingerprint f1, "
                                              r"this data's is f2.*hnlm study --llm-only --publish.*--stages profiles"):
        outputs.lookup("profiles-item", "ml-100k", "m", "split-0", {**KEY, "split": "f2"}, {(0,): "p0"}, root=tmp_path)

    outputs.publish_vectors("hnlmrec-bank", "ml-100k", "m", "text_split-0",
                            made_bank([0, 1], [3, 4], np.ones((2, 8))), KEY, BF16, root=tmp_path)
    vec = outputs.find("hnlmrec-bank", "ml-100k", "m", "text_split-0", tmp_path)
    buf = io.BytesIO()
    np.savez(buf, users=np.array([0, 1], np.int32), items=np.array([3, 4], np.int32), emb=np.ones((2, 7), np.float16))
    rewrite(vec, buf.getvalue())
    with pytest.raises(outputs.ShippedOutputError, match=r"shape \[2, 7\].*manifest says \[2, 8\]"):
        outputs.find("hnlmrec-bank", "ml-100k", "m", "text_split-0", tmp_path).bank()


def test_the_repositorys_shipped_outputs_are_intact():
    table = list_outputs()
    assert table["check"].eq("ok").all(), table[table["check"].ne("ok")].to_string()


def test_list_flags_a_damaged_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HNLM_OUTPUTS", str(tmp_path))
    ship(tmp_path)
    found = outputs.find("profiles-item", "ml-100k", "m", "split-0", tmp_path)
    assert main(["outputs", "list"]) == 0 and "ok" in capsys.readouterr().out
    found.path.write_bytes(b"{}\n")
    assert main(["outputs", "list"]) == 1 and "DAMAGED" in capsys.readouterr().out


def test_study_profiles_use_shipped_records_whose_prompts_match(data, tmp_path, monkeypatch, capsys):
    """No model is loaded: the two shipped item profiles answer a limit-2 request; one changed prompt misses."""
    monkeypatch.setenv("HNLM_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    backend = make_backend("smollm2-135m", progress=False)
    shas = pf.prompt_hashes(data, "item", range(2), 0)
    shipped = [dict(r, prompt_sha=shas[(r["id"],)]) for r in rows()]
    outputs.publish_records("profiles-item", "ml-100k", "smollm2-135m", "split-0", shipped,
                            pf.shipped_key(data, backend, "item", 0), BF16)
    frame, counts, summaries = pf.study_profiles(data, backend, "smollm2-135m", "item", 2, 0)
    assert frame["summarization"].tolist() == ["text 0", "text 1"] and counts["shipped"] == 2
    assert counts["generated"] == 0 and summaries == {0: "text 0", 1: "text 1"}
    assert "[outputs] profiles-item: shipped" in capsys.readouterr().out
    other = pf.shipped_key(data, backend, "item", 0, schema=pf.profile_schema(summary_tokens=10))
    assert outputs.lookup("profiles-item", "ml-100k", "smollm2-135m", "split-0", other, {(0,): shas[(0,)]}
                          ).reason.endswith("decoding changed; schema changed")


@pytest.mark.slow
def test_verify_regenerates_a_sample_with_a_fresh_cache(data, tmp_path, monkeypatch):
    """Two item profiles made with SmolLM2 here, shipped, then regenerated by `verify` with an empty cache."""
    monkeypatch.setenv("HNLM_MODEL_CACHE", str(cache_root("models")))  # the converted model, not a new copy
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("HNLM_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("HNLM_LLM_DTYPE", "float32")  # 4x faster than this CPU's bf16 (12 vs 3 tokens/s, measured)
    backend = make_backend("smollm2-135m", progress=False, cache_path=tmp_path / "made.jsonl")
    frame, _ = pf.generate_profiles(data, backend, "item", limit=2)
    shas = pf.prompt_hashes(data, "item", range(2), 0)
    made = [{"id": int(r.id), "ok": bool(r.ok), "summarization": r.summarization, "reasoning": r.reasoning,
             "reason": r.reason, "prompt_sha": shas[(int(r.id),)]} for r in frame.itertuples()]
    outputs.publish_records("profiles-item", "ml-100k", "smollm2-135m", "split-0", made,
                            pf.shipped_key(data, backend, "item", 0), outputs.made_with("smollm2-135m"))
    run = banks.run_settings(RunConfig(FinetuneConfig(llm="smollm2-135m")))
    outputs.publish_vectors("hnlmrec-bank", "ml-100k", "smollm2-135m", "text_split-0",
                            made_bank([0], [1], np.ones((1, 4))), {"settings": run, "split_seed": 0}, BF16)
    (result, vectors) = sorted(verify(2), key=lambda r: r["kind"], reverse=True)
    assert result["regenerated"] == 2 and result["exact_text_share"] == 1.0
    assert result["field_matches"] == {"ok": 2, "summarization": 2, "reasoning": 2}
    assert result["shared_prefix_shares"] == [1.0, 1.0]
    assert "not re-embedded: the fine-tuned adapter" in vectors["summary"] and "none is shipped" in vectors["summary"]


@pytest.mark.slow
def test_verify_rebuilds_sns_prompts_and_skips_sampled_decoding(data, tmp_path, monkeypatch):
    """Shipped SNS records (history context) are regenerated from prompts equal to the shipped ones; records
    made with sampled decoding are reported, not compared."""
    monkeypatch.setenv("HNLM_MODEL_CACHE", str(cache_root("models")))
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("HNLM_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("HNLM_LLM_DTYPE", "float32")
    llm = "smollm2-135m"
    pairs = select_pairs(data, Budget.parse("per-user:1"), 0)
    pairs = pairs[pairs["user"] < 2]
    backend = make_backend(llm, progress=False)
    for decoding in ("greedy", "sample-t0.7-p0.9-s0"):
        builder = sns.PromptBuilder(data, "history", llm, decoding=decoding)
        records = [{"user": u, "item": i, "ok": True, "text": f"neg {u}", "reasoning": "r", "reason": None,
                    "words": 2, "truncated": False, "prompt_sha": sha}
                   for (u, i), sha in sns.prompt_hashes(builder, pairs).items()]
        outputs.publish_records("sns-negatives", "ml-100k", llm, sns.shipped_slot(builder, "0"), records,
                                sns.shipped_key(data, backend, builder, 0), BF16)
    greedy, sampled = sorted(verify(2), key=lambda r: "sample" in r["slot"])
    assert greedy["regenerated"] == 2 and greedy["prompts_changed"] == 0
    assert sampled["regenerated"] == 0 and "sampled decoding (sample-t0.7-p0.9-s0)" in sampled["summary"]


def test_shared_prefix_share_is_the_identical_start_over_the_longer_text():
    assert shared_prefix_share("abcd", "abcd") == 1.0
    assert shared_prefix_share("abXYZW", "abcd") == 2 / 6
    assert shared_prefix_share("ab", "abcd") == 0.5
    assert shared_prefix_share(None, "abcd") == 0.0 and shared_prefix_share(None, None) == 1.0



def test_study_sns_and_hnlmrec_use_shipped_outputs_without_a_model(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HNLM_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    llm = "smollm2-135m"
    pairs = select_pairs(data, Budget.parse("per-user:1"), 0)
    pairs = pairs[pairs["user"] < 2]
    builder = sns.PromptBuilder(data, "history", llm)
    backend = make_backend(llm, progress=False)
    shas = sns.prompt_hashes(builder, pairs)
    records = [{"user": u, "item": i, "ok": True, "text": f"neg {u}", "reasoning": "r", "reason": None, "words": 2,
                "truncated": False, "prompt_sha": sha} for (u, i), sha in shas.items()]
    outputs.publish_records("sns-negatives", "ml-100k", llm, sns.shipped_slot(builder, "0"), records,
                            sns.shipped_key(data, backend, builder, 0), BF16)
    _, _, gen = pipeline.generate_study_sns(data, llm, 2, context="history", decoding=sns.GREEDY)
    assert gen["shipped"] == 2 and gen["generated"] == 0
    cached = sns.read_negatives(sns.sns_dir("ml-100k", llm, "0") / "negatives.jsonl", builder.tag)
    assert sorted(cached["text"]) == ["neg 0", "neg 1"]
    assert "2 records copied" in capsys.readouterr().out
    pipeline.generate_study_sns(data, llm, 2, context="history", decoding=sns.GREEDY)
    assert "0 records copied" in capsys.readouterr().out           # a rerun appends nothing

    conf = settings("smoke", "05_hnlmrec")["hnlmrec"]
    cfg = pipeline.hnlmrec_config(llm, "text", conf)
    emb = np.eye(3, 384, dtype=np.float32)
    summary = {"examples": 8, "steps": 2, "loss_history": [1.0, 0.5], "timings": {"s_per_step": 1.0}}
    outputs.publish_vectors("hnlmrec-bank", "ml-100k", llm, banks.shipped_slot(cfg, "0"),
                            made_bank([0, 1, 2], [5, 6, 7], emb), banks.shipped_key(data, cfg, 0), BF16,
                            {"summary": summary, "bank_meta": {"adapter": "abc", "run": "run-x"}})
    got, bank = pipeline.study_hnlmrec(data, llm, "text", conf, 0)
    assert got["shipped"] and got["loss_history"] == [1.0, 0.5] and bank.meta["adapter"] == "abc"
    np.testing.assert_allclose(bank.emb, emb)
    assert bank.items.tolist() == [5, 6, 7]
    assert "hnlmrec-bank text: shipped" in capsys.readouterr().out
    other = pipeline.hnlmrec_config(llm, "text", {**conf, "max_steps": 3})
    assert "settings changed" in banks.lookup_shipped(data, other, 0).reason


def test_negatives_shipped_under_a_superseded_filter_are_rejudged_without_drawing_again(data, tmp_path, monkeypatch):
    """Records shipped under an earlier, laxer draw filter (sns.SUPERSEDED_FILTERS) feed the current one: a kept
    negative the current rules accept stands, one they reject with no draws left becomes invalid with its
    reason; neither is drawn again (no model runs). A draw the old rule rejected and the current one accepts is
    an error: that record only a new draw can give."""
    monkeypatch.setenv("HNLM_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    llm, decoding = "smollm2-135m", sns.Decoding(samples=1, tries=2)
    pairs = select_pairs(data, Budget.parse("per-user:1"), 0)
    pairs = pairs[pairs["user"] < 2]
    builder = sns.sample_builders(data, "history", llm, 0, decoding)[0]
    old_tag = decoding.tag(0).replace(sns.COPY_FILTER, sns.SUPERSEDED_FILTERS[0])
    old = sns.PromptBuilder(data, "history", llm, decoding=old_tag)
    backend = make_backend(llm, progress=False, **decoding.backend_options())
    copy = sns.title_of(data, int(data.train_items(1)[0]))
    texts = {0: "A quiet drama about a lighthouse keeper", 1: copy}
    records = [{"user": u, "item": i, "ok": True, "text": texts[u], "reasoning": "r", "reason": None, "words": 5,
                "truncated": False, "tries": 2, "rejected": ["Drama"], "prompt_sha": sha}
               for (u, i), sha in sns.prompt_hashes(old, pairs).items()]
    outputs.publish_records("sns-negatives", "ml-100k", llm, sns.shipped_slot(old, "0"), records,
                            sns.shipped_key(data, backend, old, 0), BF16)
    gen = sns.obtain_negatives(data, llm, pairs, [builder], 0)
    assert (gen["rejudged"], gen["generated"], gen["redrawn"]) == (2, 0, 0)
    got = sns.read_negatives(sns.sns_dir("ml-100k", llm, "0") / "negatives.jsonl", builder.tag).set_index("user")
    assert got.loc[0, "ok"] and got.loc[0, "text"] == texts[0] and got.loc[0, "rejected"] == ["Drama"]
    assert not got.loc[1, "ok"] and got.loc[1, "reason"] == sns.COPY_REASON
    assert got.loc[1, "rejected"] == ["Drama", copy] and got.loc[1, "tries"] == 2
    with pytest.raises(ValueError, match="SUPERSEDED_FILTERS"):   # a "superseded" rule that rejected more
        sns.rejudge(builder, 0, {**records[0], "rejected": [texts[0]]})


def test_publish_from_artifacts_then_the_study_reads_what_was_published(data, tmp_path, monkeypatch, capsys):
    """Complete (made-up) profiles, SNS records and a finished fine-tuning run in artifacts/ are published
    with manifests; profiles_of, SNS and module 4 then read them from outputs/; publishing again is a no-op."""
    monkeypatch.setenv("HNLM_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    llm = "smollm2-135m"
    for kind, n in (("item", data.n_items), ("user", data.n_users)):
        pf.save_profiles(pd.DataFrame({"id": range(n), "ok": True, "summarization": [f"{kind} {i}" for i in range(n)],
                                       "reasoning": "r", "reason": None, "raw": None, "prompt_truncated": False}),
                         "ml-100k", llm, kind, "0")
    lines = publish.publish_profiles(data, llm, "full", 0, BF16, None)
    assert [line.split(":")[0] for line in lines] == ["profiles-item", "profiles-user"]
    items, users = pf.profiles_of(data, llm)
    assert items[5] == "item 5" and users[7] == "user 7" and "[outputs] profiles: shipped" in capsys.readouterr().out

    conf = {**settings("full", "03_sns"), "decoding": "sampled"}    # K samples: what is published in blocks
    builders = sns.sample_builders(data, conf["context"], llm, 0, sns.DECODINGS[conf["decoding"]])
    pairs = select_pairs(data, Budget.parse("per-user:1"), 0)
    with (sns.sns_dir("ml-100k", llm, "0") / "negatives.jsonl").open("w") as fh:
        for b in builders:
            for u, i in zip(pairs["user"], pairs["item"]):
                fh.write(json.dumps({"user": int(u), "item": int(i), "ok": True, "text": f"neg {u} {b.sample}",
                                     "reasoning": "r", "reason": None, "words": 2, "truncated": False, "tries": 1,
                                     "rejected": [], "context": b.tag, "sample": b.sample}) + "\n")
    first = block_users(data.n_users, 1)   # the first unit of --publish: its users' K samples
    lines = publish.publish_sns(data, llm, "full", conf, BF16, None, users=first)
    assert len(lines) == len(builders) >= 4 and all(f": {first} records" in line for line in lines)
    lines = publish.publish_sns(data, llm, "full", conf, BF16, None)   # the last block replaces it
    assert all(": 943 records" in line for line in lines)
    assert all(": already shipped" in line for line in publish.publish_sns(data, llm, "full", conf, BF16, None))
    _, _, gen = pipeline.generate_study_sns(data, llm, 4, context=conf["context"])
    assert gen["shipped"] == 4 * len(builders) and gen["generated"] == 0
    assert "0 records copied" in capsys.readouterr().out

    hconf = settings("smoke", "05_hnlmrec")["hnlmrec"]
    cfg = pipeline.hnlmrec_config(llm, "soft", hconf)
    folder = run_folder("ml-100k", cfg, "0")
    (folder / "summary.json").write_text(json.dumps({"steps": 2, "loss_first5_mean": 1.0, "timings": {}}))
    npz, meta = bank_files(folder, cfg)
    made_bank([0, 1], [3, 4], np.eye(2, 384)).save(npz)
    meta.write_text(json.dumps({"adapter": made_up_final(folder / "final"), "queries": "q"}))
    line = publish.publish_hnlmrec(data, llm, "soft", hconf, "smoke", 0, BF16, None)
    assert "2 vectors of 384" in line and ".adapter." in line
    summary, bank = pipeline.study_hnlmrec(data, llm, "soft", hconf, 0)
    assert summary["shipped"] and summary["loss_first5_mean"] == 1.0 and bank.items.tolist() == [3, 4]
    assert publish.publish_hnlmrec(data, llm, "soft", hconf, "smoke", 0, BF16, None).startswith(
        "hnlmrec-bank soft: already shipped")


def test_every_llm_output_of_notebook_11_ships_so_its_stage_makes_nothing(data, tmp_path, monkeypatch):
    """`hnlm study --llm-only --stages llm_size` on a fresh clone: each LLM notebook 11 (full) compares finds its
    SNS negatives and fine-tuned bank in the repository's outputs/, generates nothing, and publishing is a no-op."""
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    conf = settings("full", LLM_SIZE)
    assert "sns" in conf["methods"] and len(conf["llms"]) == 2
    pairs = select_pairs(data, Budget.parse("per-user:1"), 0)
    for llm in conf["llms"]:   # fail fast here rather than generate for minutes below
        builder = sns.PromptBuilder(data, conf["context"], llm)
        found = sns.lookup_shipped(data, llm, builder, pairs, conf["split_seed"])
        assert found.shipped is not None, found.reason
        for s in conf["signals"]:
            found = banks.lookup_shipped(data, pipeline.hnlmrec_config(llm, s, conf["hnlmrec"]), conf["split_seed"])
            assert found.shipped is not None, found.reason
    made = prepare("full", "ml-100k", "qwen2.5-0.5b", ["llm_size"])["llm_size"]
    for llm in conf["llms"]:
        assert made[llm]["sns"] == 0 and all(made[llm][s].startswith(str(outputs_root()))
                                             for s in conf["signals"])
    lines = publish.publish_study("full", "ml-100k", "qwen2.5-0.5b", ["llm_size"])
    assert len(lines) == 2 * (1 + len(conf["signals"])) and all(": already shipped" in line for line in lines)


def made_up_final(folder, seed=0) -> str:
    """A fine-tuning run's final/ folder as QueryEncoder.save lays it out, with made-up float32 tensors; returns
    its adapter fingerprint."""
    import torch
    from safetensors.torch import save_file

    from hnlm.semantic.hnlmrec.infer import adapter_fingerprint
    from hnlm.semantic.hnlmrec.model import CONFIG_FILE, TRAINABLE_FILE, EncoderConfig
    g = torch.Generator().manual_seed(seed)
    (folder / "adapter").mkdir(parents=True)
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": torch.randn(4, 16, generator=g),
               "base_model.model.layers.0.q_proj.lora_B.weight": torch.randn(16, 4, generator=g) / 300},
              str(folder / "adapter" / "adapter_model.safetensors"))
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
    torch.save({"head.weight": torch.randn(8, 16, generator=g), "head.bias": torch.randn(8, generator=g),
                "pool_mean": torch.randn(16, generator=g) * 50, "centred": torch.tensor(True)}, folder / TRAINABLE_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(EncoderConfig(out_dim=8, lora_r=4).to_json()))
    return adapter_fingerprint(folder)


def test_adapters_ship_in_float16_and_load_from_the_run_then_the_shipped_file(data, tmp_path, monkeypatch):
    """`hnlm outputs add-adapters` ships a bank's adapter beside it (float16 matrices, the bank's vectors and key
    untouched); a run's adapter comes from its final/ when present, else from that file (upcast to float32),
    else the error names the fine-tune that makes it."""
    import torch
    from safetensors.torch import load_file

    from hnlm.errors import MissingInputError
    from hnlm.semantic.hnlmrec import adapters
    from hnlm.semantic.hnlmrec.model import TRAINABLE_FILE
    monkeypatch.setenv("HNLM_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    llm = "smollm2-135m"
    cfg = pipeline.hnlmrec_config(llm, "text", settings("smoke", "05_hnlmrec")["hnlmrec"])
    run = run_folder("ml-100k", cfg, "0")
    fingerprint = made_up_final(run / "final")
    mpath = outputs.publish_vectors("hnlmrec-bank", "ml-100k", llm, banks.shipped_slot(cfg, "0"),
                                    made_bank([0], [5], np.eye(1, 384)), banks.shipped_key(data, cfg, 0), BF16,
                                    {"bank_meta": {"adapter": fingerprint, "run": run.name}})
    before = json.loads(mpath.read_text())
    assert main(["outputs", "add-adapters"]) == 0
    after = json.loads(mpath.read_text())
    entry = after.pop("adapter")
    assert after == before and entry["run"] == run.name and entry["source_fingerprint"] == fingerprint
    shipped_file = mpath.parent / entry["file"]
    assert entry["sha256"] == outputs.sha256_file(shipped_file) and entry["stored_dtype"] == "float16"
    stored = load_file(str(shipped_file))
    source = {**{f"lora/{k}": v for k, v in load_file(str(run / "final/adapter/adapter_model.safetensors")).items()},
              **{f"heads/{k}": v for k, v in torch.load(run / "final" / TRAINABLE_FILE).items()}}
    assert stored.keys() == source.keys()
    for name, t in source.items():
        half = t.is_floating_point() and t.ndim == 2
        assert stored[name].dtype == (torch.float16 if half else t.dtype), name
        assert torch.equal(stored[name], t.half() if half else t), name
    assert main(["outputs", "add-adapters"]) == 0 and json.loads(mpath.read_text())["adapter"] == entry
    listed = list_outputs().iloc[0]
    assert listed["check"] == "ok" and listed["adapter_kib"] == round(entry["bytes"] / 1024, 1)

    assert adapters.find_adapter("ml-100k", cfg, "0").folder == run / "final"
    (run / "final").rename(run / "moved")
    found = adapters.find_adapter("ml-100k", cfg, "0")
    assert found.source == "shipped" and found.folder == run / adapters.SHIPPED_FINAL
    lora = load_file(str(found.folder / adapters.LORA_FILE))
    for name, t in load_file(str(run / "moved/adapter/adapter_model.safetensors")).items():
        assert lora[name].dtype == torch.float32
        torch.testing.assert_close(lora[name], t, rtol=2 ** -11, atol=2 ** -24)   # float16 rounding, no more
    heads = torch.load(found.folder / TRAINABLE_FILE)
    assert torch.equal(heads["pool_mean"], torch.load(run / "moved" / TRAINABLE_FILE)["pool_mean"])
    assert (found.folder / "hnlmrec_config.json").read_text() == (run / "moved/hnlmrec_config.json").read_text()

    monkeypatch.setenv("HNLM_OUTPUTS", str(tmp_path / "none"))
    assert adapters.find_adapter("ml-100k", cfg, "0") is None
    with pytest.raises(MissingInputError, match=r"adapter .*final is absent and none is shipped.*hnlm finetune "
                                                r"--dataset ml-100k --llm smollm2-135m --cf-signal text"):
        adapters.run_adapter("ml-100k", cfg, "0")
    monkeypatch.setenv("HNLM_OUTPUTS", str(tmp_path / "outputs"))
    made_up_final(run / "final", seed=1)
    with pytest.raises(MissingInputError, match="is not the adapter that made"):
        adapters.attach_adapter(mpath, run / "final")


def test_study_transfer_uses_a_shipped_bank_without_the_source_run(data, tmp_path, monkeypatch, capsys):
    """No fine-tuned adapter exists here: the shipped transfer bank of these settings is all notebook 10 needs."""
    monkeypatch.setenv("HNLM_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    llm, target = "smollm2-135m", first_users(data, 50)
    conf = settings("smoke", "10_generalisation")
    cfg = replace(pipeline.hnlmrec_config(llm, "text", conf["hnlmrec"]), infer_users=conf["target_users"])
    teacher = TeacherConfig(**conf["target_teacher"])
    summary = {"source_run": "run-x", "queries": 2, "users_embedded": 2, "users": 50, "teacher": {"epochs": 1},
               "timings": {}}
    outputs.publish_vectors("transfer-bank", target.name, llm, transfer.transfer_slot("ml-100k", cfg, "0"),
                            made_bank([0, 1], [2, 3], np.eye(2, 384)),
                            transfer.transfer_key(data, target, cfg, teacher, 0), BF16, {"summary": summary})
    got, bank = pipeline.study_transfer(data, target, llm, "text", conf, 0)
    assert got["shipped"] and not got["finetuned_here"] and got["bank_rows"] == 2 and bank.users.tolist() == [0, 1]
    assert "transfer-bank text ml-100k->ml-100k-first50: shipped" in capsys.readouterr().out
    other_split = type(target)(target.name, target.train[::-1].tocsr(), target.valid, target.test, target.items,
                               target.users, target.reviews, target.stats)
    with pytest.raises(OtherSplitError, match="another training split"):
        transfer.lookup_transfer(data, other_split, cfg, teacher, 0)


@pytest.mark.slow
@pytest.mark.xdist_group("finetuned_run")
def test_verify_reembeds_vectors_with_the_runs_adapter(data, finetuned_run, tmp_path, monkeypatch):
    """The shared one-step SmolLM2 fine-tune's bank, shipped (float16), is re-embedded by `verify`: cosine ~1, with
    the run's adapter and, once the run's final/ is gone, with the shipped float16 one (on a copy of the run)."""
    artefacts = shutil.copytree(finetuned_run.artefacts, tmp_path / "artifacts")
    monkeypatch.setenv("HNLM_ARTIFACTS", str(artefacts))
    monkeypatch.setenv("HNLM_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("HNLM_LLM_DTYPE", "float32")  # as the run was made
    cfg = finetuned_run.config
    bank = artefacts / Path(finetuned_run.summary["bank"]).relative_to(finetuned_run.artefacts)
    z = np.load(bank)
    bank_meta = json.loads(bank.with_suffix(".json").read_text())
    outputs.publish_vectors("hnlmrec-bank", "ml-100k", "smollm2-135m", banks.shipped_slot(cfg, "0"),
                            made_bank(z["users"], z["items"], z["emb"]), banks.shipped_key(data, cfg, 0),
                            outputs.made_with("smollm2-135m"),
                            {"bank_meta": bank_meta})
    (result,) = verify(2)
    assert result["adapter"] == "run" and result["regenerated"] == 2 and result["cosine_min"] > 0.999, result["summary"]
    publish.add_adapters()
    shutil.rmtree(run_folder("ml-100k", cfg, "0") / "final")
    (result,) = verify(2)
    assert result["adapter"] == "shipped" and result["cosine_min"] > 0.999, result["summary"]


def test_publish_ships_the_full_sns_stage_in_growing_blocks_of_users():
    """`hnlm study --llm-only --publish` (full profile) ships the SNS negatives in SNS_BLOCKS units, each of all K
    samples of the first users, the last of all users; a profile that limits its users ships in one unit."""
    blocks = [part for stage, part in units("full", ["sns"])]
    assert blocks == [1, 2, 3, 4] and [block_users(943, b) for b in blocks] == [236, 472, 708, None]
    assert units("smoke", ["sns"]) == [("sns", None)]
    # --sns-decoding makes (and ships) another decoding's negatives than the one the profile's notebooks read
    assert sns_settings("full")["decoding"] == SNS_DECODING
    assert sns_settings("full", "sampled") == {**sns_settings("full"), "decoding": "sampled"}
