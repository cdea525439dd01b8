"""Automatic choice of a loss's weights on the validation split (Joseph et al., 2012.01604,
first version: the weights of the label-preserving loss are tuned automatically).

Each candidate fine-tunes a fresh copy of the compressed model with the same training settings;
the winner leaves the fewest validation mismatches with the reference among the candidates whose
validation accuracy is at least that of the configured weights (ties: higher accuracy, then the
earlier candidate). The configured weights are always candidate 0, so tuning never picks a model
less accurate than the untuned one on the validation split.

With a `budget` (the pipeline passes `tune_budget` of its losses), every loss gets that many
candidates, so a comparison of losses is not a comparison of search sizes: a loss with a smaller
grid (ce has none) fills the rest with its configured weights fine-tuned from other seeds
(align.seed + 1, + 2, ...), chosen by the same rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from torch import nn

from compalign.data import Split
from compalign.losses import LOSSES
from compalign.train import EpochCallback, predict_logits


def tunable(loss: str, budget: int | None = None) -> bool:
    """Whether `align.tune` has anything to try for `loss`: its entry declares a grid, or the
    budget asks for more than one candidate."""
    return bool(LOSSES[loss].tuning_grid) or (budget or 0) > 1


def tune_budget(losses: dict[str, dict[str, Any]]) -> int:
    """The candidates each loss gets when `losses` ({loss: configured hyperparameters}) are tuned
    alike: as many as the loss with the largest grid has."""
    return max(
        (len(candidates(loss, configured)) for loss, configured in losses.items()), default=1
    )


def candidates(loss: str, configured: dict[str, Any]) -> list[dict[str, Any]]:
    """The configured hyperparameters, then each grid override applied on top (duplicates
    dropped). A loss without a grid (ce) has the configured candidate only. The grids are the
    losses' own (`tuning_grid` of each entry in compalign.losses)."""
    found = [dict(configured)]
    for override in LOSSES[loss].tuning_grid:
        candidate = {**configured, **override}
        if candidate not in found:
            found.append(candidate)
    return found


def candidate_runs(
    loss: str, configured: dict[str, Any], budget: int | None = None
) -> list[tuple[dict[str, Any], int]]:
    """(hyperparameters, seed offset) of each fine-tuning the search runs: the grid's
    candidates (offset 0), then, up to `budget`, the configured ones at offsets 1, 2, ..."""
    runs = [(candidate, 0) for candidate in candidates(loss, configured)]
    runs += [(dict(configured), offset) for offset in range(1, (budget or 0) - len(runs) + 1)]
    return runs


def tune_loss(
    train_candidate: Callable[..., nn.Module],
    reference: nn.Module,
    val: Split,
    loss: str,
    configured: dict[str, Any],
    device: torch.device | str = "cpu",
    on_candidate: Callable[[int, dict[str, Any]], EpochCallback | None] | None = None,
    budget: int | None = None,
) -> tuple[nn.Module, dict[str, Any], pd.DataFrame]:
    """Fine-tune one model per candidate with `train_candidate(loss_fn, on_epoch)` (and
    `seed_offset=k` for a budget's repeated candidates); return the chosen model, its
    hyperparameters and the search table (one row per candidate: hyperparameters,
    val_mismatches, val_accuracy, seed_offset, chosen)."""
    reference_predictions = predict_logits(reference, val, device=device).argmax(1)
    rows, models = [], []
    for index, (hyperparameters, offset) in enumerate(candidate_runs(loss, configured, budget)):
        on_epoch = on_candidate(index, hyperparameters) if on_candidate else None
        extra = {"seed_offset": offset} if offset else {}
        model = train_candidate(LOSSES[loss](**hyperparameters), on_epoch, **extra)
        predictions = predict_logits(model, val, device=device).argmax(1)
        rows.append(
            {
                **hyperparameters,
                "val_mismatches": int((predictions != reference_predictions).sum()),
                "val_accuracy": float((predictions == val.labels).float().mean()),
                "seed_offset": offset,
            }
        )
        models.append(model)
    table = pd.DataFrame(rows)
    floor = table.loc[0, "val_accuracy"]
    eligible = table[table.val_accuracy >= floor]
    best = eligible.sort_values(
        ["val_mismatches", "val_accuracy"], ascending=[True, False], kind="stable"
    ).index[0]
    table["chosen"] = table.index == best
    chosen = {key: table.loc[best, key] for key in configured}
    chosen = {key: type(configured[key])(value) for key, value in chosen.items()}
    return models[best], chosen, table
