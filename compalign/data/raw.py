"""What a data source gives: its examples before splitting (the one type that the sources and the
splits, compalign.data.sources and compalign.data.splits, share)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class RawDataset:
    """A source's examples before splitting; images are loaded only for the rows that are kept."""

    ids: np.ndarray  # str [N], stable across runs
    labels: np.ndarray  # int64 [N]
    class_names: list[str]
    load_images: Callable[[np.ndarray], np.ndarray]  # indices -> uint8 [n, H, W, C]
    official_split: np.ndarray | None = None  # str [N] in SPLITS, where the source defines one
    groups: pd.DataFrame = field(default_factory=pd.DataFrame)  # one column per group attribute
    skipped_unreadable: int = 0  # files left out because they could not be read
