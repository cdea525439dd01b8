"""Weight tuning on the validation split: candidates and the selection rule."""

from __future__ import annotations

import pandas as pd
import torch

from compalign import tuning
from compalign.compressors import COMPRESSORS
from compalign.data import Split
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
