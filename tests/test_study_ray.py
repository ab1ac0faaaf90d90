"""The CF grid as tasks of a real Ray cluster started here on 127.0.0.1 (a head and one worker node, 1 CPU each,
`ray.cluster_utils.Cluster`): the same runs as the local executor, and a worker node removed mid-grid (its raylet
and task processes killed) loses no run and stores none twice."""

import threading
import time

import psutil
import pytest

from hnlm.data import first_users, load_dataset
from hnlm.study.executors import Local, Ray
from hnlm.study.experiments import run_grid

pytestmark = pytest.mark.slow
SETTINGS = {"epochs": 3, "patience": 3, "dim": 8, "batch_size": 16384, "lr": 1e-2, "ks": [10, 20]}


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node on loopback; the test process is the driver. Ray replaces 127.0.0.1 by the
    machine's outward address unless it runs as a one-machine cluster (its switch below), and traffic here must
    stay on loopback."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")     # read when ray is first imported: import it after
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        import ray
        from ray.cluster_utils import Cluster

        assert ray._private.services.get_node_ip_address() == "127.0.0.1", "ray was imported before this fixture"
        local = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        worker = local.add_node(num_cpus=1)
        yield local, worker
        ray.shutdown()
        local.shutdown()


@pytest.fixture(scope="module")
def data():
    return first_users(load_dataset("ml-100k", seed=0), 200)


def test_ray_grid_equals_the_local_grid(cluster, data, tmp_path):
    import ray
    local_cluster, _ = cluster
    methods, seeds = ["rns", "dns"], [0, 1]
    remote = run_grid(data, ["mf"], methods, seeds, SETTINGS, tmp_path / "ray", executor=Ray(local_cluster.address))
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2 and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
    local = run_grid(data, ["mf"], methods, seeds, SETTINGS, tmp_path / "local", executor=Local(1))
    assert [r["tag"] for r in remote] == [r["tag"] for r in local]
    for a, b in zip(remote, local):
        assert a["key"] == b["key"] and a["best_epoch"] == b["best_epoch"]
        assert a["test"]["recall@20"] == pytest.approx(b["test"]["recall@20"], rel=1e-3)


def test_a_worker_node_killed_mid_grid_loses_no_run_and_duplicates_none(cluster, data, tmp_path):
    local_cluster, worker = cluster
    settings = {**SETTINGS, "epochs": 12, "patience": 12}
    methods, seeds = ["rns", "dns", "dns-mn"], [0, 1]
    finished = {}
    grid = threading.Thread(target=lambda: finished.setdefault("runs", run_grid(
        data, ["mf"], methods, seeds, settings, tmp_path, executor=Ray(local_cluster.address))))
    grid.start()
    raylet = psutil.Process(worker.all_processes["raylet"][0].process.pid)
    deadline = time.time() + 300
    while time.time() < deadline and not any("ray::run_one" in " ".join(c.cmdline())
                                             for c in raylet.children(recursive=True)):
        time.sleep(0.2)
    running_on_worker = time.time() < deadline
    local_cluster.remove_node(worker)          # kills the worker node's raylet and its task processes
    grid.join(timeout=600)
    assert running_on_worker, "no run was seen running on the worker node"
    runs = finished["runs"]
    folder = tmp_path / "cf_runs"
    assert len(runs) == 6 and len({r["tag"] for r in runs}) == 6
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(r["tag"] for r in runs)   # each run once
    assert sorted(p.stem for p in folder.glob("*.npz")) == sorted(r["tag"] for r in runs)
    again = run_grid(data, ["mf"], methods, seeds, settings, tmp_path, executor=Local(1))   # all stored: reused
    assert [r["key"] for r in again] == [r["key"] for r in runs]
