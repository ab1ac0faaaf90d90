"""Where a grid's CF runs train: here one at a time (the default), in local worker processes, or as tasks of a Ray
cluster (`hnlm study --executor ray [--address HOST:PORT]`).

A CF run is an independent, idempotent task: `hnlm.study.experiments.run_one` first looks for a stored run with
the same content key and otherwise trains and stores it atomically (the JSON last). So a task that is retried
after its worker died, or a grid started again after a crash, never loses a finished run and never stores one
twice. With Ray, the run store (`<out_dir>/cf_runs`) must be on a file system every node sees, and every node
needs this package installed (the same environment, or a Ray runtime_env); a task asks for `cpus` CPUs and
`gpus` GPUs (HNLM_RAY_CPUS, HNLM_RAY_GPUS; a GPU run uses CUDA through TrainConfig's device "auto").

Chosen by environment, so that notebook kernels started by `hnlm study` inherit it: HNLM_EXECUTOR (local | ray),
HNLM_RAY_ADDRESS (default: start or join a cluster on this machine), HNLM_CF_WORKERS (local worker processes).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Callable

from hnlm.errors import UserFacingError

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Local:
    """Runs here, one at a time (`workers` 1), or in that many spawned processes of one torch thread each."""

    workers: int = 1

    @property
    def ships_inputs(self) -> bool:      # jobs cross a process boundary: inputs go as plain values
        return self.workers > 1

    def map(self, fn: Callable, jobs: list[tuple], on_done: Callable[[], object]) -> list:
        if self.workers <= 1:
            results = []
            for job in jobs:
                results.append(fn(*job))
                on_done()
            return results
        import torch  # here, not at the top: the CLI imports this module to parse its options
        results = [None] * len(jobs)
        with ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"), initializer=torch.set_num_threads,
                                 initargs=(1,)) as pool:
            futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                on_done()
        return results


@dataclass(frozen=True)
class Ray:
    """Each job a Ray task asking for `cpus` CPUs and `gpus` GPUs, retried up to `retries` times when its worker
    or node dies (the run store makes a retry harmless)."""

    address: str | None = None
    cpus: float = 1
    gpus: float = 0
    retries: int = 3
    ships_inputs = True

    def map(self, fn: Callable, jobs: list[tuple], on_done: Callable[[], object]) -> list:
        ray = connect(self.address)
        task = ray.remote(fn).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.retries)
        shared = {}   # one object per distinct big argument (the dataset), not one copy per task

        def ref(value):
            if isinstance(value, (str, int, float, dict)) or value is None:
                return value
            return shared.setdefault(id(value), ray.put(value))

        pending = {task.remote(*[ref(v) for v in job]): i for i, job in enumerate(jobs)}
        results = [None] * len(jobs)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            results[pending.pop(done[0])] = ray.get(done[0])
            on_done()
        return results


def connect(address: str | None):
    """Import Ray and join the cluster at `address` (None: the one this machine runs, else a new local one)."""
    try:
        import ray
    except ImportError as exc:      # pragma: no cover - ray is in requirements.txt
        raise UserFacingError("the ray executor needs the `ray` package (pip install -r requirements.txt)") from exc
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False,
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("HNLM_")}})
    return ray


def from_env() -> Local | Ray:
    """The executor HNLM_EXECUTOR names (default local; HNLM_CF_WORKERS processes)."""
    name = os.environ.get("HNLM_EXECUTOR", "local")
    if name == "local":
        return Local(int(os.environ.get("HNLM_CF_WORKERS", "1")))
    if name == "ray":
        return Ray(os.environ.get("HNLM_RAY_ADDRESS") or None, float(os.environ.get("HNLM_RAY_CPUS", "1")),
                   float(os.environ.get("HNLM_RAY_GPUS", "0")))
    raise UserFacingError(f"unknown executor {name!r} (HNLM_EXECUTOR): choose one of {', '.join(EXECUTORS)}")
