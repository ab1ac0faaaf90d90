"""Settings of one CF run and the names of the ranking metrics, importable without torch: `hnlm train` builds
its options and checks them from these while its parser stays light (hnlm.cli)."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

RANK_METRICS = ("recall", "ndcg", "hit", "precision")


@dataclass
class TrainConfig:
    """Hyper-parameters of one CF run (the one source of their defaults; the CLI and study profiles override)."""

    model: str = "lightgcn"     # lightgcn | mf
    dim: int = 64               # embedding size
    layers: int = 3             # LightGCN propagation layers
    epochs: int = 300           # cap: no method's best epoch should come near it (a capped run is flagged)
    batch_size: int = 2048
    lr: float = 5e-3            # lr 1e-3 converges very slowly for LightGCN on ml-100k
    l2: float = 1e-4            # weight of the L2 term on the batch's layer-0 embeddings (sum of squares / batch)
    loss: str = "bpr"           # bpr | hinge
    margin: float = 0.3         # hinge margin
    sampler: str = "rns"        # used when train() gets no sampler object
    sampler_opts: dict = field(default_factory=dict)
    patience: int = 20          # evaluations without improvement of `metric` on valid before stopping
    eval_every: int = 1         # epochs between validation evaluations
    metric: str = "recall@20"
    ks: list = field(default_factory=lambda: [10, 20, 50])
    eval_batch_size: int = 1024  # users per full-ranking batch
    seed: int = 0
    device: str = "auto"        # auto | cpu | cuda

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "TrainConfig":
        values = tomllib.loads(Path(path).read_text())
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown training settings {sorted(unknown)}")
        return cls(**{**values, **overrides})
