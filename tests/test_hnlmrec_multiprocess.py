"""`accelerate launch --multi_gpu --num_processes 2 -m hnlm finetune` on CPU: two processes (gloo) fine-tune
the real smollm2-135m on the smallest settings the command takes. Both ranks end with the same trainable
weights and the same loss log (gathered into summary.json), the batches are sharded between them, the main
process alone writes the checkpoint, the adapter, the bank and the summary, and only it prints.

Why not `--cpu`: accelerate 1.15's `launch --cpu --num_processes 2` starts ONE process unless an MPI
`--mpirun_hostfile` is given (its simple launcher ignores --num_processes). `--multi_gpu` uses the torchrun
launcher, and on a machine without a visible GPU the processes join a CPU (gloo) group (hnlmrec.ranks)."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hnlm.paths import cache_root

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

LAUNCH_TIMEOUT_S = 1200  # two model loads, a teacher epoch and 2 steps on a busy 2-core machine
SMALLEST = ["--llm", "smollm2-135m", "--max-steps", "2", "--batch-size", "2", "--save-steps", "2",
            "--teacher", "mf", "--teacher-epochs", "1", "--max-length", "160", "--lora-r", "2", "--lora-alpha", "4",
            "--infer-users", "2", "--infer-batch", "2", "--pooling", "last", "--quality-pairs", "4"]


def launch(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Runs the launcher in its own process group, killed whole if it outlives `timeout`."""
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--num_cpu_threads_per_process", "1", "--main_process_port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"accelerate launch still running after {timeout}s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_two_processes_agree_and_the_main_one_writes(tmp_path):
    env = dict(os.environ, HNLM_ARTIFACTS=str(tmp_path / "artifacts"), HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               HNLM_MODEL_CACHE=str(cache_root("models")))  # the converted LLM is shared, as in every test
    run = launch(["-m", "hnlm", "finetune", "--dataset", "ml-100k", *SMALLEST], env, LAUNCH_TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-4000:]

    assert run.stdout.count('"folder"') == 1  # one summary: the other rank prints nothing
    printed = json.loads(run.stdout[run.stdout.index('{\n  "folder"'):])
    folder = Path(printed["folder"])
    assert printed["steps"] == 2 and folder.is_relative_to(tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["processes"] == 2 and [r["rank"] for r in summary["ranks"]] == [0, 1]
    first, second = summary["ranks"]
    assert first["weights"] == second["weights"]  # data-parallel: the same adapter and heads on both ranks
    assert first["losses"] == second["losses"] and len(first["losses"]) == 2

    checkpoints = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-2"]  # one checkpoint, no staging folder left
    checkpoint = folder / "checkpoints" / "checkpoint-2"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}  # both ranks wrote RNG
    # sharded: an epoch is ceil(examples / (2 ranks x batch 2)) steps (one process alone would take twice as many)
    epoch = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"][-1]["epoch"]
    assert epoch == pytest.approx(2 / math.ceil(summary["examples_trained"] / 4), rel=1e-3)  # held-out pairs excluded
    assert sorted(p.name for p in folder.glob("bank_*.npz")) == ["bank_per-user-1-users-2.npz"]
    assert (folder / "final").is_dir() and summary["adapter"]
