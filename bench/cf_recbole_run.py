"""RecBole 1.2.1 side of bench/cf_vs_recbole.py and bench/cf_grid.py. Runs INSIDE bench/.venv-recbole (not the
project env): trains BPR or LightGCN on the benchmark files written by the driver (our exact split), with
uniform negatives or, with --candidates M, RecBole's dynamic negative sampling (the best-scored of M uniform
candidates, as our DNS), times every training epoch and every full-ranking evaluation, and writes a JSON
summary."""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # RecBole reloads a pickled checkpoint

import torch  # noqa: E402
from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import get_model, get_trainer, init_seed  # noqa: E402


def timed(record: list, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        record.append(time.perf_counter() - t0)
        return out
    return wrapper


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", choices=["BPR", "LightGCN"], required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--patience", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--reg", type=float, default=1e-4)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--candidates", type=int, default=0, help="dynamic negative sampling over M candidates (0: uniform)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    ckpt = tempfile.mkdtemp(prefix="recbole_ckpt_")
    cfg = {
        "data_path": a.data_dir, "dataset": a.dataset, "benchmark_filename": ["train", "valid", "test"],
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "load_col": {"inter": ["user_id", "item_id"]},
        "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1, "alpha": 1.0,
                                  "dynamic": a.candidates > 0, "candidate_num": a.candidates},
        "eval_args": {"group_by": "user", "order": "RO", "mode": "full"},
        "metrics": ["Recall", "NDCG"], "topk": [10, 20, 50], "valid_metric": "recall@20",
        "epochs": a.epochs, "stopping_step": a.patience, "eval_step": 1,
        "train_batch_size": a.batch_size, "eval_batch_size": 4096 * 64, "learning_rate": a.lr,
        "embedding_size": a.dim, "n_layers": a.layers, "reg_weight": a.reg,
        "seed": a.seed, "reproducibility": True, "device": "cpu", "use_gpu": False, "gpu_id": "",
        "show_progress": False, "checkpoint_dir": ckpt, "state": "WARNING", "log_wandb": False,
    }
    config = Config(model=a.model, config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    train_s, valid_s, valid_scores = [], [], []
    trainer._train_epoch = timed(train_s, trainer._train_epoch)
    inner_valid = trainer._valid_epoch

    def valid_epoch(*args, **kwargs):
        t0 = time.perf_counter()
        score, result = inner_valid(*args, **kwargs)
        valid_s.append(time.perf_counter() - t0)
        valid_scores.append(float(score))
        return score, result

    trainer._valid_epoch = valid_epoch
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    trainer.evaluate(valid_data, load_best_model=True, show_progress=False)   # loads the best checkpoint
    t0 = time.perf_counter()
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    test_s = time.perf_counter() - t0
    best = max(range(len(valid_scores)), key=lambda i: valid_scores[i]) + 1
    out = {"model": a.model, "candidates": a.candidates,
           "n_users": dataset.user_num - 1, "n_items": dataset.item_num - 1,
           "train_inter": len(train_data.dataset), "epochs_run": len(train_s), "best_epoch": best,
           "train_s_per_epoch": sum(train_s) / len(train_s), "train_s": train_s,
           "eval_s_mean": sum(valid_s) / len(valid_s), "valid_s": valid_s, "test_eval_s": test_s,
           "test": {k: float(v) for k, v in test.items()}, "valid_scores": valid_scores,
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
