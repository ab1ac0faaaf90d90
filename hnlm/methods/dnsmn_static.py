"""Static vs dynamic hard negatives: DNS(M,N)'s negatives mined once from a converged DNS(M,N) model and frozen.

DNS(M,N) re-mines every batch with the model being trained: its negatives are hard for the current model and
change as it learns. `dnsmn-static` keeps everything else (its M and N, and, as an ablation of `dns-mn`, the
tuned learning rate and batch size of DNS(M,N)) but draws each training pair's negative once, with DNS(M,N)'s
rule, from a DNS(M,N) model trained to convergence on validation (`hnlm.cf.frozen`), and keeps it for the whole
run. A gap between the two is what the dynamics are worth; a mined-once table of the teacher-negatives kind is
bounded by this static case, not by the dynamic one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hnlm.cf.frozen import dnsmn_config, frozen_model, mine_dnsmn
from hnlm.cf.samplers import DNSMN, TableSampler
from hnlm.cf.trainer import TrainConfig
from hnlm.methods import Method, register, setting_like
from hnlm.methods.classic import settings_of


@dataclass
class StaticDNSMNSettings:
    candidates: int = setting_like(settings_of(DNSMN), "candidates")
    top: int = setting_like(settings_of(DNSMN), "top")
    teacher: str = field(default=TrainConfig.model, metadata={
        "help": "backbone of the converged DNS(M,N) model that mines the frozen negatives (lightgcn or mf)"})
    teacher_lr: float = field(default=TrainConfig.lr, metadata={
        "help": "its learning rate (trained to convergence, early stopping on valid recall@20)"})
    teacher_batch_size: int = field(default=TrainConfig.batch_size, metadata={"help": "its batch size"})


class StaticSampler(TableSampler):
    """A mined-once table, reported with the validation score of the model that mined it."""

    name = "dnsmn-static"

    def __init__(self, users, pos, neg, n_items: int, source: str, teacher: dict):
        super().__init__(users, pos, neg, n_items, source)
        self.teacher = teacher

    def counts(self):
        return {**super().counts(), "teacher": self.teacher}


def teacher_config(settings: StaticDNSMNSettings) -> TrainConfig:
    return dnsmn_config(settings.teacher, settings.teacher_lr, settings.teacher_batch_size, settings.candidates,
                        settings.top)


def build(data, settings, resources, seed):
    model = frozen_model(data, teacher_config(settings))
    users, pos, neg = mine_dnsmn(data, model, settings.candidates, settings.top, seed)
    teacher = {"backbone": settings.teacher, "best_epoch": model.summary["best_epoch"],
               "valid": {k: v for k, v in model.summary["valid"].items() if "@" in k}}
    return StaticSampler(users, pos, neg, data.n_items, f"frozen dns-mn ({settings.teacher})", teacher), None


register(Method("dnsmn-static", "DNS(M,N)'s negatives mined once from a converged DNS(M,N) model and frozen "
                "(ablation of its re-mining)", StaticDNSMNSettings, build, ablation_of="dns-mn"))
