"""Offline datasets: Fashion-MNIST (local IDX files), sklearn digits, MNIST-1D."""

from sparsenets.data.base import Dataset
from sparsenets.data.registry import DATASETS, batches, load_dataset

__all__ = ["DATASETS", "Dataset", "batches", "load_dataset"]
