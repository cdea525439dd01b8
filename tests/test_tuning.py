"""Weight tuning on the validation split: candidates and the selection rule."""

from __future__ import annotations

import pandas as pd
import torch

from compalign import tuning
from compalign.compressors import COMPRESSORS
from compalign.data import Split
from compalign.losses import LOSSES
from compalign.models import build_model
from compalign.train import TrainConfig, fit


def test_candidates_start_with_the_configured_weights():
    configured = {"gamma": 5.0, "m": 0.75}
    found = tuning.candidates("pw", configured)
    assert found[0] == configured
    assert {"gamma": 2.0, "m": 0.75} in found and len(found) == len({str(c) for c in found})
    assert tuning.candidates("ce", {}) == [{}]


def split(seed, count=48):
    generator = torch.Generator().manual_seed(seed)
    return Split(
        images=torch.randint(0, 256, (count, 1, 8, 8), dtype=torch.uint8, generator=generator),
        labels=torch.arange(count) % 4,
        example_ids=[str(i) for i in range(count)],
        mean=torch.zeros(1, 1, 1, 1),
        std=torch.ones(1, 1, 1, 1) * 255,
        groups=pd.DataFrame(),
    )


def test_tuning_picks_fewest_val_mismatches_at_no_lower_accuracy():
    reference = build_model("small_cnn", 4, 1, 8, seed=0).eval()
    pruned = COMPRESSORS["magnitude_global"](build_model("small_cnn", 4, 1, 8, seed=0), 0.9)
    state = {k: v.clone() for k, v in pruned.state_dict().items()}

    def make():
        model = COMPRESSORS["magnitude_global"](build_model("small_cnn", 4, 1, 8, seed=0), 0.9)
        model.load_state_dict(state)
        return model

    train, val = split(1), split(2)

    def train_candidate(loss_fn, on_epoch):
        config = TrainConfig(epochs=1, batch_size=16, lr=0.05)
        return fit(make(), train, config, loss_fn, reference, on_epoch=on_epoch)

    model, chosen, table = tuning.tune_loss(
        train_candidate, reference, val, "pw", {"gamma": 5.0, "m": 0.75}
    )
    assert list(table.columns[:2]) == ["gamma", "m"] and table.chosen.sum() == 1
    winner = table[table.chosen].iloc[0]
    assert winner.val_accuracy >= table.val_accuracy.iloc[0]
    eligible = table[table.val_accuracy >= table.val_accuracy.iloc[0]]
    assert winner.val_mismatches == eligible.val_mismatches.min()
    assert chosen == {"gamma": float(winner.gamma), "m": float(winner.m)}
    assert isinstance(model, torch.nn.Module)


def test_a_budget_gives_every_loss_as_many_candidates():
    """Joseph et al.'s comparison with tuning on: ce (no grid) and kd get as many fine-tunings
    as label_preserving, the extra ones the configured weights from other seeds."""
    configured = {loss: LOSSES[loss].defaults() for loss in ("ce", "kd", "label_preserving")}
    budget = tuning.tune_budget(configured)
    assert budget == len(tuning.candidates("label_preserving", configured["label_preserving"]))
    for loss, values in configured.items():
        runs = tuning.candidate_runs(loss, values, budget)
        assert len(runs) == budget and runs[0] == (values, 0)
        assert [offset for _, offset in runs if offset] == list(
            range(1, budget - len(tuning.candidates(loss, values)) + 1)
        )
    assert tuning.candidate_runs("ce", {}) == [({}, 0)]  # no budget: the grid alone
    assert tuning.tunable("ce", budget) and not tuning.tunable("ce")


def test_tuning_with_a_budget_fine_tunes_the_repeats_from_other_seeds():
    reference = build_model("small_cnn", 4, 1, 8, seed=0).eval()
    val = split(2)
    seeds = []

    def train_candidate(loss_fn, on_epoch, seed_offset=0):
        seeds.append(seed_offset)
        return build_model("small_cnn", 4, 1, 8, seed=seed_offset).eval()

    _, chosen, table = tuning.tune_loss(train_candidate, reference, val, "ce", {}, budget=3)
    assert seeds == [0, 1, 2] and table.seed_offset.tolist() == [0, 1, 2]
    assert chosen == {} and table.chosen.sum() == 1
    winner = table[table.chosen].iloc[0]
    assert (
        winner.val_mismatches
        == table[table.val_accuracy >= table.val_accuracy[0]].val_mismatches.min()
    )
