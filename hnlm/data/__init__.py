"""Datasets: registry and presets, raw-format readers, filtering, splits and the Interactions object."""

from hnlm.data.interactions import Interactions, first_users
from hnlm.data.registry import PRESETS, dataset_names, load_dataset

__all__ = ["Interactions", "PRESETS", "dataset_names", "first_users", "load_dataset"]
