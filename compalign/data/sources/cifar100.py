"""CIFAR-100: 60,000 32x32 colour images in 100 fine classes (Krizhevsky 2009)."""

from __future__ import annotations

from typing import Any

from compalign.data.sources._torchvision import TRAIN_FLAG, load_arrays
from compalign.data.raw import RawDataset
from compalign.data.sources.base import DataSource

REQUIRED = ("cifar-100-python",)


def load(params: Any) -> RawDataset:
    """CIFAR-100 (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images"):
    torchvision's `cifar-100-python` folder under data.root; fine labels, official split."""
    return load_arrays(params, "cifar100", "CIFAR100", REQUIRED, TRAIN_FLAG)


SOURCE = DataSource(
    load=load, required=REQUIRED, hint="put the official CIFAR100 files there", num_classes=100
)
