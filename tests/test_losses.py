"""Alignment losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from compalign.data import Split
from compalign.losses import LOSSES, as_two_class
from compalign.models import build_model
from compalign.train import TrainConfig, fit

LN3 = math.log(3.0)


def test_cross_entropy_by_hand():
    # -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2)
    loss = LOSSES["ce"]()(torch.tensor([[2.0, 0.0, 0.0]]), None, torch.tensor([0]))
    assert float(loss) == pytest.approx(math.log(1 + 2 * math.exp(-2)), abs=1e-6)


def test_knowledge_distillation_by_hand():
    """T=2: p(z_r/T) = [0.75, 0.25], p(z_c/T) = [0.5, 0.5].
    KL = 0.75 ln 1.5 + 0.25 ln 0.5; loss = 0.5 * ln 2 + 0.5 * 4 * KL."""
    compressed = torch.tensor([[0.0, 0.0]])
    reference = torch.tensor([[2 * LN3, 0.0]])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    expected = 0.5 * math.log(2) + 0.5 * 4 * kl
    loss = LOSSES["kd"](temperature=2.0, alpha=0.5)(compressed, reference, torch.tensor([0]))
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.608198, abs=1e-6)


def test_binary_single_logit_equals_two_class_form():
    """One logit z means p(y=1) = sigmoid(z): same loss as the logits [0, z]."""
    compressed = torch.tensor([0.0])
    reference = torch.tensor([-2 * LN3])  # p_r(T=2) = [0.75, 0.25] as above
    loss = LOSSES["kd"](temperature=2.0, alpha=0.5)(compressed, reference, torch.tensor([0]))
    assert float(loss) == pytest.approx(0.608198, abs=1e-6)
    two = as_two_class(torch.tensor([[1.5], [-0.5]]))
    assert torch.allclose(torch.softmax(two, 1)[:, 1], torch.sigmoid(torch.tensor([1.5, -0.5])))


def test_kd_with_alpha_zero_is_cross_entropy():
    logits, reference = torch.randn(5, 4), torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    kd = LOSSES["kd"](temperature=3.0, alpha=0.0)(logits, reference, labels)
    assert torch.allclose(kd, LOSSES["ce"]()(logits, reference, labels))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_reach_only_the_compressed_model(name):
    """fit() computes reference logits without gradients: the reference is untouched."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8, generator=generator)
    split = Split(
        images=images,
        labels=torch.arange(32) % 10,
        example_ids=[str(i) for i in range(32)],
        mean=torch.zeros(1, 1, 1, 1),
        std=torch.ones(1, 1, 1, 1) * 255,
        groups=None,
    )
    reference = build_model("small_cnn", 10, 1, 8, seed=1).eval()
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    student = build_model("small_cnn", 10, 1, 8, seed=2)
    student_before = [p.clone() for p in student.parameters()]
    fit(student, split, TrainConfig(epochs=1, batch_size=16), LOSSES[name](), reference=reference)
    assert all(p.grad is None for p in reference.parameters())
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())
    assert any(
        not torch.equal(a, b) for a, b in zip(student_before, student.parameters(), strict=True)
    )


def test_label_preserving_by_hand():
    """Example 1 is a mismatch (compressed argmax 0, reference argmax 1), example 2 is not.
    w_ce=1, w_kd=0, w_logit=0.5, w_mm=2:
      CE   = mean(log(1 + e^-2), log(1 + e^-1))
      MSE  = mean((2-0)^2, (0-1)^2, (0-0)^2, (1-2)^2) = 1.5
      mm   = CE([2, 0], label 1) over the one mismatched example = log(1 + e^2)"""
    compressed = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    reference = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    labels = torch.tensor([0, 1])
    cross_entropy = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    expected = cross_entropy + 0.5 * 1.5 + 2 * math.log(1 + math.exp(2))
    loss = LOSSES["label_preserving"](w_ce=1, w_kd=0, w_logit=0.5, w_mm=2)
    assert float(loss(compressed, reference, labels)) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(5.223951, abs=1e-5)


def test_label_preserving_kd_term_and_no_mismatch():
    """Without mismatches the mismatch term vanishes; the KD term is Hinton's T^2 KL."""
    compressed = torch.tensor([[0.0, 0.0]])
    reference = torch.tensor([[2 * LN3, 0.0]])  # argmax 0, as argmax([0, 0]) is: no mismatch
    labels = torch.tensor([0])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    loss = LOSSES["label_preserving"](w_ce=0, w_kd=1, w_logit=0, w_mm=5, temperature=2.0)
    assert float(loss(compressed, reference, labels)) == pytest.approx(4 * kl, abs=1e-6)


