"""The methods that try to beat DNS(M,N) with LLM hard negatives (hnlm/methods/dnsmn_aligned.py, dnsmn_guard.py,
teacher_negatives.py): each and its ablations trains one epoch on the first 100 users of ml-100k; the vector is
mixed into DNS(M,N)'s own pick; the semantic guard changes the top-N exactly as documented; the teacher's mined
table is made from training data only and never gives a training positive."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hnlm.cf.extension import Batch, BatchEmb
from hnlm.cf.models import build_model
from hnlm.cf.samplers import DNSMN, PositiveIndex, SamplerContext
from hnlm.cf.trainer import TrainConfig, train
from hnlm.data import first_users, load_dataset
from hnlm.methods import get_method, method_names, variant
from hnlm.methods.commands import result_path
from hnlm.methods.dnsmn_guard import GuardedDNSMN, GuardSettings
from hnlm.paths import artifacts_root, cache_root
from hnlm.semantic import profiles as pf
from hnlm.semantic import sns
from hnlm.semantic.bank import NegativeBank
from hnlm.semantic.common import split_id_of
from hnlm.semantic.hnlmrec import banks, transfer
from hnlm.semantic.hnlmrec.run import RunConfig, run_dir
from hnlm.semantic.hnlmrec.transfer import transfer_dir
from hnlm.semantic.resources import SNS_BANK, Resources, hnlmrec_bank, teacher, teacher_table
from hnlm.semantic.sns import sns_dir

NEW = ["sns-dnsmn", "hnlmrec-dnsmn", "dnsmn-guard", "teacher-negatives", "teacher-aligned"]
ALL_NEW = [f"{m}{s}" for m in NEW for s in ("", "-random", "-shuffled")]
TEACHER = {"teacher": "mf"}   # the test teacher (a 1-epoch MF, resource "teacher:mf")


@pytest.fixture(scope="module")
def data():
    return first_users(load_dataset("ml-100k", seed=0), 100)


def random_bank(data, dim=384, every=5, seed=0):
    """One random vector per user at the user's first training pair; every `every`-th user has none."""
    users = [u for u in range(data.n_users) if u % every]
    items = [int(data.train_items(u)[0]) for u in users]
    emb = np.random.default_rng(seed).standard_normal((len(users), dim)).astype(np.float32)
    return NegativeBank(emb, users, items, "test-bank")


