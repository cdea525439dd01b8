"""Fashion-MNIST: 70,000 28x28 greyscale images of clothing in 10 classes (Xiao et al. 2017)."""

from __future__ import annotations

from typing import Any

from compalign.data.sources._torchvision import TRAIN_FLAG, load_arrays
from compalign.data.raw import RawDataset
from compalign.data.sources.base import DataSource

REQUIRED = ("FashionMNIST/raw",)


def load(params: Any) -> RawDataset:
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747): torchvision's
    `FashionMNIST/raw` idx files under data.root; official split."""
    return load_arrays(params, "fashionmnist", "FashionMNIST", REQUIRED, TRAIN_FLAG)


SOURCE = DataSource(
    load=load, required=REQUIRED, hint="put the official FashionMNIST files there", num_classes=10
)
