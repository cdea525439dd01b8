"""Meyer & Wong's iterative Taylor pruning (compalign.compressors.taylor_iterative)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from sklearn.datasets import load_digits

from compalign.checkpoint import load_checkpoint, save_checkpoint
from compalign.compressors import COMPRESSORS, Calibration
from compalign.compressors.taylor_iterative import (
    TaylorIterativeOptions,
    _convolutions,
    conv_flops,
    prune_iteratively,
    taylor_scores,
)
from compalign.data import Split
from compalign.losses import LOSSES
from compalign.models import build_model
from compalign.train import TrainConfig, fit

PW = {"gamma": 1.0, "m": 0.5}  # the authors' CIFAR-10 values


@pytest.fixture(scope="module")
def digits():
    """300 real digits and a small CNN trained on them for a few epochs (the reference)."""
    data = load_digits()
    images = torch.tensor(data.images * 16).clamp(0, 255).to(torch.uint8)[:300, None]
    train = Split(
        images=images,
        labels=torch.tensor(data.target[:300]),
        example_ids=[str(i) for i in range(300)],
        mean=torch.full((1, 1, 1), 0.2),
        std=torch.full((1, 1, 1), 0.3),
        groups=None,
    )
    torch.set_num_threads(1)
    reference = build_model("small_cnn", 10, 1, 8)
    fit(reference, train, TrainConfig(epochs=4, batch_size=32, lr=0.05), LOSSES["ce"]())
    return train, reference.eval()


def first_scores(train, reference, loss):
    """The Taylor scores of the first pruning step (after 3 SGD steps)."""
    seen = []

    def keep(batch, model, scores):
        seen.append(torch.cat(scores))
        raise StopIteration  # the first step is all this test needs

    options = TaylorIterativeOptions(batch_size=32, batches_between_prunes=2)
    with pytest.raises(StopIteration):
        prune_iteratively(
            copy.deepcopy(reference), [0.5], train, loss, reference, options, on_prune=keep
        )
    return seen[0]


def test_pw_scores_are_informative_after_a_few_sgd_steps(digits):
    """At the reference itself the PW gradient vanishes where the reference is right (its target
    is its own softmax); after a few SGD steps on the PW loss the scores are not all near zero,
    and they rank filters differently from the CE scores."""
    train, reference = digits
    pw = LOSSES["pw"](**PW)
    images, labels = train.normalise(train.images[:32]), train.labels[:32]
    with torch.no_grad():
        reference_logits = reference(images)
    right = reference_logits.argmax(1) == labels
    assert right.sum() >= 16
    at_reference = copy.deepcopy(reference)
    filters = _convolutions(at_reference, images[:1])
    still = torch.cat(
        taylor_scores(
            at_reference, filters, images[right], reference_logits[right], labels[right], pw
        )
    )
    assert float(still.abs().max()) < 1e-5

    pw_scores = first_scores(train, reference, pw)
    ce_scores = first_scores(train, reference, LOSSES["ce"]())
    # rounding noise at the reference (~1e-9 here); after the SGD steps the median score is
    # four orders of magnitude above it (measured: ~1.6e-5)
    noise = max(float(still.abs().max()), 1e-9)
    assert float(pw_scores.median()) > 1000 * noise
    assert not torch.allclose(pw_scores, ce_scores)
    # they rank filters differently, not just on another scale
    assert not torch.equal(pw_scores.argsort()[:16], ce_scores.argsort()[:16])


def test_levels_are_chained_reach_the_target_and_keep_a_filter_per_conv(digits):
    """The 0.5 model continues from the 0.3 one: a run through both levels gives the same models
    as a run to each alone; conv FLOPs reach each target; no conv loses its last filter."""
    train, reference = digits
    pw = LOSSES["pw"](**PW)
    options = TaylorIterativeOptions(batch_size=64, batches_between_prunes=1, per_step=12)

    def run(levels):
        return prune_iteratively(copy.deepcopy(reference), levels, train, pw, reference, options)

    both = run([0.3, 0.6])
    for snapshot, alone in zip(both, [run([0.3])[0], run([0.6])[0]], strict=True):
        assert snapshot.level == alone.level
        assert snapshot.flops <= (1 - snapshot.level) * snapshot.total_flops
        assert all(torch.equal(snapshot.flags[k], alone.flags[k]) for k in alone.flags)
        assert all(torch.equal(snapshot.state[k], alone.state[k]) for k in alone.state)
    low, high = both
    assert all((low.flags[k] | ~high.flags[k]).all() for k in low.flags)  # only more removed


def test_no_conv_loses_its_last_filter(digits):
    """Asked for more than removing all but one filter per conv can give (the small CNN keeps at
    least 1 - 1296 / 2,383,872 of its conv FLOPs), pruning stops with an error once every conv is
    down to one filter, and no conv ever had none."""
    train, reference = digits
    options = TaylorIterativeOptions(batch_size=64, batches_between_prunes=0, per_step=40)
    widths = []

    def count(batch, model, scores):
        rows = [
            int((module.weight.detach().flatten(1).abs().sum(1) > 0).sum())
            for module in model.modules()
            if isinstance(module, torch.nn.Conv2d)
        ]
        widths.append(rows)

    with pytest.raises(ValueError, match="one filter"):
        prune_iteratively(
            copy.deepcopy(reference), [0.9999], train, LOSSES["ce"](), reference, options, count
        )
    assert min(min(rows) for rows in widths) >= 1
    assert widths[-1] == [1, 1, 1]


@pytest.mark.parametrize("loss", ["ce", "pw"])
def test_compressor_removes_channels_and_restores_weights_for_pw(digits, loss, tmp_path):
    """The saved model is really smaller and round-trips; `pw` keeps the reference's weights on
    its kept filters, `ce` the weights trained while pruning."""
    train, reference = digits
    loss_fn = LOSSES[loss](**(PW if loss == "pw" else {}))
    calibration = Calibration(
        [train.normalise(train.images[:1])], None, loss, loss_fn, reference, train
    )
    options = {"batch_size": 64, "batches_between_prunes": 1, "per_step": 8}
    pruned = COMPRESSORS["taylor_iterative"](copy.deepcopy(reference), 0.5, options, calibration)
    example = train.normalise(train.images[:1])
    widths = [item.conv.out_channels for item in _convolutions(pruned, example)]
    assert widths != [32, 64, 128] and min(widths) >= 1
    dense = _convolutions(reference, example)
    flops = conv_flops(pruned, _convolutions(pruned, example), example)
    assert flops <= 0.5 * conv_flops(reference, dense, example)

    # the first conv's kept filters are reference filters (pw) or trained ones (ce)
    kept, original = pruned[0].weight.detach(), reference[0].weight.detach()
    matches = [bool((original == row).all(dim=(1, 2, 3)).any()) for row in kept]
    assert all(matches) == (loss == "pw")

    architecture = {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "image_size": 8}
    save_checkpoint(pruned, architecture, tmp_path)
    loaded = load_checkpoint(tmp_path).eval()
    images = train.normalise(train.images[:16])
    assert torch.allclose(loaded(images), pruned.eval()(images), atol=1e-6)


def test_fine_tuning_recipe_steps_the_cosine_once_per_epoch(digits, monkeypatch):
    """lr_schedule cosine_per_epoch: CosineAnnealingLR(T_max=epochs) stepped after each epoch
    (their GenericRetrainer), so every batch of epoch e runs at lr (1 + cos(pi e / E)) / 2."""
    train, reference = digits
    seen = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    config = TrainConfig(
        epochs=3, batch_size=100, optimizer="adamw", lr=1e-3, lr_schedule="cosine_per_epoch"
    )
    fit(copy.deepcopy(reference), train, config, LOSSES["ce"]())
    expected = [1e-3 * (1 + math.cos(math.pi * epoch / 3)) / 2 for epoch in range(3)]
    assert seen == pytest.approx([value for value in expected for _ in range(3)])


def _conv_flops_of(model, example):
    """Every Conv2d's in x out x H_out x W_out x k^2 as the model stands (independent of the
    compressor's own bookkeeping)."""
    total = []

    def hook(module, inputs, output):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total.append(
            module.in_channels * module.out_channels * output.shape[-1] * output.shape[-2] * kernel
        )

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        model.eval()(example)
    for handle in handles:
        handle.remove()
    return sum(total)


