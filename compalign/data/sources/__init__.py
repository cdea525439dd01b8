"""The registry of data sources: one module per dataset, one line below each.

A source module defines its loader and `SOURCE`, the DataSource entry that says what the loader
needs under `data.root` and how to fingerprint it. Adding a dataset is one module here, one line
in SOURCES and one test in tests/test_data_sources.py.
"""

from __future__ import annotations

from typing import Any

from compalign.data.sources import (
    celeba,
    cifar10,
    cifar100,
    digits,
    fashionmnist,
    imagefolder,
    mnist,
    svhn,
)
from compalign.data.sources.base import DataSource
from compalign.errors import UserError

SOURCES: dict[str, DataSource] = {
    "digits": digits.SOURCE,
    "cifar10": cifar10.SOURCE,
    "cifar100": cifar100.SOURCE,
    "mnist": mnist.SOURCE,
    "fashionmnist": fashionmnist.SOURCE,
    "svhn": svhn.SOURCE,
    "celeba": celeba.SOURCE,
    "imagefolder": imagefolder.SOURCE,
}

# What each source with a fixed layout needs under data.root, and how to get it (from the entries)
REQUIRED_FILES: dict[str, tuple[tuple[str, ...], str]] = {
    name: (source.required, source.hint) for name, source in SOURCES.items() if source.required
}


def check_available(params: Any) -> None:
    """Refuse, before anything runs (nothing written yet), a source whose files are not under
    data.root (downloading off), data with fewer than two classes, and `data.label_groups` or
    `data.rare_classes` naming labels the data does not have."""
    source = SOURCES[params.source]
    source.check_available(params)
    count = source.classes(params)
    if count is None:
        return
    if count < 2:
        raise UserError(
            f"data.source={params.source}: the data at {params.root} has {count} class; "
            "a classifier needs at least two (one sub-folder of images per class)"
        )
    for key, labels in [
        *((f"label_groups.{name}", members) for name, members in params.label_groups.items()),
        ("rare_classes", params.rare_classes),
    ]:
        unknown = sorted(set(labels) - set(range(count)))
        if unknown:
            raise UserError(
                f"data.{key}: labels {unknown} are not classes of {params.source} "
                f"(it has {count}: 0..{count - 1})"
            )


def fingerprint(params: Any) -> dict[str, Any]:
    """The files `data.source` reads under data.root, as JSON-serialisable content for the
    prepare stage's cache key."""
    return SOURCES[params.source].fingerprint(params)
