"""Tiny stage inputs for the tests of the stage tasks: a 20-per-split digits subset and a 1-epoch
small CNN, made by the stage functions themselves in a store of their own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compalign.config import AlignParams, ReferenceParams

TINY_DATA = {"source": "digits", "limit": 20}
BATCH_SIZE = 64  # one batch per epoch of the 20 training examples


def reference_settings(**changes: Any) -> dict[str, Any]:
    """A `reference` params section: small_cnn, one epoch."""
    return ReferenceParams(epochs=1, batch_size=BATCH_SIZE, **changes).model_dump()


def training_settings(**changes: Any) -> dict[str, Any]:
    """The `training` argument of the align stage: one epoch."""
    return AlignParams(epochs=1, batch_size=BATCH_SIZE, **changes).training_settings()


@contextlib.contextmanager
def stage_store(directory: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """`directory` as the working directory (store entries are relative to it), without
    --refresh; yields the prepared data and reference artifacts made there."""
    from tasks.data import prepare
    from tasks.train import train_reference

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(directory)
        patch.delenv("COMPALIGN_REFRESH", raising=False)
        data = prepare(TINY_DATA)
        yield data, train_reference(data, reference_settings(), "cpu")


def must_not_run(*_args: Any, **_kwargs: Any) -> None:
    """Stands in for the work of a stage whose store entry must be reused, not rebuilt."""
    raise AssertionError("a finished store entry was rebuilt")
