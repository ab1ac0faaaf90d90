"""Shipped LLM outputs: the tracked outputs/ folder that lets a fresh clone run the study on a CPU.

Layout: outputs/<dataset>/<llm>/<kind>/<slot>.<sha12>.<ext> plus <slot>.manifest.json, one manifest per file.
Kinds: generations (JSON lines, one record per prompt: module-1 profiles, module-2 SNS negatives; one per user:
the judge's yes/no scores of its list) and vectors (.npz with users, items int32 and emb float16: module-4
emitted embeddings and their transfer to another dataset). A slot names what one file stands for (e.g.
"split-0" or "text_per-user-1_split-0"); publishing a slot again replaces its file.

A manifest records what identifies the output (`key`: model weights identity, schema, decoding, settings,
prompt-template hashes, training-split fingerprint; generations also store the sha256 of each record's
prompt), how it was made (`made_with`: dtype, device, torch / transformers versions, weights sha256), the
record count and the file's sha256. Lookup is by content: an output is used when its key equals the one the
current code and data produce (and, for generations, every requested record's prompt hash matches), whatever
dtype or device made it; the dtype is reported with every use. A changed template or setting changes the key
of exactly the outputs built from it. A damaged file (sha256, truncated JSON lines, wrong vector shape) or an
output of another training split is an error naming the file and the command that regenerates it; it is never
regenerated silently or used in part.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from hnlm.atomic import write_bytes
from hnlm.errors import UserFacingError
from hnlm.llm.catalog import redact
from hnlm.llm.models import PACKAGED, default_dtype, resolve_device, sha256_of, smollm_gguf
from hnlm.paths import outputs_root
from hnlm.semantic.bank import NegativeBank
from hnlm.semantic.common import check_split, safe_name

FORMAT = 1
REGENERATE_VAR = "HNLM_REGENERATE"   # set: loaders ignore shipped outputs and make them on this machine
GENERATION_KINDS = ("profiles-item", "profiles-user", "sns-negatives", "judge-scores")
VECTOR_KINDS = ("hnlmrec-bank", "transfer-bank")
KINDS = GENERATION_KINDS + VECTOR_KINDS
STAGE_OF = {"profiles-item": "profiles", "profiles-user": "profiles", "sns-negatives": "sns", "judge-scores": "judge",
            "hnlmrec-bank": "hnlmrec", "transfer-bank": "transfer"}


class ShippedOutputError(UserFacingError):
    """A shipped output is damaged (one made from another training split raises common.OtherSplitError)."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def prompt_sha(messages) -> str:
    """Identifies one prompt (the chat messages before the model's template renders them)."""
    return sha256_bytes(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode("utf-8"))[:16]


def key_sha(key: dict) -> str:
    return sha256_bytes(json.dumps(key, sort_keys=True, ensure_ascii=False).encode("utf-8"))


def template_hashes(paths) -> dict:
    """{file name: sha256} of prompt-template files (part of an output's key)."""
    return {Path(p).name: sha256_file(p) for p in paths}


def regenerate_command(manifest: dict) -> str:
    stage = STAGE_OF[manifest["kind"]]
    dataset = manifest.get("source_dataset", manifest["dataset"])
    return (f"hnlm study --llm-only --publish --profile {manifest.get('profile', 'full')} --dataset {dataset} "
            f"--llm {manifest['llm']} --stages {stage}")


def kind_dir(dataset: str, llm: str, kind: str, root: Path | None = None) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}: {', '.join(KINDS)}")
    return Path(root or outputs_root()) / dataset / safe_name(llm) / kind


def manifest_path(dataset: str, llm: str, kind: str, slot: str, root: Path | None = None) -> Path:
    return kind_dir(dataset, llm, kind, root) / f"{slot}.manifest.json"


# ------------------------------------------------------------------------------------------ provenance

def made_with(llm: str | None = None, device: str | None = None, dtype=None) -> dict:
    """How outputs are made on this machine: dtype and device the LLM layer picks, library versions."""
    import torch
    import transformers
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else cpu_name()
    info = {"dtype": str(dtype).replace("torch.", ""), "device": device.split(":")[0], "device_name": name,
            "torch": torch.__version__, "transformers": transformers.__version__}
    if llm is not None:
        info["weights_sha256"] = weights_sha256(llm)
    return info


def cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def weights_sha256(llm: str) -> str | None:
    """sha256 of the model weights behind a backend spec (None for a served model: not visible here)."""
    if llm in PACKAGED:
        return PACKAGED[llm].sha256 or sha256_of([smollm_gguf()])
    folder = Path(llm[3:] if llm.startswith("hf:") else llm)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return sha256_of(files) if files else None


def describe(info: dict) -> str:
    """'bfloat16 on cuda (NVIDIA H200), torch 2.x' for report lines."""
    return f"{info.get('dtype')} on {info.get('device')} ({info.get('device_name')}), torch {info.get('torch')}"


# ------------------------------------------------------------------------------------------ publishing

def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode()


def update_manifest(mpath: Path, **fields) -> None:
    """Add or replace top-level fields of a manifest, leaving its file, key and other fields as they are."""
    write_bytes(mpath, manifest_bytes({**read_manifest(mpath), **fields}))


def _publish(kind: str, dataset: str, llm: str, slot: str, data: bytes, ext: str, records: int, key: dict,
             info: dict, extra: dict | None, root: Path | None) -> Path:
    """Write the data file under a content-addressed name, then its manifest (the atomic switch), then drop
    the slot's previous file: a reader sees the old pair or the new pair, never a mix."""
    folder = kind_dir(dataset, llm, kind, root)
    folder.mkdir(parents=True, exist_ok=True)
    digest = sha256_bytes(data)
    name = f"{slot}.{digest[:12]}.{ext}"
    mpath = folder / f"{slot}.manifest.json"
    previous = json.loads(mpath.read_text()).get("file") if mpath.exists() else None
    write_bytes(folder / name, data)
    manifest = {"format": FORMAT, "kind": kind, "dataset": dataset, "llm": redact(llm), "slot": slot, "file": name,
                "sha256": digest, "bytes": len(data), "records": records, "key": key, "key_sha256": key_sha(key),
                "made_with": info, "published": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **(extra or {})}
    write_bytes(mpath, manifest_bytes(manifest))
    if previous and previous != name:
        (folder / previous).unlink(missing_ok=True)
    return mpath


def publish_records(kind: str, dataset: str, llm: str, slot: str, rows: list[dict], key: dict, info: dict,
                    extra: dict | None = None, root: Path | None = None) -> Path:
    """Ship generated records (each with its `prompt_sha`) as JSON lines; returns the manifest path."""
    if kind not in GENERATION_KINDS:
        raise ValueError(f"{kind} is not a generation kind ({', '.join(GENERATION_KINDS)})")
    missing = sum("prompt_sha" not in r for r in rows)
    if missing:
        raise ValueError(f"{missing} records lack their prompt_sha")
    blob = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")
    return _publish(kind, dataset, llm, slot, blob, "jsonl", len(rows), key, info, extra, root)