@pytest.fixture(scope="module")
def resources(data, tmp_path_factory):
    """Random banks, and a real teacher table (cached teachers go to a temporary artefact folder; text
    embeddings keep their usual cache)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HNLM_ENCODER_CACHE", str(cache_root("encoders")))
    mp.setenv("HNLM_ARTIFACTS", str(tmp_path_factory.mktemp("artifacts")))
    table = teacher_table(data, config=TrainConfig(model="mf", epochs=1, dim=8, batch_size=16384))
    yield Resources({SNS_BANK: random_bank(data), hnlmrec_bank("text"): random_bank(data, seed=1),
                     teacher("mf"): table})
    mp.undo()


def spec(name, **overrides):
    return variant(name, **({**TEACHER, **overrides} if name.startswith("teacher") else overrides))


def ctx_for(data, model, seed=0):
    ctx = SamplerContext(PositiveIndex(data.train, "cpu"), torch.from_numpy(data.train_popularity()).float(),
                         torch.Generator().manual_seed(seed))
    ctx.layers = model.layer_embeddings()
    ctx.user_emb, ctx.item_emb = model.combine(ctx.layers)
    return ctx


def all_pairs(data):
    coo = data.train.tocoo()
    return torch.from_numpy(coo.row.astype(np.int64)), torch.from_numpy(coo.col.astype(np.int64))


def test_declared_with_their_ablations():
    assert set(ALL_NEW) <= set(method_names())
    for name in ALL_NEW:
        m = get_method(name)
        assert m.ablation_of == (name.rsplit("-", 1)[0] if name.endswith(("-random", "-shuffled")) else None)
        assert m.family == ("classic" if name.startswith("teacher") else "llm")
    assert spec("hnlmrec-dnsmn", signal="soft").needs() == (hnlmrec_bank("soft"),)
    assert spec("teacher-aligned").needs() == (teacher("mf"),)


@pytest.mark.parametrize("name", ALL_NEW)
def test_trains_one_epoch_and_never_samples_a_training_positive(data, resources, name):
    sampler, extension = spec(name).build(data, resources, seed=0)
    cfg = TrainConfig(model="mf", dim=8, epochs=1, batch_size=16384, patience=1, device="cpu")
    result = train(data, cfg, extension=extension, sampler=sampler, progress=False)
    assert result["epochs_run"] == 1 and np.isfinite(result["history"][0]["loss"])
    counts, pairs = result["counts"], data.train.nnz
    if "alignment" in counts:
        c = counts["alignment"]
        assert c["pairs"] == pairs and 0 < c["with_negative"] and c["with_negative"] + c["missing"] == pairs
        ablation = get_method(name).ablation_of and name.rsplit("-", 1)[1]
        assert c["source"].endswith({"random": "|random-same-norm", "shuffled": "|shuffled-users"}[ablation]
                                    if ablation else c["source"].split("|")[0])
    if name.startswith("dnsmn-guard"):
        c = counts["semantic_guard"]
        assert c["pairs"] == pairs and c["picks_changed"] <= c["topn_changed"] <= pairs
    if name.startswith("teacher-negatives"):
        share = counts["share_sampler"]
        assert share["pairs"] == pairs and abs(share["table_share"] / pairs - 0.5) < 0.05
        assert counts["table_sampler"]["pairs"] == share["table_share"]
    users, pos = all_pairs(data)
    items = sampler.sample(users, pos, result["model"], ctx_for(data, result["model"])).items
    assert not data.train.toarray().astype(bool)[users.numpy(), items.numpy()].any()


def test_vector_is_mixed_into_dnsmn_pick(data, resources):
    """sns-dnsmn's ID negative is DNS(M,N)'s pick under the same generator, and the extension turns its
    embedding into alpha * h + (1 - alpha) * e_pick (pairs whose user has no vector keep e_pick)."""
    settings = spec("sns-dnsmn", alpha=0.3, candidates=16, top=4).settings()
    sampler, ext = spec("sns-dnsmn", alpha=0.3, candidates=16, top=4).build(data, resources, seed=0)
    torch.manual_seed(0)
    model = build_model("mf", data, 8, 1)
    ext.setup(model, data)
    users, pos = all_pairs(data)
    ctx = ctx_for(data, model, seed=5)
    items = sampler.sample(users, pos, model, ctx).items
    reference = DNSMN(candidates=16, top=4).sample(users, pos, model, ctx_for(data, model, seed=5)).items
    assert torch.equal(items, reference) and (sampler.candidates, sampler.top) == (16, 4)
    e_pick = ctx.item_emb[items]
    emb = BatchEmb(ctx.user_emb[users], ctx.item_emb[pos], e_pick)
    out, loss = ext.on_batch(Batch(users, pos, items), emb)
    bank = resources[SNS_BANK]
    row_of = dict(zip(bank.users.tolist(), range(len(bank))))   # one row per user: the "user" rule is exact
    has = torch.tensor([int(u) in row_of for u in users])
    rows = torch.tensor([row_of[int(u)] for u in users[has]])
    with torch.no_grad():
        h = F.normalize(ext.adapter(ext.table[rows]), dim=-1) * e_pick[has].norm(dim=-1, keepdim=True)
    a = settings.alpha
    assert torch.allclose(out.neg[has], a * h + (1 - a) * e_pick[has], atol=1e-6)
    assert torch.equal(out.neg[~has], e_pick[~has]) and (~has).any() and loss is not None


def guard(user_vectors, item_vectors, **kw):
    return GuardedDNSMN(np.array(user_vectors, np.float32), np.array(item_vectors, np.float32),
                        GuardSettings(candidates=4, top=2, **kw))


def picks(sampler, pick, scores=(4.0, 3.0, 2.0, 1.0), n_users=1):
    """Candidates 0..3 of each user with CF scores `scores`; the `pick`-th of the guarded top-2."""
    users = torch.arange(n_users)
    cands = torch.arange(4).repeat(n_users, 1)
    return sampler.select(users, cands, torch.tensor([scores] * n_users), torch.full((n_users, 1), pick)).tolist()


def test_soft_guard_subtracts_weight_times_score_sd_times_similarity_z():
    # cosines with the user [1, -1, 1, -1] -> z = [1, -1, 1, -1]; CF scores [4, 3, 2, 1] -> sd = sqrt(1.25)
    # guarded = [4 - 1.118 w, 3 + 1.118 w, 2 - 1.118 w, 1 + 1.118 w]; top-2 sorted by guarded score
    items = [[1, 0], [-1, 0], [1, 0], [-1, 0]]
    assert [picks(guard([[2, 0]], items, weight=1.0), p) for p in (0, 1)] == [[1], [0]]   # 4.12, 2.88 > 2.12
    assert [picks(guard([[2, 0]], items, weight=2.0), p) for p in (0, 1)] == [[1], [3]]   # 5.24, 3.24 > 1.76
    s = guard([[2, 0]], items, weight=2.0)
    for p in (0, 1):
        picks(s, p)
    c = s.counts()["semantic_guard"]
    assert (c["pairs"], c["topn_changed"], c["picks_changed"]) == (2, 2, 1)   # item 3: not in the plain top-2


def test_hard_guard_vetoes_the_most_similar_share_and_spares_users_without_vector():
    # cosines with user 0: [1, 0, 0.6, -1]; user 1 has no vector (never guarded)
    items, users = [[1, 0], [0, 1], [0.6, 0.8], [-1, 0]], [[1, 0], [0, 0]]
    assert picks(guard(users, items, guard="hard", veto=0.25), 0, n_users=2) == [1, 0]   # item 0 vetoed
    assert picks(guard(users, items, guard="hard", veto=0.25), 1, n_users=2) == [2, 1]
    s = guard(users, items, guard="hard", veto=0.5)                                          # items 0, 2 vetoed
    assert picks(s, 1, n_users=2) == [3, 1]
    c = s.counts()["semantic_guard"]
    assert (c["topn_changed"], c["picks_changed"], c["pairs_without_user_vector"], c["vetoed_per_pair"]) == (1, 1, 1, 2)
    with pytest.raises(ValueError, match="top=2"):
        guard(users, items, guard="hard", veto=0.75)


def test_guard_without_weight_is_dnsmn_and_its_ablations_change_the_user_vectors(data, resources):
    torch.manual_seed(0)
    model = build_model("mf", data, 8, 1)
    users, pos = all_pairs(data)
    reference = DNSMN().sample(users, pos, model, ctx_for(data, model, seed=2)).items
    off, _ = spec("dnsmn-guard", weight=0.0).build(data, resources, seed=0)
    assert torch.equal(off.sample(users, pos, model, ctx_for(data, model, seed=2)).items, reference)
    soft, _ = spec("dnsmn-guard").build(data, resources, seed=0)
    soft.sample(users, pos, model, ctx_for(data, model, seed=2))
    c = soft.counts()["semantic_guard"]
    assert 0 < c["picks_changed"] < 0.5 * c["pairs"]      # a small down-weight: most picks stay DNS(M,N)'s
    shuffled, _ = spec("dnsmn-guard-shuffled").build(data, resources, seed=0)
    randomised, _ = spec("dnsmn-guard-random").build(data, resources, seed=0)
    own = soft.user_unit
    same_row = (shuffled.user_unit[:, None] == own[None]).all(-1)    # [user, other user]: identical vectors
    assert same_row.any(1).all() and not same_row.diagonal().all()
    assert (F.cosine_similarity(randomised.user_unit, own).abs() < 0.5).all()


def test_teacher_table_is_made_from_training_data_and_cached(data, resources):
    table = resources[teacher("mf")]
    train = data.train.toarray().astype(bool)
    assert train[table.users, table.items].all() and not train[table.users, table.neg].any()
    assert len(table.neg) + table.counts["no_candidate_passed_guard"] == data.train.nnz
    again = teacher_table(data, config=TrainConfig(model="mf", epochs=1, dim=8, batch_size=16384))
    assert np.array_equal(again.teacher.item_emb, table.teacher.item_emb) and np.array_equal(again.neg, table.neg)
    assert resources.digest(teacher("mf")) == Resources({teacher("lightgcn"): again}).digest(teacher("lightgcn"))


def llm_output_names(data, llm: str = "qwen2.5-0.5b") -> list:
    """Where `data`'s profiles, SNS artefacts, fine-tuning runs and transfers are stored, and its shipped slots."""
    split, run = split_id_of(data), RunConfig()
    source_run = run_dir("ml-1m", llm, "text", "per-user:1", split) / "run-x"
    return [pf.profiles_path(data.name, llm, "user", split), sns_dir(data.name, llm, split),
            run_dir(data.name, llm, "text", "per-user:1", split), transfer_dir(data.name, "ml-1m", source_run, split),
            pf.profiles_slot(split), banks.shipped_slot(run, split), transfer.transfer_slot("ml-1m", run, split)]


