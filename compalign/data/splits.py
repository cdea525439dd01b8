"""Deterministic splits of a source's examples: train/val/test stratified by label and seeded by
`data.seed`, rare classes thinned, each split capped at `data.limit`, and the checks they must pass
before any image is read (`plan_table`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from compalign.data.raw import RawDataset
from compalign.errors import UserError

SPLITS = ("train", "val", "test")


def _stratified_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..len(labels)-1 into (rest, taken) with `fraction` of each class taken."""
    taken = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        taken.append(members[: int(round(fraction * len(members)))])
    taken_positions = np.sort(np.concatenate(taken)) if taken else np.array([], dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), taken_positions)
    return rest, taken_positions


def assign_splits(raw: RawDataset, params: Any) -> np.ndarray:
    """train/val/test per example, deterministic from `data.seed`, stratified by label.

    The source's own test split is kept where it has one; val is then drawn from its train part.
    """
    rng = np.random.default_rng(params.seed)
    split = np.empty(len(raw.labels), dtype=object)
    if raw.official_split is None:
        pool = np.arange(len(raw.labels))
        rest, test = _stratified_split(raw.labels, params.test_fraction, rng)
        split[pool[test]] = "test"
        pool = pool[rest]
    else:
        split[:] = raw.official_split
        pool = np.flatnonzero(raw.official_split == "train")
    if raw.official_split is None or not (raw.official_split == "val").any():
        # val is a fraction of the whole dataset, taken from what is left for training
        left = len(pool)
        fraction = min(1.0, params.val_fraction * len(raw.labels) / max(left, 1))
        rest, val = _stratified_split(raw.labels[pool], fraction, rng)
        split[pool[val]] = "val"
        split[pool[rest]] = "train"
    return split.astype(str)


def _make_rare(
    split: np.ndarray, labels: np.ndarray, rare: list[int], fraction: float, seed: int
) -> np.ndarray:
    """Keep a seeded `fraction` of each rare class's training examples; the others leave the
    dataset (marked "dropped"). Validation and test splits keep every class, so the audit sees
    how a model trained on few examples of a group treats it (Meyer & Wong's imbalanced CIFAR-10)."""
    rng = np.random.default_rng(seed + 2)
    split = split.copy()
    for label in rare:
        members = np.flatnonzero((split == "train") & (labels == label))
        if not len(members):
            raise UserError(f"data.rare_classes: class {label} has no training examples")
        drop = rng.choice(
            members, size=len(members) - max(1, int(round(fraction * len(members)))), replace=False
        )
        split[drop] = "dropped"
    return split


def _limit(split: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices kept: at most `limit` per split, a seeded random subset, in original order."""
    rng = np.random.default_rng(seed + 1)
    kept = []
    for name in SPLITS:
        members = np.flatnonzero(split == name)
        if limit is not None and len(members) > limit:
            members = np.sort(rng.choice(members, size=limit, replace=False))
        kept.append(members)
    return np.sort(np.concatenate(kept))


def plan_table(raw: RawDataset, params: Any) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """The checks a source's examples must pass before any image is read (classes, label
    groups, every split non-empty), then (split of every example, indices kept, groups)."""
    if len(raw.labels) == 0:
        raise UserError(
            f"data.source={params.source}: the dataset at {params.root} has no examples"
        )
    if len(raw.class_names) < 2:
        raise UserError(
            f"data.source={params.source}: {len(raw.class_names)} class found at {params.root}; "
            "a classifier needs at least two"
        )
    groups = raw.groups if len(raw.groups.columns) else pd.DataFrame(index=range(len(raw.labels)))
    for name, members in params.label_groups.items():
        # a derived binary group: 1 for examples whose label is one of `members`
        unknown = sorted(set(members) - set(range(len(raw.class_names))))
        if unknown:
            raise UserError(
                f"data.label_groups.{name}: labels {unknown} are not classes of {params.source}"
            )
        groups[name] = np.isin(raw.labels, members).astype(np.int64)
    split = assign_splits(raw, params)
    if params.rare_classes:
        split = _make_rare(
            split, raw.labels, params.rare_classes, params.rare_fraction, params.seed
        )
    kept = _limit(split, params.limit, params.seed)
    for name in SPLITS:
        if not (split[kept] == name).any():
            raise UserError(_empty_split(name, raw, params))
    return split, kept, groups


def _empty_split(name: str, raw: RawDataset, params: Any) -> str:
    """Why split `name` is empty, and what would fill it: the examples are too few for the
    split fractions (data.limit never empties a split: it keeps up to that many of each)."""
    counts = np.bincount(raw.labels, minlength=len(raw.class_names))
    smallest = int(counts.min())
    how = (
        "lower data.val_fraction and data.test_fraction"
        if name == "train"
        else f"raise data.{name}_fraction"
    )
    official = " (its official split)" if raw.official_split is not None else ""
    return (
        f"data: the {name} split is empty: {len(raw.labels)} examples{official}, the smallest "
        f"class {smallest}, are too few for data.val_fraction={params.val_fraction} and "
        f"data.test_fraction={params.test_fraction}; add examples (images per class) or {how}"
    )