def publish_vectors(kind: str, dataset: str, llm: str, slot: str, bank: NegativeBank, key: dict, info: dict,
                    extra: dict | None = None, root: Path | None = None) -> Path:
    """Ship a bank of vectors as float16 (the manifest records the smallest fp32/fp16 cosine over rows)."""
    if kind not in VECTOR_KINDS:
        raise ValueError(f"{kind} is not a vector kind ({', '.join(VECTOR_KINDS)})")
    vectors = {"shape": list(bank.emb.shape), "stored_dtype": "float16",
               "fp16_min_cosine": min_cosine(bank.emb, bank.emb.astype(np.float16))}
    return _publish(kind, dataset, llm, slot, bank.file_bytes(compact=True), "npz", len(bank), key, info,
                    {"vectors": vectors, **(extra or {})}, root)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    """Smallest row-wise cosine between two copies of the same vectors (None for no rows)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not len(a):
        return None
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, np.einsum("nd,nd->n", a, b) / np.maximum(norms, 1e-300), 1.0)
    return float(cos.min())


# ------------------------------------------------------------------------------------------ reading

@dataclass
class Shipped:
    """One shipped output whose file passed its integrity checks."""
    manifest_path: Path
    manifest: dict

    @property
    def path(self) -> Path:
        return self.manifest_path.parent / self.manifest["file"]

    @property
    def made_with(self) -> dict:
        return self.manifest["made_with"]

    def rows(self) -> list[dict]:
        return read_records(self.path, self.manifest)

    def bank(self, source: str = "", meta: dict | None = None) -> NegativeBank:
        """A vector output as a NegativeBank (float32); `meta` joins the manifest's bank_meta and provenance."""
        bank = read_vectors(self.path, self.manifest)
        bank.source = source or f"shipped:{self.path.name}"
        bank.meta = {**(meta or {}), **self.manifest.get("bank_meta", {}), "shipped": str(self.path),
                     "made_with": self.made_with}
        return bank

    def line(self, used: int | None = None) -> str:
        n = self.manifest["records"] if used is None else used
        return f"shipped {self.path} ({n} records, made with {describe(self.made_with)})"


def other_ways(path: Path, manifest: dict) -> str:
    """What the error about a shipped output says besides its regenerating command."""
    return (f" (on a GPU: minutes), or delete {path.parent / (manifest['slot'] + '.manifest.json')} to use or "
            f"rebuild artifacts/ instead")


def damaged(path: Path, manifest: dict, what: str) -> ShippedOutputError:
    return ShippedOutputError(f"shipped output {path} {what}; regenerate it with `{regenerate_command(manifest)}`"
                              + other_ways(path, manifest))


def read_manifest(mpath: Path) -> dict:
    try:
        manifest = json.loads(Path(mpath).read_text())
    except json.JSONDecodeError as err:
        raise ShippedOutputError(f"{mpath} is not valid JSON ({err}); restore it from git "
                                 f"(`git checkout -- {mpath}`) or delete it") from None
    missing = {"kind", "file", "sha256", "records", "key", "made_with"} - set(manifest)
    if missing:
        raise ShippedOutputError(f"{mpath} lacks {sorted(missing)}; restore it from git or delete it")
    return manifest


def check_file(mpath: Path, manifest: dict) -> Path:
    path = Path(mpath).parent / manifest["file"]
    if not path.exists():
        raise damaged(path, manifest, "is missing (its manifest names it)")
    digest = sha256_file(path)
    if digest != manifest["sha256"]:
        raise damaged(path, manifest, f"has sha256 {digest[:16]}..., its manifest says {manifest['sha256'][:16]}...")
    return path


def read_records(path: Path, manifest: dict) -> list[dict]:
    data = Path(path).read_bytes()
    if data and not data.endswith(b"\n"):
        raise damaged(path, manifest, "ends in a torn line (truncated)")
    rows = []
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise damaged(path, manifest, f"line {n} is not valid JSON (truncated or edited)") from None
    if len(rows) != manifest["records"]:
        raise damaged(path, manifest, f"holds {len(rows)} records, its manifest says {manifest['records']}")
    return rows


def read_vectors(path: Path, manifest: dict) -> NegativeBank:
    try:
        bank = NegativeBank.load(path, source="")
    except (OSError, ValueError, KeyError) as err:
        raise damaged(path, manifest, f"cannot be read as users/items/emb arrays ({err})") from None
    shape = list(manifest.get("vectors", {}).get("shape", []))
    if list(bank.emb.shape) != shape or bank.emb.ndim != 2:
        raise damaged(path, manifest, f"has vectors of shape {list(bank.emb.shape)} for {len(bank.users)} users "
                                      f"and {len(bank.items)} items; its manifest says {shape}")
    return bank


def find(kind: str, dataset: str, llm: str, slot: str, root: Path | None = None) -> Shipped | None:
    """The shipped output of this slot after its integrity checks, or None when none is shipped."""
    mpath = manifest_path(dataset, llm, kind, slot, root)
    if not mpath.exists():
        return None
    manifest = read_manifest(mpath)
    check_file(mpath, manifest)
    return Shipped(mpath, manifest)


