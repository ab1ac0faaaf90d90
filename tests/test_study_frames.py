"""The tables the notebooks show, computed in hnlm from the study's outputs (04's alpha sweep, 05's
fine-tuning and 10's transfer summaries), on hand-made inputs."""

import numpy as np
import pandas as pd

from hnlm.methods import variant
from hnlm.semantic.bank import NegativeBank
from hnlm.study.experiments import sweep_frame
from hnlm.study.pipeline import FINETUNE_TIMINGS, finetune_frame, transfer_frame


def bank(rows: int) -> NegativeBank:
    return NegativeBank(np.zeros((rows, 2), np.float32), np.arange(rows), np.arange(rows), "test")


def test_sweep_frame_labels_each_run_with_its_setting_in_order():
    sweep = [variant("sns", label="sns"), variant("sns", label="sns alpha=0.1", alpha=0.1),
             variant("sns", label="sns alpha=0.001", alpha=0.001)]
    runs = pd.DataFrame({"method": ["rns", "sns alpha=0.1", "sns", "sns alpha=0.001"], "recall@20": [1, 2, 3, 4]})
    frame = sweep_frame(runs, sweep, "alpha")
    assert frame["method"].tolist() == ["sns alpha=0.001", "sns", "sns alpha=0.1"]
    assert frame["alpha"].tolist() == ["0.001", "0.01", "0.1"] and frame["recall@20"].tolist() == [4, 3, 2]


def test_finetune_frame_has_one_row_per_signal_with_its_timings_and_bank_rows():
    def summary(steps):
        return {"examples": 10 * steps, "steps": steps, "loss_first5_mean": 2.0, "loss_last5_mean": 1.0,
                "timings": {**{k: float(steps) for k in FINETUNE_TIMINGS}, "not_shown": 0}, "folder": "x"}

    frame = finetune_frame({"text": (summary(3), bank(5)), "soft": (summary(4), bank(7))})
    assert frame.columns.tolist() == ["signal", "examples", "steps", "loss_first5_mean", "loss_last5_mean",
                                      *FINETUNE_TIMINGS, "bank_rows"]
    assert frame["signal"].tolist() == ["text", "soft"] and frame["bank_rows"].tolist() == [5, 7]
    assert frame["examples"].tolist() == [30, 40] and frame["total_s"].tolist() == [3.0, 4.0]


def test_transfer_frame_flattens_the_teacher_and_timings():
    summary = {"source_run": "run-1", "finetuned_here": False, "queries": 12, "bank_rows": 9, "users_embedded": 3,
               "users": 4, "teacher": {"epochs": 2, "valid_recall@20_recorded_only": 0.25},
               "timings": {"embedding_pass_s": 1.5}, "folder": "x"}
    frame = transfer_frame({"text": (summary, bank(9))})
    assert frame.to_dict("records") == [{"signal": "text", "source_run": "run-1", "finetuned_here": False,
                                         "queries": 12, "bank_rows": 9, "users_embedded": 3, "target_users": 4,
                                         "teacher_epochs": 2, "teacher_valid_recall@20": 0.25,
                                         "embedding_pass_s": 1.5}]
