"""CelebA: 202,599 aligned celebrity faces with 40 binary attributes (Liu et al. 2015)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from compalign.data.sources.base import (
    DataSource,
    RawDataset,
    hashed_files,
    listed_files,
    load_pil,
    not_found,
)
from compalign.errors import UserError

IMAGES = "celeba/img_align_celeba"
HINT = "put img_align_celeba/ and the list_*.txt files there (torchvision.datasets.CelebA layout)"
# the lists that set the labels, groups and splits (torchvision also reads, and needs, the others)
LISTS = ("celeba/list_attr_celeba.txt", "celeba/list_eval_partition.txt")


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


def fingerprint(params: Any) -> dict[str, Any]:
    """The sha256 of the attribute and partition lists, and the image folder's files with size
    and modification time (not hashed: reading 200,000 images per cache key costs too much)."""
    root = Path(params.root)
    return {"lists": hashed_files(root, LISTS), "images": listed_files(root, IMAGES)}


SOURCE = DataSource(
    load=load,
    required=(IMAGES, "celeba/list_attr_celeba.txt"),
    hint=HINT,
    fingerprint_files=fingerprint,
    num_classes=2,  # a binary attribute is the label
)
