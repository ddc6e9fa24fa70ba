"""medeff.data: the dataset index (scan, validate, folds, fingerprint, leakage guard); see docs/dataset_index.md."""

from medeff.data.index_build import build_index, index_config
from medeff.data.index_types import SCHEMA_VERSION, ArchiveRef, CaseRecord, DatasetIndex
from medeff.data.index_validation import load_index, validate_index

__all__ = [
    "SCHEMA_VERSION",
    "ArchiveRef",
    "CaseRecord",
    "DatasetIndex",
    "build_index",
    "index_config",
    "load_index",
    "validate_index",
]
