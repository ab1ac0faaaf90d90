"""Listing and checking the shipped LLM outputs (hnlm.semantic.outputs): `hnlm outputs list` and `verify`.

`list_outputs` checks every shipped file's integrity (and its adapter's). `verify` regenerates a random sample of
shipped records on this machine (a fresh, temporary LLM cache) and prints how well they agree; the judge's scores
are scored again; vector banks are re-embedded with their run's adapter. Prompts, schemas and budgets come from
the modules that made the outputs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from hnlm.data import first_users, load_dataset
from hnlm.errors import MissingInputError
from hnlm.llm.backends import make_backend
from hnlm.semantic import judge, outputs, sns
from hnlm.semantic import profiles as pf
from hnlm.semantic.common import Budget, split_id_of
from hnlm.semantic.hnlmrec.adapters import Adapter, check_adapter_file, run_adapter
from hnlm.semantic.hnlmrec.banks import run_config
from hnlm.semantic.hnlmrec.finetune import load_base
from hnlm.semantic.hnlmrec.infer import emit
from hnlm.semantic.hnlmrec.model import QueryEncoder
from hnlm.semantic.hnlmrec.queries import Teacher, inference_queries
from hnlm.semantic.hnlmrec.run import RunConfig, TeacherConfig, get_teacher, query_builder, run_folder
from hnlm.semantic.hnlmrec.transfer import transfer_dir


def list_outputs(root: Path | None = None, dataset: str | None = None, llm: str | None = None) -> pd.DataFrame:
    """One row per shipped output: kind, dataset, llm, slot, records, size (and its adapter's), made with, and
    its check (the adapter's too)."""
    rows = []
    for entry in outputs.shipped_entries(root, dataset, llm):
        m = entry.manifest
        adapter = m.get("adapter")
        try:
            outputs.check_file(entry.manifest_path, m)
            (entry.rows() if m["kind"] in outputs.GENERATION_KINDS else entry.bank())
            if adapter:
                check_adapter_file(entry.manifest_path, m)
            status = "ok"
        except outputs.ShippedOutputError as err:
            status = f"DAMAGED: {err}"
        rows.append({"kind": m["kind"], "dataset": m["dataset"], "llm": m["llm"], "slot": m["slot"],
                     "records": m["records"], "kib": round(m["bytes"] / 1024, 1),
                     "adapter_kib": round(adapter["bytes"] / 1024, 1) if adapter else 0.0,
                     "made_with": outputs.describe(m["made_with"]), "check": status})
    return pd.DataFrame(rows, columns=["kind", "dataset", "llm", "slot", "records", "kib", "adapter_kib", "made_with",
                                       "check"])


# ------------------------------------------------------------------------------------------ verification

def verify(sample: int, root: Path | None = None, dataset: str | None = None, llm: str | None = None,
           seed: int = 0) -> list[dict]:
    """Regenerate `sample` random records of every shipped output on this machine; one result per output."""
    results = []
    entries = outputs.shipped_entries(root, dataset, llm)
    if not entries:
        print(f"[verify] nothing shipped under {root or outputs.outputs_root()}: fill it with "
              f"`hnlm study --llm-only --publish --profile full` on a GPU")
    for entry in entries:
        outputs.check_file(entry.manifest_path, entry.manifest)
        kind = entry.manifest["kind"]
        check = (verify_scores if kind == judge.SHIPPED_KIND else verify_generations
                 if kind in outputs.GENERATION_KINDS else verify_vectors)
        result = {"kind": kind, "slot": entry.manifest["slot"], **check(entry, sample, seed, root)}
        print(f"[verify] {kind} {entry.manifest['slot']}: {result['summary']}", flush=True)
        results.append(result)
    return results


def _sample(n: int, sample: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))


def _data_of(entry: outputs.Shipped):
    """The data an output was made from (a transfer target is the first N users of its dataset)."""
    m, seed = entry.manifest, entry.manifest["key"]["split_seed"]
    if "target_dataset" in m:
        return first_users(load_dataset(m["target_dataset"], seed=seed), m["target_first_users"]), seed
    return load_dataset(m["dataset"], seed=seed), seed


def generation_prompts(entry: outputs.Shipped, rows: list[dict], root):
    """(messages per row, schema, max_new_tokens as generation passes it, field of the main text)."""
    m = entry.manifest
    data, seed = _data_of(entry)
    if m["kind"] == sns.SHIPPED_KIND:
        builder = sns.shipped_builder(data, m["key"])
        return ([builder.messages(r["user"], r["item"]) for r in rows], builder.json_schema(),
                builder.max_new_tokens, "text")
    kind = m["kind"].split("-")[1]
    item_profiles = None
    if kind == "user":
        items = outputs.find("profiles-item", m["dataset"], m["llm"], m["slot"], root)
        if items is None:
            raise MissingInputError(f"shipped user profiles of {m['dataset']} need the shipped item profiles "
                                    f"(their prompts quote them); none are shipped")
        item_profiles = pf.summaries(items.rows())
    prompts = pf.ProfilePrompts(data, seed, item_profiles)
    return [prompts.messages(kind, r["id"]) for r in rows], pf.profile_schema(), None, "summarization"


def verify_generations(entry: outputs.Shipped, sample: int, seed: int, root) -> dict:
    m = entry.manifest
    decoding = sns.parse_tag(m["key"]["context"])[2] if m["kind"] == sns.SHIPPED_KIND else "greedy"
    if decoding != "greedy":
        return {"sampled": 0, "regenerated": 0,
                "summary": f"not regenerated: made with sampled decoding ({decoding}) (a kept text may be a "
                           f"redraw of the copy filter); verify compares greedy generations only"}
    rows = entry.rows()
    picked = [rows[i] for i in _sample(len(rows), sample, seed)]
    messages, schema, max_new_tokens, main = generation_prompts(entry, picked, root)
    same_prompt = [outputs.prompt_sha(msg) == r["prompt_sha"] for msg, r in zip(messages, picked)]
    todo = [(msg, r) for (msg, r), same in zip(zip(messages, picked), same_prompt) if same]
    with tempfile.TemporaryDirectory() as tmp:
        backend = make_backend(entry.manifest["llm"], cache_path=Path(tmp) / "verify.jsonl", progress=False)
        results = backend.generate_json([msg for msg, _ in todo], schema, max_new_tokens=max_new_tokens,
                                        desc="verify") if todo else []
    fields = ["ok", main, "reasoning"]
    fresh = [fresh_fields(res, main, old) for res, (_, old) in zip(results, todo)]
    agree = {f: sum(new[f] == old[f] for new, (_, old) in zip(fresh, todo)) for f in fields}
    prefix = [shared_prefix_share(new[main], old[main]) for new, (_, old) in zip(fresh, todo)]
    now = outputs.made_with(entry.manifest["llm"])
    n = len(todo)
    share = (agree[main] / n) if n else None
    summary = (f"{n} of {len(picked)} sampled records regenerated ({len(picked) - n} prompts changed since shipping); "
               f"exact {main} {agree[main]}/{n}, " + ", ".join(f"{f} {agree[f]}/{n}" for f in fields if f != main)
               + (f"; {main} identical for the first {np.mean(prefix):.0%} of its characters on average (median "
                  f"{np.median(prefix):.0%}) before the texts diverge" if n else "")
               + f"; shipped made with {outputs.describe(entry.made_with)}, regenerated with {outputs.describe(now)}")
    return {"sampled": len(picked), "regenerated": n, "prompts_changed": len(picked) - n, "exact_text_share": share,
            "field_matches": agree, "shared_prefix_shares": prefix, "made_with": entry.made_with, "now": now,
            "summary": summary}


def fresh_fields(result, main: str, old: dict) -> dict:
    """A regenerated answer as its shipped record stores it (SNS text or profile fields)."""
    if main == "text":
        return sns.parse_answer(result)
    return {"ok": result.ok, **{f: (result.value or {}).get(f) for f in (main, "reasoning")}}


def verify_scores(entry: outputs.Shipped, sample: int, seed: int, root) -> dict:
    """Score the lists of sampled users again: the largest score difference, and how many users keep their top
    JUDGE_MARKS items (the marks at dnsmn-judge's default)."""
    rows = entry.rows()
    picked = [rows[i] for i in _sample(len(rows), sample, seed)]
    data, _ = _data_of(entry)
    prompts = judge.shipped_prompts(data, entry.manifest["key"], picked)
    todo = [r for r in picked if outputs.prompt_sha(prompts.user_prompts(r["user"])) == r["prompt_sha"]]
    backend = judge.scoring_backend(entry.manifest["llm"], progress=False)
    fresh = backend.yes_no_scores([prompts.user_prompts(r["user"]) for r in todo], desc="verify") if todo else []
    diff = max((float(np.abs(np.asarray(new) - r["scores"]).max()) for new, r in zip(fresh, todo)), default=None)
    lists = [r["candidates"] for r in todo]
    tops = [judge.top_marks(pd.DataFrame({"candidates": lists, "scores": s}), judge.JUDGE_MARKS)
            for s in (list(fresh), [r["scores"] for r in todo])]
    same_top = sum(set(a) == set(b) for a, b in zip(*tops))
    now = outputs.made_with(entry.manifest["llm"], dtype=judge.SCORING_DTYPE)
    summary = (f"{len(todo)} of {len(picked)} sampled users scored again ({len(picked) - len(todo)} prompts changed "
               f"since shipping); largest score difference {diff}; same top {judge.JUDGE_MARKS} for {same_top}/"
               f"{len(todo)}; shipped made with {outputs.describe(entry.made_with)}, scored again with "
               f"{outputs.describe(now)}")
    return {"sampled": len(picked), "regenerated": len(todo), "prompts_changed": len(picked) - len(todo),
            "max_score_difference": diff, "same_top_marks": same_top, "made_with": entry.made_with, "now": now,
            "summary": summary}


def shared_prefix_share(new: str | None, old: str | None) -> float:
    """How much of the shipped text `old` a regeneration reproduces before it first differs (1.0: identical).
    Greedy decoding diverges once a near-tie between two tokens flips, which a different batch shape (padding,
    kernel blocking) can cause in bf16; a late divergence says the model and prompt are the same."""
    new, old = new or "", old or ""
    if new == old:
        return 1.0
    return len(os.path.commonprefix([new, old])) / max(len(old), len(new))


def verify_vectors(entry: outputs.Shipped, sample: int, seed: int, root) -> dict:
    """Re-embed sampled query pairs with the run's adapter (the run's in artifacts/, else the shipped float16
    one); a teacher absent here is trained again (CF only: minutes)."""
    m = entry.manifest
    cfg = run_config(m["key"]["settings"])
    data, _ = _data_of(entry)
    split_id = split_id_of(data)  # a transfer target's, as transfer_bank names its source run
    source = m.get("source_dataset", m["dataset"])
    try:
        adapter = run_adapter(source, cfg, split_id, root)
    except MissingInputError as err:
        return {"sampled": 0, "regenerated": 0, "summary": f"not re-embedded: {err}"}
    run = run_folder(source, cfg, split_id)
    if m["kind"] == "transfer-bank":
        teacher = get_teacher(data, TeacherConfig(**m["key"]["teacher"]), transfer_dir(m["dataset"], source, run,
                                                                                      split_id))
    else:
        teacher = get_teacher(data, cfg.teacher, run)
    return reembed(entry, data, cfg, adapter, teacher, sample, seed)


def reembed(entry: outputs.Shipped, data, cfg: RunConfig, adapter: Adapter, teacher: Teacher, sample: int,
            seed: int) -> dict:
    bank = entry.bank()
    rows = _sample(len(bank), sample, seed)
    lm, tok = load_base(cfg.finetune)
    qset = inference_queries(data, query_builder(data, teacher, cfg, tok), Budget.parse(cfg.infer_budget),
                             cfg.pair_seed, max_users=cfg.infer_users).set_index(["user", "item"])
    users, items = bank.users[rows], bank.items[rows]
    keys = list(zip(users.tolist(), items.tolist()))
    texts = [qset.loc[k, "text"] for k in keys]
    encoder = QueryEncoder.from_saved(lm, adapter.folder)
    fresh = emit(encoder, tok, texts, teacher.user_emb[users], teacher.item_emb[items], batch_size=cfg.infer_batch,
                 max_length=cfg.finetune.max_length)
    old = bank.emb[rows]
    cos = np.einsum("nd,nd->n", fresh, old) / np.maximum(np.linalg.norm(fresh, axis=1) * np.linalg.norm(old, axis=1),
                                                         1e-12)
    now = outputs.made_with(entry.manifest["llm"])
    summary = (f"{len(rows)} vectors re-embedded with adapter {adapter.folder} ({adapter.source}): cosine to shipped "
               f"min {cos.min():.6f}, mean {cos.mean():.6f} (shipped in float16; made with "
               f"{outputs.describe(entry.made_with)}, re-embedded with {outputs.describe(now)})")
    return {"sampled": len(rows), "regenerated": len(rows), "adapter": adapter.source, "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean()), "made_with": entry.made_with, "now": now, "summary": summary}
