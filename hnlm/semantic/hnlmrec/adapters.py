"""Where a fine-tuning run's adapter (LoRA weights + heads, `QueryEncoder.save`'s final/ folder) comes from.

The run's own final/ in artifacts/ when it finished here; else the adapter shipped beside the run's vector bank
in outputs/ (float16, restored once into the run's shipped-final/ folder, upcast to float32 as training keeps
it); else nothing, and what needs it says which fine-tune makes it. `find_adapter` is that one decision.

A shipped adapter is one safetensors file per fine-tuning run (a transfer bank reuses its source run's):
LoRA tensors under "lora/", head / soft-prompt / centring tensors under "heads/", the encoder and PEFT
configs in its metadata. Weight matrices are stored in float16 (half the bytes); vectors (biases, the centring
mean) stay float32: a few KB, and the centring mean is subtracted from nearly collinear pooled states, where
its rounding would show.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from hnlm.atomic import atomic_dir, write_bytes
from hnlm.errors import MissingInputError
from hnlm.semantic import outputs
from hnlm.semantic.hnlmrec.infer import adapter_fingerprint
from hnlm.semantic.hnlmrec.model import CONFIG_FILE, TRAINABLE_FILE
from hnlm.semantic.hnlmrec.run import RunConfig, run_folder

LORA_FILE = "adapter/adapter_model.safetensors"
PEFT_CONFIG_FILE = "adapter/adapter_config.json"
SHIPPED_FINAL = "shipped-final"     # the restored shipped adapter, beside the run's own final/
RESTORED_FROM = "shipped_sha256"    # in SHIPPED_FINAL: the shipped file it was restored from


@dataclass
class Adapter:
    """A run's adapter folder (QueryEncoder.from_saved reads it), where it came from ("run" or "shipped"), and
    for a shipped one the bank it ships with (whose manifest holds the run's summary)."""
    folder: Path
    source: str
    bank: outputs.Shipped | None = field(default=None, repr=False)


def split_of_slot(slot: str) -> str:
    """The split id a bank slot ends in ("..._split-<id>")."""
    return slot.rsplit("_split-", 1)[1]


# ------------------------------------------------------------------------------------------ shipping

def half_tensors(final: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of the shipped file made from a run's final/ folder (float32)."""
    final = Path(final)
    parts = {"lora": load_file(str(final / LORA_FILE)),
             "heads": torch.load(final / TRAINABLE_FILE, weights_only=True)}
    tensors = {}
    for part, state in parts.items():
        for name, t in state.items():
            t = t.detach().cpu()
            tensors[f"{part}/{name}"] = t.half() if t.is_floating_point() and t.ndim >= 2 else t.contiguous()
    meta = {"encoder_config": (final / CONFIG_FILE).read_text(), "peft_config": (final / PEFT_CONFIG_FILE).read_text(),
            "source_dtype": "float32"}
    return tensors, meta


def ship_adapter(final: Path, folder: Path, slot: str) -> dict:
    """Write the float16 adapter of a run's `final` folder as `<slot>.adapter.<sha12>.safetensors` in `folder`;
    returns its manifest entry (file, sha256, bytes, conversion, the run's adapter fingerprint)."""
    tensors, meta = half_tensors(final)
    blob = save(tensors, metadata=meta)
    digest = outputs.sha256_bytes(blob)
    name = f"{slot}.adapter.{digest[:12]}.safetensors"
    write_bytes(Path(folder) / name, blob)
    kept = sorted(k for k, t in tensors.items() if t.is_floating_point() and t.ndim < 2)
    return {"file": name, "sha256": digest, "bytes": len(blob), "run": Path(final).parent.name,
            "source_fingerprint": adapter_fingerprint(final), "source_dtype": "float32", "stored_dtype": "float16",
            "kept_float32": kept, "tensors": len(tensors)}


def attach_adapter(mpath: Path, final: Path) -> dict:
    """Ship the adapter of `final` beside the bank of manifest `mpath` and record it there (the bank's file, key
    and every other field stay as they are); a previous adapter file of the slot is removed."""
    manifest = outputs.read_manifest(mpath)
    expected = manifest.get("bank_meta", {}).get("adapter")
    found = adapter_fingerprint(final)
    if expected is not None and expected != found:
        raise MissingInputError(f"{final} (adapter {found}) is not the adapter that made {manifest['file']} "
                                f"(adapter {expected}); its run is {manifest.get('bank_meta', {}).get('run')}")
    entry = ship_adapter(final, mpath.parent, manifest["slot"])
    previous = manifest.get("adapter", {}).get("file")
    outputs.update_manifest(mpath, adapter=entry)
    if previous and previous != entry["file"]:
        (mpath.parent / previous).unlink(missing_ok=True)
    return entry


# ------------------------------------------------------------------------------------------ finding

def shipped_adapter(dataset: str, cfg: RunConfig, split_id: str, root: Path | None = None) -> outputs.Shipped | None:
    """The shipped vector bank whose manifest carries the adapter of run `cfg` on `dataset`'s split `split_id`
    (None when none does, or when HNLM_REGENERATE asks for everything to be made here)."""
    if os.environ.get(outputs.REGENERATE_VAR):
        return None
    run = run_folder(dataset, cfg, split_id).name
    for entry in outputs.shipped_entries(root, dataset, cfg.finetune.llm):
        m = entry.manifest
        if m["kind"] == "hnlmrec-bank" and m.get("adapter", {}).get("run") == run and \
                split_of_slot(m["slot"]) == split_id:
            return entry
    return None


def check_adapter_file(mpath: Path, manifest: dict) -> Path:
    """The adapter file a bank's manifest names, after its sha256 check (ShippedOutputError when damaged)."""
    entry = manifest["adapter"]
    return outputs.check_file(mpath, {**manifest, "file": entry["file"], "sha256": entry["sha256"]})


def restore_adapter(bank: outputs.Shipped, target: Path) -> Path:
    """The shipped adapter of `bank` as a float32 final/-style folder at `target` (kept while the shipped file is
    the same)."""
    entry = bank.manifest["adapter"]
    marker = target / RESTORED_FROM
    if marker.exists() and marker.read_text() == entry["sha256"]:
        return target
    path = check_adapter_file(bank.manifest_path, bank.manifest)
    parts = {"lora": {}, "heads": {}}
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        for key in fh.keys():
            part, name = key.split("/", 1)
            t = fh.get_tensor(key)
            parts[part][name] = t.float() if t.is_floating_point() else t
    with atomic_dir(target) as tmp:     # whole or absent: the marker is trusted with the rest
        (tmp / "adapter").mkdir()
        save_file(parts["lora"], str(tmp / LORA_FILE))
        (tmp / PEFT_CONFIG_FILE).write_text(meta["peft_config"])
        torch.save(parts["heads"], tmp / TRAINABLE_FILE)
        (tmp / CONFIG_FILE).write_text(meta["encoder_config"])
        (tmp / RESTORED_FROM).write_text(entry["sha256"])
    return target


def run_final(folder: Path) -> Path | None:
    """A run folder's final/ adapter when its fine-tune finished (QueryEncoder.save wrote the config), else None."""
    final = Path(folder) / "final"
    return final if (final / CONFIG_FILE).exists() else None


def find_adapter(dataset: str, cfg: RunConfig, split_id: str, root: Path | None = None) -> Adapter | None:
    """The adapter of run `cfg` on `dataset`'s split `split_id`: the run's final/ when it finished here, else the
    shipped one (restored into the run's shipped-final/), else None."""
    folder = run_folder(dataset, cfg, split_id)
    final = run_final(folder)
    if final is not None:
        return Adapter(final, "run")
    bank = shipped_adapter(dataset, cfg, split_id, root)
    if bank is None:
        return None
    return Adapter(restore_adapter(bank, folder / SHIPPED_FINAL), "shipped", bank)


def run_adapter(dataset: str, cfg: RunConfig, split_id: str, root: Path | None = None) -> Adapter:
    """`find_adapter`, or an error saying the adapter is absent and which fine-tune makes it."""
    adapter = find_adapter(dataset, cfg, split_id, root)
    if adapter is None:
        ft = cfg.finetune
        folder = run_folder(dataset, cfg, split_id)
        raise MissingInputError(f"the fine-tuned adapter {folder / 'final'} is absent and none is shipped in "
                                f"outputs/: fine-tune on {dataset} first (notebook 05_hnlmrec, or `hnlm finetune "
                                f"--dataset {dataset} --llm {ft.llm} --cf-signal {ft.cf_signal}` with the same "
                                f"settings; 30-60 min on a CPU)")
    return adapter
