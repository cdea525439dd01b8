"""MNIST: 70,000 28x28 greyscale handwritten digits (LeCun et al. 1998)."""

from __future__ import annotations

from typing import Any

from compalign.data.sources._torchvision import TRAIN_FLAG, load_arrays
from compalign.data.raw import RawDataset
from compalign.data.sources.base import DataSource

REQUIRED = ("MNIST/raw",)


def load(params: Any) -> RawDataset:
    """MNIST (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning applied to document
    recognition"): torchvision's `MNIST/raw` idx files under data.root; official split."""
    return load_arrays(params, "mnist", "MNIST", REQUIRED, TRAIN_FLAG)


SOURCE = DataSource(
    load=load, required=REQUIRED, hint="put the official MNIST files there", num_classes=10
)
