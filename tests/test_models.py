"""Model registry: shapes, seeded initialisation, sizes, input-size checks."""

from __future__ import annotations

import pytest
import torch

from compalign.errors import UserError
from compalign.models import MODELS, build_model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape(name):
    size = 32 if name.startswith("vgg") else 8
    model = build_model(name, num_classes=7, in_channels=1, image_size=size).eval()
    assert model(torch.randn(2, 1, size, size)).shape == (2, 7)


def test_same_seed_same_weights():
    first, second = (
        build_model("resnet20", 10, 3, 32, seed=5),
        build_model("resnet20", 10, 3, 32, seed=5),
    )
    other = build_model("resnet20", 10, 3, 32, seed=6)
    assert all(
        torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True)
    )
    assert not all(
        torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    ("name", "millions"), [("resnet20", 0.27), ("resnet56", 0.85), ("resnet18", 11.17)]
)
def test_sizes_match_the_papers(name, millions):
    """He et al. 2016: ResNet-20 0.27M, ResNet-56 0.85M weights (+ ~1% for 1x1 projections)."""
    count = sum(p.numel() for p in build_model(name, 10, 3, 32).parameters()) / 1e6
    assert count == pytest.approx(millions, rel=0.02)


def test_vgg_needs_32_pixels():
    with pytest.raises(UserError, match="data.image_size=32"):
        build_model("vgg11_bn", 10, 1, 8)
