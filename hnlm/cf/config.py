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

    model: str = field(default="lightgcn", metadata={"help": "CF backbone: lightgcn or mf"})
    dim: int = field(default=64, metadata={"help": "embedding size"})
    layers: int = field(default=3, metadata={"help": "LightGCN propagation layers"})
    epochs: int = field(default=300, metadata={
        "help": "epoch cap: no method's best epoch should come near it (a capped run is flagged)"})
    batch_size: int = field(default=2048, metadata={"help": "training pairs per batch"})
    lr: float = field(default=5e-3, metadata={
        "help": "Adam learning rate (1e-3 converges very slowly for LightGCN on ml-100k)"})
    l2: float = field(default=1e-4, metadata={
        "help": "weight of the L2 term on the batch's layer-0 embeddings (sum of squares / batch)"})
    loss: str = field(default="bpr", metadata={"help": "pairwise loss: bpr or hinge"})
    margin: float = field(default=0.3, metadata={"help": "hinge margin (loss=hinge)"})
    sampler: str = field(default="rns", metadata={
        "help": "sampler (hnlm.cf.samplers) when train() gets no sampler object; `hnlm train --config` "
                "takes it as the method"})
    sampler_opts: dict = field(default_factory=dict, metadata={
        "help": "the method's settings changed from their defaults (as `--set`)"})
    patience: int = field(default=20, metadata={
        "help": "evaluations without improvement of `metric` on valid before stopping"})
    eval_every: int = field(default=1, metadata={"help": "epochs between validation evaluations"})
    metric: str = field(default="recall@20", metadata={"help": "validation metric that selects the epoch"})
    ks: list = field(default_factory=lambda: [10, 20, 50], metadata={"help": "cut-offs K of the reported metrics"})
    eval_batch_size: int = field(default=1024, metadata={"help": "users per full-ranking batch"})
    seed: int = field(default=0, metadata={"help": "seed of the initialisation and the sampling"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu or cuda"})

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "TrainConfig":
        values = tomllib.loads(Path(path).read_text())
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown training settings {sorted(unknown)}")
        return cls(**{**values, **overrides})
