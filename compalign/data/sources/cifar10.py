"""CIFAR-10: 60,000 32x32 colour images in 10 classes (Krizhevsky 2009)."""

from __future__ import annotations

from typing import Any

from compalign.data.sources._torchvision import TRAIN_FLAG, load_arrays
from compalign.data.raw import RawDataset
from compalign.data.sources.base import DataSource

REQUIRED = ("cifar-10-batches-py",)


def load(params: Any) -> RawDataset:
    """CIFAR-10 (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images"):
    torchvision's `cifar-10-batches-py` folder under data.root; official train/test split."""
    return load_arrays(params, "cifar10", "CIFAR10", REQUIRED, TRAIN_FLAG)


SOURCE = DataSource(
    load=load, required=REQUIRED, hint="put the official CIFAR10 files there", num_classes=10
)
