"""Several processes (`accelerate launch --num_processes N -m hnlm finetune`): who builds, who writes.

Every process prepares the same inputs, but the main process builds first whatever is cached on disk (the
prepared dataset, the teacher, text-encoder vectors, the converted LLM), so that the others read those files
instead of writing them at the same time. The Trainer shards the batches and writes the checkpoints from the
main process; the final adapter, the embedding pass, the bank and summary.json are the main process's alone.
A single process (no launcher) is the main process, and all of this reduces to plain calls.
"""

from __future__ import annotations

import hashlib

import torch
from accelerate import PartialState
from accelerate.utils import gather_object


def processes() -> PartialState:
    """The process group of this run, set up from the launcher's environment on first use. Without a GPU
    it must be asked for as a CPU group (gloo), as finetune.training_args does with `use_cpu`: the first
    call fixes the group for the Trainer too."""
    return PartialState(cpu=not torch.cuda.is_available())


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the trainable parameters (names, then values in float32): equal across processes iff the
    processes hold the same fine-tuned weights."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def gather_ranks(model: torch.nn.Module, losses: list[float]) -> list[dict]:
    """Each process's trainable-weights digest and logged losses, in rank order (a collective call: every
    process must make it). Data-parallel training keeps both equal on every rank; the summary records them."""
    state = processes()
    mine = {"rank": state.process_index, "weights": weights_digest(model), "losses": [float(x) for x in losses]}
    return gather_object([mine]) if state.num_processes > 1 else [mine]
