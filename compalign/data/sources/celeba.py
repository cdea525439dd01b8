"""CelebA: 202,599 aligned celebrity faces with 40 binary attributes (Liu et al. 2015)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import torch
from pydantic import BeforeValidator

from compalign.data.raw import RawDataset
from compalign.data.sources.base import (
    DataSource,
    hashed_files,
    listed_files,
    load_pil,
    not_found,
)
from compalign.errors import UserError
from compalign.options import Options

IMAGES = "celeba/img_align_celeba"
HINT = "put img_align_celeba/ and the list_*.txt files there (torchvision.datasets.CelebA layout)"
# the lists that set the labels, groups and splits (torchvision also reads, and needs, the others)
LISTS = ("celeba/list_attr_celeba.txt", "celeba/list_eval_partition.txt")


TARGET = "Blond_Hair"  # Meyer & Wong's label (their datasets/helpers.py get_celebA_data)


def _null_is_the_default(value: Any) -> Any:
    # params files written before the default was a value said `target: null` for it
    return TARGET if value is None else value


class CelebAOptions(Options):
    """Which of CelebA's 40 attributes is the label."""

    target: Annotated[str, BeforeValidator(_null_is_the_default)] = TARGET
    """celeba only: the attribute used as the label"""


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
            if (root / IMAGES).is_dir():  # the files are there: say what is wrong with them
                check_lists(root)
            raise not_found(
                "celeba",
                root / "celeba",
                f"{HINT} or rerun with data.download=true on a machine with internet",
            ) from error
    attr_names = [name for name in parts["train"].attr_names if name]
    target = params.target
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


# Every list torchvision reads: (file, header lines, values per row or None: from the header,
# the values allowed or None: any integer)
LIST_FORMATS = (
    ("celeba/list_attr_celeba.txt", 2, None, {"-1", "1"}),
    ("celeba/list_eval_partition.txt", 0, 1, {"0", "1", "2"}),
    ("celeba/identity_CelebA.txt", 0, 1, None),
    ("celeba/list_bbox_celeba.txt", 2, None, None),
    ("celeba/list_landmarks_align_celeba.txt", 2, None, None),
)


def check_lists(root: Path) -> None:
    """Each list file read as torchvision reads it (space-separated rows: an image file name,
    then integers), with a message naming the file and the line of the first bad row; then
    their md5 against the published files (torchvision refuses any other as "not found")."""
    from torchvision.datasets import celeba

    for name, header, width, allowed in LIST_FORMATS:
        path = root / name
        if not path.is_file():
            raise not_found("celeba", path, HINT)
        _check_list(path, header, width, allowed)
    digests = {file: md5 for _, md5, file in celeba.CelebA.file_list}
    for name, *_ in LIST_FORMATS:
        if not celeba.check_integrity(str(root / name), digests[Path(name).name]):
            raise UserError(
                f"{root / name}: well-formed, but not the published CelebA file (its md5 "
                "differs), which torchvision's reader refuses; use the files of the release"
            )


def _check_list(path: Path, header: int, width: int | None, allowed: set[str] | None) -> None:
    def bad(number: int, why: str) -> UserError:
        return UserError(f"{path}:{number}: {why}; the file is not a CelebA list")

    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()
    if header:
        if not lines or not lines[0].strip().isdigit():
            raise bad(1, "expected the number of rows")
        declared = int(lines[0])
        if len(lines) < 2 or not lines[1].split():
            raise bad(2, "expected the column names")
        width = len(lines[1].split())
        rows = lines[2:]
        if len([row for row in rows if row.strip()]) != declared:
            raise bad(1, f"declares {declared} rows, the file has {len(rows)}")
    else:
        rows = lines
    for number, row in enumerate(rows, start=header + 1):
        fields = row.split()
        if not fields:
            continue
        values = fields[1:]
        if len(values) != width:
            raise bad(number, f"{len(values)} values after the file name, expected {width}")
        for value in values:
            if allowed is not None and value not in allowed:
                raise bad(number, f"value {value[:20]!r}, expected one of {sorted(allowed)}")
            if allowed is None and not value.lstrip("-").isdigit():
                raise bad(number, f"value {value[:20]!r} is not an integer")


def check(params: Any) -> None:
    """Before anything runs: the image folder and every list torchvision reads are there, and
    the lists are well-formed (file and line named) and the published ones."""
    root = Path(params.root)
    if not (root / IMAGES).is_dir():
        raise not_found("celeba", root / IMAGES, HINT)
    check_lists(root)


SOURCE = DataSource(
    load=load,
    required=(IMAGES, *(name for name, *_ in LIST_FORMATS)),  # everything torchvision reads
    hint=HINT,
    check_files=check,
    fingerprint_files=fingerprint,
    num_classes=2,  # a binary attribute is the label
    options=CelebAOptions,
)