def pw_by_hand(gamma, m):
    """Two examples, reference p = [0.75, 0.25] on both. Example 1 (y=0): the reference is
    right, weight m + (1-m) 0.25^gamma, target the reference's p, compressed logits [0, 0] ->
    soft CE = ln 2. Example 2 (y=1): the reference is wrong, weight m + (1-m) 0.75^gamma, target
    one-hot(1), compressed p = [0.25, 0.75] -> CE = -ln 0.75."""
    first = (m + (1 - m) * 0.25**gamma) * math.log(2)
    second = (m + (1 - m) * 0.75**gamma) * -math.log(0.75)
    return (first + second) / 2


def test_performance_weighted_by_hand():
    compressed = torch.tensor([[0.0, 0.0], [0.0, LN3]])
    reference = torch.tensor([[LN3, 0.0], [LN3, 0.0]])
    labels = torch.tensor([0, 1])
    loss = LOSSES["pw"](gamma=5.0, m=0.75)(compressed, reference, labels)
    assert float(loss) == pytest.approx(pw_by_hand(5.0, 0.75), abs=1e-6)
    assert pw_by_hand(5.0, 0.75) == pytest.approx(0.376429, abs=1e-5)
    assert float(LOSSES["pw"](gamma=1.0, m=0.3)(compressed, reference, labels)) == pytest.approx(
        pw_by_hand(1.0, 0.3), abs=1e-6
    )


def test_performance_weights_and_targets_rules():
    """Weights grow as the reference's true-class probability falls; targets are the reference's
    distribution where it is right and one-hot where it is wrong."""
    from compalign.losses import performance_weights

    reference = torch.tensor([[LN3, 0.0], [LN3, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    weights, targets = performance_weights(reference, labels, gamma=2.0, m=0.5)
    assert torch.allclose(weights, torch.tensor([0.5 + 0.5 * 0.25**2, 0.5 + 0.5 * 0.75**2, 0.625]))
    assert torch.allclose(targets, torch.tensor([[0.75, 0.25], [0.0, 1.0], [0.5, 0.5]]))
    assert weights[1] > weights[0]


def test_performance_weighted_binary_single_logit():
    """One logit per example: p(y=1) = sigmoid(z); the same numbers as the two-class case."""
    compressed = torch.tensor([0.0, LN3])
    reference = torch.tensor([-LN3, -LN3])  # sigmoid = 0.25: p = [0.75, 0.25]
    labels = torch.tensor([0, 1])
    loss = LOSSES["pw"](gamma=5.0, m=0.75)(compressed, reference, labels)
    assert float(loss) == pytest.approx(pw_by_hand(5.0, 0.75), abs=1e-6)


def test_weights_come_from_the_frozen_reference():
    """The PW loss's gradient w.r.t. the reference logits is zero: weights and targets are
    constants of the reference, so nothing flows back into it."""
    compressed = torch.randn(6, 3, requires_grad=True)
    reference = torch.randn(6, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    LOSSES["pw"]()(compressed, reference, labels).backward()
    assert reference.grad is None or torch.count_nonzero(reference.grad) == 0
    assert torch.count_nonzero(compressed.grad) > 0


def test_logit_mse_is_the_mean_squared_logit_difference():
    compressed = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    reference = torch.tensor([[1.0, 0.0], [2.0, -1.0]])
    loss = LOSSES["logit_mse"]()(compressed, reference, torch.tensor([0, 1]))
    assert float(loss.detach()) == pytest.approx((0 + 4 + 4 + 0) / 4)
    loss.backward()
    assert compressed.grad is not None and reference.grad is None
    assert float(LOSSES["logit_mse"]()(reference, reference, torch.tensor([0, 1]))) == 0.0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_entry_describes_itself(name):
    """Options with defaults, a docstring citing its source, and a tuning grid whenever the loss
    has options (otherwise align.tune would silently skip it), each override a real option."""
    entry = LOSSES[name]
    module = __import__(entry.factory.__module__, fromlist=["ENTRY"])
    assert module.ENTRY is entry and module.__doc__
    fields = set(entry.options.model_fields)
    assert bool(fields) == bool(entry.tuning_grid)
    for override in entry.tuning_grid:
        assert set(override) <= fields
        entry(**{**entry.defaults(), **override})
    with pytest.raises(ValueError):
        entry(no_such_option=1.0)