def test_a_temporal_split_names_its_artefacts_apart_from_the_random_one():
    random, temporal = load_dataset("ml-100k", seed=0), load_dataset("ml-100k", seed=0, split="temporal")
    cfg = TrainConfig(model="mf", seed=1)
    # the default random split keeps the names its stored teachers, runs and LLM outputs are under
    assert result_path(random, cfg, "rns").name == "mf_rns_split0_seed1.json"
    assert result_path(temporal, cfg, "rns").name == "mf_rns_split0-temporal_seed1.json"
    root = artifacts_root() / "ml-100k"
    assert llm_output_names(random) == [
        root / "profiles/qwen2.5-0.5b/users_split-0.jsonl", root / "sns/qwen2.5-0.5b/split-0",
        root / "hnlmrec/qwen2.5-0.5b-text-per-user-1/split-0",
        root / "hnlmrec-transfer/ml-1m-qwen2.5-0.5b-text-per-user-1-run-x/split-0",
        "split-0", "text_per-user-1_per-user-1_split-0", "from-ml-1m_text_per-user-1_per-user-1_split-0"]
    assert llm_output_names(temporal) == [
        root / "profiles/qwen2.5-0.5b/users_split-0-temporal.jsonl", root / "sns/qwen2.5-0.5b/split-0-temporal",
        root / "hnlmrec/qwen2.5-0.5b-text-per-user-1/split-0-temporal",
        root / "hnlmrec-transfer/ml-1m-qwen2.5-0.5b-text-per-user-1-run-x/split-0-temporal",
        "split-0-temporal", "text_per-user-1_per-user-1_split-0-temporal",
        "from-ml-1m_text_per-user-1_per-user-1_split-0-temporal"]
    builder = sns.PromptBuilder(random, "history", "qwen2.5-0.5b")  # its slots: the prompt context, then the split
    assert re.fullmatch(r"history_sns-[0-9a-f]{8}_greedy_split-0", sns.shipped_slot(builder, split_id_of(random)))
    assert sns.shipped_slot(builder, split_id_of(temporal)).endswith("_greedy_split-0-temporal")


