"""scikit-learn's bundled 8x8 handwritten digits: the default source, works offline."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import numpy as np

from compalign.data.raw import RawDataset
from compalign.data.sources.base import DataSource


def load(params: Any) -> RawDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): the test set of
    the UCI Optical Recognition of Handwritten Digits data (Alpaydin & Kaynak 1998); offline."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are counts 0..16 of an 4x4 block; scale to the usual 0..255 range.
    pixels = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    count = len(bunch.target)
    return RawDataset(
        ids=np.array([f"digits-{index:04d}" for index in range(count)]),
        labels=bunch.target.astype(np.int64),
        class_names=[str(name) for name in bunch.target_names],
        load_images=lambda indices: pixels[indices],
    )


def fingerprint(params: Any) -> dict[str, Any]:
    """The data ships inside scikit-learn's wheel: its version stands for the files."""
    return {"scikit-learn": version("scikit-learn")}


SOURCE = DataSource(load=load, bundled=True, fingerprint_files=fingerprint, num_classes=10)