@pytest.mark.parametrize("loss", ["ce", "pw"])
def test_resnet_record_holds_the_masked_and_the_saved_conv_flops(digits, loss):
    """On a ResNet-20 a masked conv2 or shortcut filter whose channel other convs still feed
    stays in the saved model: the record's `conv_flops_removed` is the saved model's counted
    fraction, below the masks' `masked_conv_flops_removed` (which reached the level). `pw` gives
    such a filter back its reference weights (their true_prune), `ce` keeps it zeroed."""
    train, _ = digits
    reference = build_model("resnet20", 10, 1, 8)
    fit(reference, train, TrainConfig(epochs=1, batch_size=64, lr=0.05), LOSSES["ce"]())
    reference.eval()
    loss_fn = LOSSES[loss](**(PW if loss == "pw" else {}))
    example = train.normalise(train.images[:1])
    calibration = Calibration([example], None, loss, loss_fn, reference, train)
    options = {"batch_size": 64, "batches_between_prunes": 0, "per_step": 16}
    pruned = COMPRESSORS["taylor_iterative"](copy.deepcopy(reference), 0.3, options, calibration)
    record = pruned.compression_record
    dense = _conv_flops_of(reference, example)
    saved = _conv_flops_of(pruned, example)
    assert record["conv_flops_removed"] == pytest.approx(1 - saved / dense, abs=1e-12)
    assert record["masked_conv_flops_removed"] >= 0.3
    assert record["conv_flops_removed"] < record["masked_conv_flops_removed"]
    zero_rows = sum(
        int((module.weight.detach().flatten(1).abs().sum(1) == 0).sum())
        for module in pruned.modules()
        if isinstance(module, torch.nn.Conv2d)
    )
    assert (zero_rows > 0) == (loss == "ce")


def test_plain_stack_record_masked_and_saved_conv_flops_agree(digits):
    """In small_cnn every masked filter goes: the saved model's conv FLOPs are the masks'."""
    train, reference = digits
    loss_fn = LOSSES["ce"]()
    example = train.normalise(train.images[:1])
    calibration = Calibration([example], None, "ce", loss_fn, reference, train)
    options = {"batch_size": 64, "batches_between_prunes": 1, "per_step": 8}
    pruned = COMPRESSORS["taylor_iterative"](copy.deepcopy(reference), 0.5, options, calibration)
    record = pruned.compression_record
    saved = _conv_flops_of(pruned, example) / _conv_flops_of(reference, example)
    assert record["conv_flops_removed"] == pytest.approx(1 - saved, abs=1e-12)
    assert record["conv_flops_removed"] == pytest.approx(record["masked_conv_flops_removed"])
    assert record["masked_conv_flops_removed"] >= 0.5
