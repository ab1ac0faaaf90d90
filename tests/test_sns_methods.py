"""`hnlm train --sampler sns|sns-grounded|sns-random|sns-shuffled` through the CLI, on artefacts built by
module 2 from a negatives file (written here, so no LLM runs: generation is tested in test_sns_pipeline)."""

import dataclasses
import json

import pandas as pd
import pytest

from hnlm.cli import main
from hnlm.data import load_dataset
from hnlm.errors import MissingInputError
from hnlm.llm.encoders import get_text_encoder
from hnlm.semantic import sns
from hnlm.semantic.common import SNS_DECODING, OtherSplitError, split_id_of, train_fingerprint
from hnlm.semantic.sns import Budget

TEXTS = ["Batman Forever: a loud superhero sequel", "Sleepless in Seattle, a romantic comedy",
         "Jurassic Park 2 with dinosaurs on an island", "A slow French art-house drama"]


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    mp = pytest.MonkeyPatch()
    mp.setenv("HNLM_ARTIFACTS", str(root))
    data = load_dataset("ml-100k", seed=0)
    pairs = sns.select_pairs(data, Budget(1), seed=0)
    out = sns.sns_dir(data.name, "test-llm", "0")
    # as `hnlm sns` tags records of its default decoding, K samples (no profile is read)
    builders = sns.sample_builders(data, "profile", "test-llm", 0, sns.SAMPLED)
    with (out / "negatives.jsonl").open("w") as fh:
        for b in builders:
            for n, (u, i) in enumerate(zip(pairs["user"], pairs["item"])):
                ok = n % 10 != 9  # every tenth answer invalid, as an LLM might produce
                fh.write(json.dumps({"user": int(u), "item": int(i), "ok": ok,
                                     "text": TEXTS[(n + b.sample) % 4] if ok else None,
                                     "reasoning": "r" if ok else None, "reason": None if ok else "invalid json",
                                     "words": 6, "truncated": False, "context": b.tag, "sample": b.sample}) + "\n")
    built = sns.build_artifacts(data, "test-llm", Budget(1), get_text_encoder("minilm"), pool=10,
                                extra_meta={"context_tag": builders[0].tag}, contexts=[b.tag for b in builders])
    yield root, built
    mp.undo()


def test_artefacts_are_refused_for_another_split(tmp_path, monkeypatch):
    """Named by split id (the random split's folder keeps its name), so the temporal split with the same seed
    finds none; under one name, the fingerprint in meta_<budget>.json must be the data's."""
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path))
    data = load_dataset("ml-100k", seed=0)
    out = sns.sns_dir(data.name, "test-llm", split_id_of(data))
    assert out == tmp_path / "ml-100k/sns/test-llm/split-0"
    pd.DataFrame({"user": [0], "item": [data.train_items(0)[0]], "pool": [[1, 2]]}).to_parquet(
        out / "grounded_per-user-1.parquet")
    (out / "meta_per-user-1.json").write_text(json.dumps({"train_fingerprint": train_fingerprint(data)}))
    assert len(sns.load_grounded(data, "test-llm", Budget(1))) == 1
    temporal = load_dataset("ml-100k", seed=0, split="temporal")
    with pytest.raises(MissingInputError, match=r"split-0-temporal/grounded_per-user-1.parquet is missing: run `hnlm "
                                                r"sns --dataset ml-100k --llm test-llm --budget per-user:1 "
                                                r"--split-seed 0 --split temporal` first"):
        sns.load_grounded(temporal, "test-llm", Budget(1))
    other = dataclasses.replace(data, train=data.train[::-1].tocsr())  # same split id, other training pairs
    with pytest.raises(OtherSplitError, match=f"{out}/grounded_per-user-1.parquet was made from another training "
                                              r"split .*`hnlm sns --dataset ml-100k --llm test-llm --budget "
                                              r"per-user:1 --split-seed 0`$"):
        sns.load_grounded(other, "test-llm", Budget(1))


def test_quality_counts_invalid_answers(artefacts):
    _, built = artefacts
    q = built["quality"]
    assert q["valid_json_rate"] == pytest.approx(0.9, abs=0.01)
    assert q["invalid_reasons"] == {"invalid json": q["invalid"]}
    assert 0 <= q["false_hard_negative_share"] <= 1 and q["distinct_texts_share"] < 0.01


@pytest.mark.parametrize("method", ["sns", "sns-grounded", "sns-random", "sns-shuffled"])
def test_train_cli_runs_each_semantic_method(artefacts, tmp_path, monkeypatch, method):
    root, _ = artefacts
    monkeypatch.setenv("HNLM_ARTIFACTS", str(root))
    out = tmp_path / "r.json"
    pool = ["--set", "pool=5"] if method == "sns-grounded" else []
    rc = main(["train", "--dataset", "ml-100k", "--model", "mf", "--sampler", method, "--epochs", "5",
               "--dim", "8", "--batch-size", "8192", "--llm", "test-llm", "--sns-decoding", "sampled", *pool,
               "--json", str(out), "--no-progress"])
    assert rc == 0
    counts = json.loads(out.read_text())["counts"]
    if method == "sns-grounded":
        c = counts["grounded_sampler"]
        assert c["grounded"] > 0 and c["grounded"] + c["base_by_share"] + c["base_no_pool"] == c["pairs"]
        assert c["samples"] == sns.SAMPLED.samples and c["samples_used"] == list(range(c["samples"]))  # rotation
    else:
        c = counts["alignment"]
        assert c["with_negative"] > 0 and c["missing"] > 0  # users whose only answer was invalid
        assert c["bank_budget"] == "per-user:1"
        assert c["bank_samples"] == sns.SAMPLED.samples and c["samples_used"] == list(range(c["bank_samples"]))
        if method != "sns":
            assert c["bank_ablation"] == method.split("-")[1]


@pytest.mark.slow   # embeds 943 negatives and the catalogue twice with MiniLM: about 2 minutes on 2 busy cores
def test_train_on_a_fresh_clone_builds_the_bank_from_the_shipped_negatives(tmp_path, monkeypatch, capsys):
    """Nothing in artifacts/: `hnlm train --sampler sns` finds qwen2.5-0.5b's SNS negatives shipped in outputs/
    (profile context, with the decoding those shipped have: SNS_DECODING), builds module 2's bank from them and
    trains; no LLM runs."""
    monkeypatch.setenv("HNLM_ARTIFACTS", str(tmp_path / "artifacts"))
    out = tmp_path / "r.json"
    assert main(["train", "--dataset", "ml-100k", "--model", "mf", "--sampler", "sns", "--epochs", "1", "--dim", "8",
                 "--batch-size", "8192", "--json", str(out), "--no-progress"]) == 0
    assert "[outputs] sns-negatives: building the bank from shipped" in capsys.readouterr().out
    counts = json.loads(out.read_text())["counts"]["alignment"]
    assert counts["with_negative"] > 0 and counts["bank_budget"] == "per-user:1"
    data = load_dataset("ml-100k", seed=0)
    meta = sns.load_meta(data, "qwen2.5-0.5b", Budget(1))
    assert meta["context_tag"].startswith("profile:qwen2.5-0.5b|")
    shipped = sns.DECODINGS[SNS_DECODING]
    assert meta["quality"]["requested"] == data.n_users * shipped.samples == data.n_users * meta["samples"]
    assert counts["bank_samples"] == shipped.samples
