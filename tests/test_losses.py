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
