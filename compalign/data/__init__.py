"""Dataset sources, deterministic splits, and the prepared Parquet format.

`compalign.data.sources` is the registry of sources (one module per dataset);
`compalign.data.splits` splits a source's examples; `compalign.data.prepared` writes and reads the
prepared Parquet file with its manifest.
"""

from compalign.data.prepared import (
    DATASET_FILE,
    MANIFEST_FILE,
    Split,
    build_table,
    load_split,
    read_manifest,
    write_prepared,
)
from compalign.data.sources import REQUIRED_FILES, SOURCES, check_available, fingerprint
from compalign.data.raw import RawDataset
from compalign.data.sources.base import DataSource
from compalign.data.splits import SPLITS, assign_splits

__all__ = [
    "DATASET_FILE",
    "MANIFEST_FILE",
    "REQUIRED_FILES",
    "SOURCES",
    "SPLITS",
    "DataSource",
    "RawDataset",
    "Split",
    "assign_splits",
    "build_table",
    "check_available",
    "fingerprint",
    "load_split",
    "read_manifest",
    "write_prepared",
]