def test_teacher_negatives_use_the_table_for_their_share(data, resources):
    table = resources[teacher("mf")]
    torch.manual_seed(0)
    model = build_model("mf", data, 8, 1)
    users, pos = torch.from_numpy(table.users), torch.from_numpy(table.items)
    for share, expected in ((1.0, True), (0.0, False)):
        sampler, _ = spec("teacher-negatives", share=share).build(data, resources, seed=0)
        items = sampler.sample(users, pos, model, ctx_for(data, model)).items.numpy()
        assert (items == table.neg).all() == expected
    shuffled, _ = spec("teacher-negatives-shuffled", share=1.0).build(data, resources, seed=0)
    items = shuffled.sample(users, pos, model, ctx_for(data, model)).items.numpy()
    assert (items != table.neg).mean() > 0.9


def test_inputs_are_typed_and_keep_the_names_stored_run_keys_record():
    from hnlm.semantic.resources import Need
    assert [str(n) for n in (SNS_BANK, hnlmrec_bank("soft"), teacher("mf"))] == ["sns_bank", "hnlmrec_bank:soft",
                                                                                  "teacher:mf"]
    with pytest.raises(ValueError, match="unknown input kind 'sns_bnk'"):
        Need("sns_bnk")
    with pytest.raises(ValueError, match="input hnlmrec_bank takes one of text, soft, none, not 'txt'"):
        hnlmrec_bank("txt")
    with pytest.raises(TypeError, match="inputs are keyed by Need"):
        Resources().provide("sns_bank", 1)
