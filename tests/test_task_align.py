"""tasks/align.py: the `align` stage fine-tunes a compressed model with a loss, once per input;
with `tune`, it first chooses the loss's hyperparameters on the validation split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import tasks.align
from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest
from compalign.config import AlignParams
from compalign.losses import LOSSES
from compalign.losses.label_preserving import TERMS
from compalign.pruning import weight_sparsity
from compalign.tuning import candidates
from tasks.align import TUNING_FILE, align
from tasks.compress import compress
from tiny_stages import must_not_run, stage_store, training_settings

KD = AlignParams().loss_hyperparameters("kd")
PW = AlignParams().loss_hyperparameters("pw")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(data, reference, the reference pruned to 90 % by global magnitude)."""
    with stage_store(tmp_path_factory.mktemp("align")) as (data, reference):
        yield data, reference, compress(None, reference, "magnitude_global", 0.9, {})


def fine_tune(store, loss: str, hyperparameters: dict, tune: bool = False):
    data, reference, compressed = store
    return align(
        data,
        reference,
        compressed,
        "magnitude_global",
        0.9,
        {},
        loss,
        hyperparameters,
        training_settings(),
        "cpu",
        tune=tune,
    )


def test_aligned_checkpoint_records_the_loss_and_keeps_the_sparsity(store):
    aligned = fine_tune(store, "ce", {})
    manifest = read_checkpoint_manifest(aligned["path"])
    assert aligned["path"].startswith("artifacts/align/")
    assert manifest["stage"] == "align"
    assert manifest["loss"] == "ce"
    assert manifest["tuned"] is False
    assert manifest["hyperparameters"] == {}
    assert manifest["compressor"] == "magnitude_global"
    assert manifest["sparsity"] == 0.9
    assert manifest["kind"] == "float"
    # pruned weights stay pruned through fine-tuning
    assert manifest["measured_sparsity"] == pytest.approx(0.9, abs=0.01)
    assert weight_sparsity(load_checkpoint(aligned["path"])) == pytest.approx(
        manifest["measured_sparsity"]
    )
    assert not (Path(aligned["path"]) / TUNING_FILE).exists()


def test_softadapt_weights_are_logged_per_epoch_and_kept_in_the_manifest(store, caplog):
    """label_preserving with SoftAdapt through the stage: each epoch's log line carries the
    weights it trained with, and the checkpoint manifest keeps their trajectory (the audit logs
    it as MLflow metric histories); a fixed loss records none."""
    options = {
        **AlignParams().loss_hyperparameters("label_preserving"),
        "w_logit": 0.1,  # every term active (the default leaves the logit term out)
        "weighting": "softadapt",
        "softadapt_beta": 10.0,
    }
    data, reference, compressed = store
    with caplog.at_level("INFO", logger="compalign"):
        aligned = align(
            data,
            reference,
            compressed,
            "magnitude_global",
            0.9,
            {},
            "label_preserving",
            options,
            {**training_settings(), "epochs": 2},
            "cpu",
        )
    trajectory = read_checkpoint_manifest(aligned["path"])["loss_trajectory"]
    assert set(trajectory) == {f"softadapt.{p}{t}" for p in ("", "w_") for t in TERMS}
    assert all(len(values) == 2 for values in trajectory.values())
    assert trajectory["softadapt.w_logit"][0] == options["w_logit"]
    lines = [r.getMessage() for r in caplog.records if "align label_preserving epoch" in r.message]
    assert len(lines) == 2 and all("softadapt.w_mm=" in line for line in lines)
    fixed = fine_tune(
        store, "label_preserving", AlignParams().loss_hyperparameters("label_preserving")
    )
    assert "loss_trajectory" not in read_checkpoint_manifest(fixed["path"])


def test_same_inputs_reuse_the_aligned_checkpoint(store, monkeypatch):
    aligned = fine_tune(store, "ce", {})
    monkeypatch.setattr(tasks.align, "fine_tune", must_not_run)
    assert fine_tune(store, "ce", {}) == aligned


def test_tune_tries_every_candidate_and_keeps_the_chosen_one(store):
    aligned = fine_tune(store, "kd", KD, tune=True)
    manifest = read_checkpoint_manifest(aligned["path"])
    assert manifest["tuned"] is True
    table = pd.read_csv(Path(aligned["path"]) / TUNING_FILE)
    tried = candidates("kd", KD)
    assert len(table) == len(tried) > 1
    assert table[list(KD)].to_dict("records") == tried  # the configured weights first
    assert {"val_mismatches", "val_accuracy", "chosen"} <= set(table.columns)
    assert table.chosen.sum() == 1
    chosen = table[table.chosen].iloc[0]
    assert manifest["hyperparameters"] == {key: chosen[key] for key in KD}
    # never less accurate on the validation split than the configured weights
    assert chosen.val_accuracy >= table.val_accuracy[0]


def test_align_keeps_the_model_and_hyperparameters_tuning_chose(store, monkeypatch):
    """Which candidate wins a 1-epoch search is up to chance (often the configured one): a
    tuner that always picks the last candidate shows what the stage records."""
    last = candidates("pw", PW)[-1]
    assert last != PW

    def pick_the_last(
        train_candidate, reference, val, loss, configured, device, on_candidate, budget=None
    ):
        model = train_candidate(LOSSES[loss](**last), None)
        return model, last, pd.DataFrame([{**last, "chosen": True}])

    monkeypatch.setattr(tasks.align, "tune_loss", pick_the_last)
    aligned = fine_tune(store, "pw", PW, tune=True)
    manifest = read_checkpoint_manifest(aligned["path"])
    assert manifest["tuned"] is True
    assert manifest["hyperparameters"] == last
    assert pd.read_csv(Path(aligned["path"]) / TUNING_FILE).to_dict("records") == [
        {**last, "chosen": True}
    ]


def test_tune_with_a_loss_without_a_grid_trains_once(store):
    aligned = fine_tune(store, "ce", {}, tune=True)
    assert read_checkpoint_manifest(aligned["path"])["tuned"] is False
    assert not (Path(aligned["path"]) / TUNING_FILE).exists()
    assert aligned["path"] != fine_tune(store, "ce", {})["path"]  # `tune` is in the key


def test_a_compressors_record_travels_from_compress_to_align(store):
    """taylor_iterative records the conv FLOPs its masks removed and those its saved model
    removed (compression_record); compress keeps it in its manifest, align copies it on (the
    audit adds it to the model's metrics); a compressor without one records {}."""
    data, reference, magnitude = store
    options = {"batch_size": 8, "batches_between_prunes": 0, "per_step": 8}
    calibration = {"batches": 1, "batch_size": 8}
    pruned = compress(data, reference, "taylor_iterative", 0.3, options, calibration, "ce", {})
    record = read_checkpoint_manifest(pruned["path"])["compression_record"]
    assert set(record) == {"masked_conv_flops_removed", "conv_flops_removed"}
    assert record["masked_conv_flops_removed"] >= 0.3
    # small_cnn is a plain conv stack: every masked filter is removed
    assert record["conv_flops_removed"] == pytest.approx(record["masked_conv_flops_removed"])
    aligned = align(
        data,
        reference,
        pruned,
        "taylor_iterative",
        0.3,
        options,
        "ce",
        {},
        training_settings(),
        "cpu",
    )
    assert read_checkpoint_manifest(aligned["path"])["compression_record"] == record
    assert read_checkpoint_manifest(magnitude["path"])["compression_record"] == {}
