"""The loader shared by torchvision's datasets whose pixels sit in memory as `.data`: CIFAR-10,
CIFAR-100, MNIST, Fashion-MNIST and SVHN. Each of them has its own module and registry entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from compalign.data.raw import RawDataset
from compalign.data.sources.base import not_found

# torchvision's constructor arguments for the official splits, train first
TRAIN_FLAG = {"train": {"train": True}, "test": {"train": False}}


def load_arrays(
    params: Any,
    source: str,
    cls_name: str,
    files: tuple[str, ...],
    splits: dict[str, dict[str, Any]],
    channels_first: bool = False,
) -> RawDataset:
    """Read `torchvision.datasets.<cls_name>` under data.root, one part per official split;
    `files` are what it reads (named when they are missing), `channels_first` for [N, C, H, W]
    pixels (SVHN)."""
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    root = Path(params.root)
    parts = []
    for split_name, kwargs in splits.items():
        try:
            dataset = cls(str(root), download=params.download, **kwargs)
        except RuntimeError as error:
            raise not_found(
                source,
                ", ".join(str(root / name) for name in files),
                f"put the official {cls_name} files there (torchvision.datasets.{cls_name} layout) "
                "or rerun with data.download=true on a machine with internet",
            ) from error
        data = dataset.data
        data = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        if data.ndim == 3:  # MNIST-like: [N, H, W]
            data = data[..., None]
        elif channels_first:  # [N, C, H, W]
            data = data.transpose(0, 2, 3, 1)
        targets = getattr(dataset, "targets", None)
        if targets is None:
            targets = dataset.labels
        targets = np.asarray(targets.numpy() if isinstance(targets, torch.Tensor) else targets)
        parts.append((split_name, np.ascontiguousarray(data, dtype=np.uint8), targets))
        class_names = list(getattr(dataset, "classes", [str(c) for c in range(10)]))

    pixels = np.concatenate([part[1] for part in parts])
    return RawDataset(
        ids=np.array(
            [
                f"{source}-{name}-{index:06d}"
                for name, data, _ in parts
                for index in range(len(data))
            ]
        ),
        labels=np.concatenate([part[2] for part in parts]).astype(np.int64),
        class_names=class_names,
        load_images=lambda indices: pixels[indices],
        official_split=np.concatenate([np.full(len(part[1]), part[0]) for part in parts]),
    )
