"""Datasets: registry and presets, your own data (raw files, RecBole atomic files, published splits), readers,
filtering, splits, sanity checks and the Interactions object."""

from hnlm.data.interactions import Interactions, first_users
from hnlm.data.registry import OWN_SOURCES, PRESETS, Filters, dataset_names, load_dataset

__all__ = ["Filters", "Interactions", "OWN_SOURCES", "PRESETS", "dataset_names", "first_users", "load_dataset"]
