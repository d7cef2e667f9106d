"""Datasets: the interface, parsers and built-in datasets."""

from cnnbench.datasets.base import Dataset, DatasetArrays

__all__ = ["Dataset", "DatasetArrays"]
