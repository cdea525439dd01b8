"""Resume points (compalign.resume): a training loop stopped after some epochs and run again
continues from its last point and ends bit-identical to a run that never stopped."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_vectorised import make_split

from compalign.finetune import fine_tune
from compalign.losses import LOSSES
from compalign.models import build_model
from compalign.resume import resume_area
from compalign.train import STOP_REQUESTED, TrainConfig, fit, total_steps
from compalign.vectorised import fit_population

TRAIN = make_split(96, seed=1)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these models are too small to share, and both runs of a comparison
    must use the same kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_cnn(seed: int = 0) -> torch.nn.Module:
    return build_model("small_cnn", 10, 1, 8, seed=seed)


def stop_after(epochs: int):
    """An on_epoch callback that asks training to stop after `epochs` epochs (as Ctrl-C does)."""

    def on_epoch(epoch: int, _metrics: dict) -> None:
        if epoch + 1 == epochs:
            STOP_REQUESTED.set()

    return on_epoch


def interrupted(train_once, area: Path, every: int, after: int):
    """Run `train_once(on_epoch)` in `area`, stopped after `after` epochs; then again, to the end."""
    with resume_area(area, every):
        try:
            with pytest.raises(KeyboardInterrupt):
                train_once(stop_after(after))
        finally:
            STOP_REQUESTED.clear()
    with resume_area(area, every):
        return train_once(None)


def assert_same_weights(first: torch.nn.Module, second: torch.nn.Module) -> None:
    one, two = first.state_dict(), second.state_dict()
    assert one.keys() == two.keys()
    for name in one:
        assert torch.equal(one[name], two[name]), name


@pytest.mark.parametrize(
    ("optimizer", "augment", "every", "after"),
    [("sgd", True, 1, 2), ("adamw", False, 2, 3)],
)
def test_fit_stopped_and_resumed_equals_uninterrupted(tmp_path, optimizer, augment, every, after):
    config = TrainConfig(epochs=4, batch_size=32, optimizer=optimizer, augment=augment, seed=5)
    lr = {"lr": 2e-3} if optimizer == "adamw" else {}
    config = TrainConfig(**{**config.__dict__, **lr})
    whole = fit(small_cnn(), TRAIN, config, LOSSES["ce"]())

    epochs_seen = []

    def train_once(on_epoch):
        def record(epoch, metrics):
            epochs_seen.append(epoch)
            if on_epoch is not None:
                on_epoch(epoch, metrics)

        return fit(small_cnn(), TRAIN, config, LOSSES["ce"](), on_epoch=record)

    resumed = interrupted(train_once, tmp_path / "resume", every, after)
    assert_same_weights(whole, resumed)
    # the second run started after the last saved epoch, not from 0
    last_saved = after - after % every
    assert epochs_seen == [*range(after), *range(last_saved, 4)]
    points = list((tmp_path / "resume").iterdir())
    assert [p.name for p in points] == ["001-fit.pt"]
    saved = torch.load(points[0], weights_only=True)  # tensors and plain values only
    assert saved["epoch"] == 4


def test_softadapt_weights_resume_with_the_model(tmp_path):
    """label_preserving with SoftAdapt: its weights and their history are in the resume point,
    so the resumed run trains with the weights it had and ends with the uninterrupted run's
    weights and trajectory."""
    config = TrainConfig(epochs=3, batch_size=32, seed=2)
    reference = small_cnn(seed=7).eval()
    options = {"weighting": "softadapt", "softadapt_beta": 20.0}
    whole_loss = LOSSES["label_preserving"](**options)
    whole = fit(small_cnn(), TRAIN, config, whole_loss, reference=reference)
    losses = []

    def train_once(on_epoch):
        losses.append(LOSSES["label_preserving"](**options))
        return fit(small_cnn(), TRAIN, config, losses[-1], reference=reference, on_epoch=on_epoch)

    resumed = interrupted(train_once, tmp_path / "resume", every=1, after=2)
    assert_same_weights(whole, resumed)
    assert losses[-1].trajectory() == whole_loss.trajectory()
    assert len(whole_loss.trajectory()["softadapt.w_ce"]) == 3
    assert losses[-1].weights() == whole_loss.weights() != whole_loss.configured


def test_a_finished_loop_is_not_trained_again_and_bad_points_are_ignored(tmp_path):
    config = TrainConfig(epochs=2, batch_size=32, seed=1)
    with resume_area(tmp_path, 1):
        first = fit(small_cnn(), TRAIN, config, LOSSES["ce"]())
    calls = []
    with resume_area(tmp_path, 1):
        again = fit(small_cnn(), TRAIN, config, LOSSES["ce"](), on_epoch=lambda *a: calls.append(a))
    assert calls == []
    assert_same_weights(first, again)
    # other settings, or a file that is not tensors only: ignored, trained from epoch 0
    other = TrainConfig(epochs=2, batch_size=16, seed=1)
    with resume_area(tmp_path, 1):
        fit(small_cnn(), TRAIN, other, LOSSES["ce"](), on_epoch=lambda *a: calls.append(a))
    assert len(calls) == 2

    class Planted:
        def __reduce__(self):
            return (print, ("unpickled",))

    torch.save({"format": 1, "payload": Planted()}, tmp_path / "001-fit.pt")
    calls.clear()
    with resume_area(tmp_path, 1):
        fit(small_cnn(), TRAIN, config, LOSSES["ce"](), on_epoch=lambda *a: calls.append(a))
    assert len(calls) == 2


def test_a_point_that_cannot_be_written_only_warns(tmp_path, caplog):
    config = TrainConfig(epochs=1, batch_size=32, seed=1)
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    with resume_area(blocked, 1):
        trained = fit(small_cnn(), TRAIN, config, LOSSES["ce"]())
    assert_same_weights(trained, fit(small_cnn(), TRAIN, config, LOSSES["ce"]()))
    assert "resume point not saved" in caplog.text


def test_gradual_pruning_resumes_with_its_masks(tmp_path):
    """The schedule prunes while fine-tuning: masks, like weights, continue from the point."""
    config = TrainConfig(epochs=4, batch_size=32, seed=2)
    reference = small_cnn(3).eval()

    def train_once(on_epoch):
        return fine_tune(
            "gradual_magnitude",
            0.8,
            {"start_step": 1, "end_step": 9, "frequency": 2},
            lambda: copy.deepcopy(reference),
            lambda: copy.deepcopy(reference),
            reference,
            TRAIN,
            config,
            LOSSES["kd"](),
            on_epoch=on_epoch,
        )

    assert total_steps(len(TRAIN), config) == 12  # the schedule spans the stop after epoch 2
    whole = train_once(None)
    resumed = interrupted(train_once, tmp_path, every=1, after=2)
    assert_same_weights(whole, resumed)
    masks = [name for name in whole.state_dict() if name.endswith("_mask")]
    assert masks


def test_masks_registered_after_the_loop_started_are_restored(tmp_path):
    """A schedule whose first pruning step comes after training began (masks registered then,
    not before fit): the resumed model gets them back before its state is loaded."""
    from compalign.compressors.gradual_magnitude import prune_layers_to

    config = TrainConfig(epochs=3, batch_size=32, seed=6)

    def prune_at_step_4(step, model):
        if step == 4:
            prune_layers_to(model, 0.5)

    def train_once(on_epoch):
        return fit(
            small_cnn(), TRAIN, config, LOSSES["ce"](), on_epoch=on_epoch, on_step=prune_at_step_4
        )

    whole = train_once(None)
    resumed = interrupted(train_once, tmp_path, every=1, after=2)
    assert_same_weights(whole, resumed)
    assert any(name.endswith("_mask") for name in resumed.state_dict())


# quantize_dynamic and quantize_static resume to equal logits too (checked by hand; slower)
@pytest.mark.parametrize("method", ["half"])
def test_quantization_aware_fine_tuning_resumes(tmp_path, method):
    """Fake-quantized (parametrized) weights continue from the point; the converted models agree."""
    config = TrainConfig(epochs=3, batch_size=32, seed=2)
    reference = small_cnn(3).eval()

    def train_once(on_epoch):
        fresh = lambda: copy.deepcopy(reference)  # noqa: E731
        return fine_tune(
            method,
            None,
            {},
            fresh,
            fresh,
            reference,
            TRAIN,
            config,
            LOSSES["kd"](),
            on_epoch=on_epoch,
        )

    whole = train_once(None)
    resumed = interrupted(train_once, tmp_path, every=1, after=1)
    images = TRAIN.normalise(TRAIN.images)
    assert torch.equal(whole(images), resumed(images))


def test_vectorised_population_resumes(tmp_path, monkeypatch):
    import compalign.vectorised as vectorised

    configs = [TrainConfig(epochs=3, batch_size=32, augment=True, seed=s) for s in (0, 1)]

    def train_once():
        return fit_population([small_cnn(0), small_cnn(1)], TRAIN, configs, LOSSES["ce"]())

    whole = train_once()
    batches = []

    def stop_in_second_epoch():  # fit_population has no epoch callback: stop at a batch
        batches.append(1)
        if len(batches) > math.ceil(len(TRAIN) / 32) + 1:
            raise KeyboardInterrupt

    with resume_area(tmp_path, 1):
        with monkeypatch.context() as patch:
            patch.setattr(vectorised, "stop_if_requested", stop_in_second_epoch)
            with pytest.raises(KeyboardInterrupt):
                train_once()
        assert torch.load(tmp_path / "001-fit_population.pt", weights_only=True)["epoch"] == 1
    with resume_area(tmp_path, 1):
        resumed = train_once()
    for one, two in zip(whole, resumed, strict=True):
        assert_same_weights(one, two)


# ---------------------------------------------------------------------------------------------
# A real kill: the reference stage in its own process, SIGKILLed after its first resume point

STAGE = """
import json, sys
import torch
torch.set_num_threads(1)
from tasks.train import train_reference
data, settings = json.loads(sys.argv[1]), json.loads(sys.argv[2])
train_reference(data, settings, "cpu")
"""


@pytest.mark.slow
def test_killed_reference_stage_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """The stage runs in a process that is SIGKILLed after its first resume point; run again
    (here, in the test's process), it continues from the point and stores the weights and
    validation accuracy of a training that was never interrupted."""
    import compalign.resume
    from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest
    from compalign.config import ReferenceParams
    from compalign.data import load_split
    from tasks.data import prepare
    from tasks.train import train_config, train_reference, validation_accuracy

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COMPALIGN_REFRESH", raising=False)
    monkeypatch.setenv("COMPALIGN_RESUME_EVERY", "1")
    data = prepare({"source": "digits", "limit": 100})
    settings = ReferenceParams(epochs=8, batch_size=32, augment=True).model_dump()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", STAGE, json.dumps(data), json.dumps(settings)]

    killed = subprocess.Popen(command, env=env)
    points = tmp_path / "artifacts" / "reference"
    deadline = time.monotonic() + 120
    while not list(points.glob(".resume-*/001-fit.pt")):
        assert killed.poll() is None, "the stage ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not list(points.glob("*/manifest.json"))  # nothing finished
    epoch = torch.load(next(points.glob(".resume-*/001-fit.pt")), weights_only=True)["epoch"]
    assert 1 <= epoch < 8

    loaded = []
    load = compalign.resume.ResumePoint.load
    monkeypatch.setattr(
        compalign.resume.ResumePoint, "load", lambda self: loaded.append(load(self)) or loaded[-1]
    )
    artifact = train_reference(data, settings, "cpu")
    assert loaded[0]["epoch"] >= epoch  # continued, not started over
    assert not list(points.glob(".resume-*"))  # finished: its resume points are gone

    params = ReferenceParams.model_validate(settings)
    manifest = json.loads((Path(data["path"]) / "manifest.json").read_text())
    model = build_model("small_cnn", 10, 1, 8, seed=params.seed)
    fit(model, load_split(data["path"], "train", manifest), train_config(params), LOSSES["ce"]())
    accuracy = validation_accuracy(model, load_split(data["path"], "val", manifest))
    assert_same_weights(load_checkpoint(artifact["path"]), model)
    assert read_checkpoint_manifest(artifact["path"])["val_accuracy"] == accuracy


@pytest.mark.parametrize(("every", "saved"), [("0", False), ("3", True)])
def test_run_resume_every_reaches_the_stages(tmp_path, monkeypatch, every, saved):
    """`run.resume_every` (COMPALIGN_RESUME_EVERY, set by the CLI) decides whether a stage's
    training saves resume points; 0 turns them off."""
    from tasks.infra.store import training_runtime

    monkeypatch.setenv("COMPALIGN_RESUME_EVERY", every)
    with training_runtime(tmp_path / "points"):
        fit(small_cnn(), TRAIN, TrainConfig(epochs=1, batch_size=32), LOSSES["ce"]())
    assert (tmp_path / "points" / "001-fit.pt").is_file() == saved
