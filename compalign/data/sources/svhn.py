"""SVHN: cropped 32x32 house-number digits from Street View images (Netzer et al. 2011)."""

from __future__ import annotations

from typing import Any

from compalign.data.sources._torchvision import load_arrays
from compalign.data.raw import RawDataset
from compalign.data.sources.base import DataSource

REQUIRED = ("train_32x32.mat", "test_32x32.mat")


def load(params: Any) -> RawDataset:
    """SVHN cropped digits (Netzer et al. 2011, "Reading Digits in Natural Images with
    Unsupervised Feature Learning"): `train_32x32.mat` and `test_32x32.mat` under data.root."""
    splits = {"train": {"split": "train"}, "test": {"split": "test"}}
    return load_arrays(params, "svhn", "SVHN", REQUIRED, splits, channels_first=True)


SOURCE = DataSource(
    load=load, required=REQUIRED, hint="put the official SVHN files there", num_classes=10
)
