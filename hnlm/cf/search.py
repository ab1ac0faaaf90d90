"""Search spaces of the tuning protocol: the CF training axes shared by every method (learning rate, batch size)
and the `Axis` type each method declares its own key settings with (`hnlm.methods.Method.search`).

An axis lists the values tried first, in increasing order. When the best value sits at an edge, the tuner widens
the axis one step beyond it (`Axis.beyond`: the ratio of the two edge values again), up to the axis' bounds, so no
chosen value is an untested edge unless it is a bound (recorded as such in the tuning table).

The learning rate also sets how often a run is validated: lr-scaled patience (`lr_protocol`). At lr 1e-3 a
LightGCN run on ml-100k plateaus early and slowly (a run with patience 20 epochs stopped at epoch 44 at valid
recall@20 0.25, far from its peak); validating every `LR_REFERENCE / lr` epochs makes the patience and the cap
count the same amount of learning at every learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass

LR_REFERENCE = 5e-3      # at or above this learning rate a run is validated every epoch


@dataclass(frozen=True)
class Axis:
    values: tuple            # tried first, increasing
    low: float | None = None     # widening never goes below / above these
    high: float | None = None

    def __post_init__(self):
        if list(self.values) != sorted(self.values) or len(set(self.values)) != len(self.values):
            raise ValueError(f"axis values must increase: {self.values}")

    @property
    def integer(self) -> bool:
        return all(isinstance(v, int) for v in self.values)

    def beyond(self, tried: list, best) -> object | None:
        """The next value past `best` when it is the smallest or largest of `tried` (else None): one more step of
        the ratio between the two outermost values on that side, clipped to the bounds; None at a bound."""
        tried = sorted(tried)
        if len(tried) < 2 or best not in (tried[0], tried[-1]):
            return None
        inner = tried[1] if best == tried[0] else tried[-2]
        value = best * best / inner
        value = max(value, self.low) if self.low is not None else value
        value = min(value, self.high) if self.high is not None else value
        value = int(round(value)) if self.integer else float(f"{value:.3g}")
        return None if value in tried else value


SHARE = Axis((0.25, 0.5, 0.75), low=0.05, high=1.0)     # a share of the training pairs a method acts on
ALPHA = Axis((0.01, 0.05, 0.2), low=1e-4, high=1.0)     # module 3's mixing weight of the aligned vector

# The batch axis may widen down to 128 and up to 131072, past a full batch of ml-100k (80,024 training pairs):
# a chosen batch at that upper bound means "as large as the data allows", not an untested edge.
TRAIN_SEARCH = {"lr": Axis((1e-3, 5e-3, 2e-2), low=1e-4, high=1e-1),
                "batch_size": Axis((2048, 8192), low=128, high=131072)}


def lr_protocol(lr: float, cap: int) -> dict:
    """Validation interval and epoch cap of a run at learning rate `lr`: every max(1, round(LR_REFERENCE / lr))
    epochs, so `patience` (in validations) and the cap `cap` (in validation intervals) scale with 1 / lr."""
    every = max(1, round(LR_REFERENCE / lr))
    return {"eval_every": every, "epochs": cap * every}
