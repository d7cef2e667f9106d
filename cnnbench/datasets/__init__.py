"""Datasets: the interface, parsers and built-in datasets.

A plugin adds an official-files dataset by subclassing ``FileDataset`` (declaring its
``CanonicalFile`` checksums, ``Download`` URLs and a ``parse``) and registering an instance
through the ``register_datasets`` hook; ``cnnbench.datasets.testing`` builds small test files.
"""

from cnnbench.datasets.base import Dataset, DatasetArrays
from cnnbench.datasets.checksums import CanonicalFile, ChecksumError
from cnnbench.datasets.files import Download, FileDataset

__all__ = ["CanonicalFile", "ChecksumError", "Dataset", "DatasetArrays", "Download", "FileDataset"]
