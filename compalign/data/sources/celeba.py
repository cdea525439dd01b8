"""CelebA: 202,599 aligned celebrity faces with 40 binary attributes (Liu et al. 2015)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from compalign.data.sources.base import DataSource, RawDataset, load_pil, not_found
from compalign.errors import UserError

IMAGES = "celeba/img_align_celeba"
HINT = "put img_align_celeba/ and the list_*.txt files there (torchvision.datasets.CelebA layout)"


def load(params: Any) -> RawDataset:
    """CelebA aligned faces (Liu, Luo, Wang & Tang 2015, "Deep Learning Face Attributes in the
    Wild"): label = attribute `data.target`, groups = all 40.

    Reads torchvision's `celeba` folder (img_align_celeba/ and the list_*.txt files) under
    data.root; official train/valid/test partition.
    """
    import torchvision

    root = Path(params.root)
    parts = {}
    for split_name, official in (("train", "train"), ("val", "valid"), ("test", "test")):
        try:
            parts[split_name] = torchvision.datasets.CelebA(
                str(root), split=official, target_type="attr", download=params.download
            )
        except RuntimeError as error:
            raise not_found(
                "celeba",
                root / "celeba",
                f"{HINT} or rerun with data.download=true on a machine with internet",
            ) from error
    attr_names = [name for name in parts["train"].attr_names if name]
    target = params.target or "Blond_Hair"
    if target not in attr_names:
        raise UserError(
            f"data.target: {target!r} is not a CelebA attribute; choose one of {attr_names}"
        )
    filenames = [name for part in parts.values() for name in part.filename]
    attrs = torch.cat([part.attr for part in parts.values()]).numpy().astype(np.int64)
    groups = pd.DataFrame(attrs, columns=attr_names)
    folder = root / IMAGES
    image_size = params.image_size or 64
    return RawDataset(
        ids=np.array([f"celeba-{Path(name).stem}" for name in filenames]),
        labels=groups[target].to_numpy(),
        class_names=[f"not {target}", target],
        load_images=lambda indices: load_pil(
            [str(folder / filenames[i]) for i in indices], image_size, "RGB"
        ),
        official_split=np.concatenate([np.full(len(part), name) for name, part in parts.items()]),
        groups=groups,
    )


SOURCE = DataSource(load=load, required=(IMAGES, "celeba/list_attr_celeba.txt"), hint=HINT)