def key_differences(stored: dict, wanted: dict) -> list[str]:
    """Top-level key fields (and template files) that differ; 'split' is checked apart (an error)."""
    out = []
    for field in sorted(set(stored) | set(wanted)):
        if field == "split" or stored.get(field) == wanted.get(field):
            continue
        if field == "templates":
            names = sorted(n for n in set(stored.get(field, {})) | set(wanted.get(field, {}))
                           if stored.get(field, {}).get(n) != wanted.get(field, {}).get(n))
            out.append(f"template {', '.join(names)} changed")
        else:
            out.append(f"{field} changed")
    return out


@dataclass
class Lookup:
    """What a lookup found: `shipped` (None on a miss) and a one-line reason for the report; `rows`: the records
    that fit (all of them on a hit; on a miss, those shipped so far when the output lacks only some prompts)."""
    shipped: Shipped | None
    reason: str
    rows: list[dict] | None = None


def not_shipped(kind: str, dataset: str, llm: str, slot: str, root: Path | None = None) -> Lookup | None:
    """The miss when nothing is shipped for this slot (checked before building any prompt) or when
    HNLM_REGENERATE is set (`hnlm study --regenerate`: make every LLM output here instead), else None."""
    if os.environ.get(REGENERATE_VAR):
        return Lookup(None, f"shipped outputs ignored ({REGENERATE_VAR} is set)")
    where = manifest_path(dataset, llm, kind, slot, root)
    return None if where.exists() else Lookup(None, f"none shipped ({where} absent)")


def lookup(kind: str, dataset: str, llm: str, slot: str, key: dict, prompts: dict | None = None,
           id_fields: tuple[str, ...] = ("id",), root: Path | None = None) -> Lookup:
    """The shipped output of `slot` if its key equals `key` (by content; the dtype it was made with is only
    reported) and, for generations, every record id in `prompts` ({id tuple: prompt_sha}) is shipped with that
    prompt hash; then `rows` holds those records in the order of `prompts`. Damaged files raise
    ShippedOutputError, files of another training split common.OtherSplitError."""
    none = not_shipped(kind, dataset, llm, slot, root)
    if none is not None:
        return none
    shipped = find(kind, dataset, llm, slot, root)
    stored = shipped.manifest["key"]
    if "split" in key:
        check_split(f"shipped output {shipped.path}", stored.get("split"), key["split"],
                    regenerate_command(shipped.manifest), other_ways(shipped.path, shipped.manifest))
    diff = key_differences(stored, key)
    if diff:
        return Lookup(None, f"shipped {shipped.path.name} does not fit: {'; '.join(diff)}")
    if prompts is None:
        return Lookup(shipped, "match")
    rows = shipped.rows()
    by_id = {tuple(r[f] for f in id_fields): r for r in rows}
    absent = [i for i in prompts if i not in by_id]
    changed = [i for i, sha in prompts.items() if i in by_id and by_id[i]["prompt_sha"] != sha]
    if absent or changed:   # rows: the part that fits, when only some prompts are missing (a block of a long job)
        part = [by_id[i] for i in prompts if i in by_id] if not changed else None
        return Lookup(None, f"shipped {shipped.path.name} does not fit: {len(changed)} of {len(prompts)} prompts "
                            f"changed, {len(absent)} not shipped", part)
    return Lookup(shipped, "match", [by_id[i] for i in prompts])


def shipped_entries(root: Path | None = None, dataset: str | None = None, llm: str | None = None) -> list[Shipped]:
    """Every shipped output (manifests only; files are checked by `find`/`lookup` and `hnlm outputs list`)."""
    base = Path(root or outputs_root())
    pattern = f"{dataset or '*'}/{safe_name(llm) if llm else '*'}/*/*.manifest.json"
    return [Shipped(p, read_manifest(p)) for p in sorted(base.glob(pattern))]


def report(stage: str, text: str) -> None:
    """One line per stage saying where its LLM outputs came from (shipped / cached / generating N)."""
    print(f"[outputs] {stage}: {text}", flush=True)
