"""Automatic choice of a loss's weights on the validation split (Joseph et al., 2012.01604,
first version: the weights of the label-preserving loss are tuned automatically).

Each candidate fine-tunes a fresh copy of the compressed model with the same training settings;
the winner leaves the fewest validation mismatches with the reference among the candidates whose
validation accuracy is at least that of the configured weights (ties: higher accuracy, then the
earlier candidate). The configured weights are always candidate 0, so tuning never picks a model
less accurate than the untuned one on the validation split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from torch import nn

from compalign.data import Split
from compalign.losses import LOSSES, LossFn
from compalign.train import EpochCallback, predict_logits


def tunable(loss: str) -> bool:
    """Whether `align.tune` has anything to try for `loss` (its entry declares a grid)."""
    return bool(LOSSES[loss].tuning_grid)


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


def tune_loss(
    train_candidate: Callable[[LossFn, EpochCallback | None], nn.Module],
    reference: nn.Module,
    val: Split,
    loss: str,
    configured: dict[str, Any],
    device: torch.device | str = "cpu",
    on_candidate: Callable[[int, dict[str, Any]], EpochCallback | None] | None = None,
) -> tuple[nn.Module, dict[str, Any], pd.DataFrame]:
    """Fine-tune one model per candidate with `train_candidate(loss_fn, on_epoch)`; return the
    chosen model, its hyperparameters and the search table (one row per candidate:
    hyperparameters, val_mismatches, val_accuracy, chosen)."""
    reference_predictions = predict_logits(reference, val, device=device).argmax(1)
    rows, models = [], []
    for index, hyperparameters in enumerate(candidates(loss, configured)):
        on_epoch = on_candidate(index, hyperparameters) if on_candidate else None
        model = train_candidate(LOSSES[loss](**hyperparameters), on_epoch)
        predictions = predict_logits(model, val, device=device).argmax(1)
        rows.append(
            {
                **hyperparameters,
                "val_mismatches": int((predictions != reference_predictions).sum()),
                "val_accuracy": float((predictions == val.labels).float().mean()),
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
