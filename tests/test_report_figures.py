"""The figures of compalign.report.figures that the page tests do not reach: the attribution
agreement grid and the PIE gallery."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compalign.attribution import ATTRIBUTION_METHODS
from compalign.report.figures import agreement_figure, pie_gallery

METHODS = sorted(ATTRIBUTION_METHODS)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("channels", [1, 3])
def test_agreement_figure_writes_png(tmp_path, channels):
    """A PNG (signature bytes) for grey and RGB images, fewer examples than requested rows."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, channels, 8, 8), dtype=torch.uint8, generator=generator)
    rng = np.random.default_rng(0)
    maps = {
        method: (rng.random((4, 8, 8), dtype=np.float32), rng.random((4, 8, 8), dtype=np.float32))
        for method in METHODS
    }
    maps["saliency"][1][0] = 0.0  # a dead map must still draw
    path = tmp_path / "figures" / "agreement.png"
    agreement_figure(images, maps, [f"label {i} / ref {i} / comp 5" for i in range(4)], path)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


@pytest.mark.parametrize("count", [0, 3])
def test_pie_gallery_writes_png(tmp_path, count):
    """Grey PIEs titled with their labels, or a 'no PIEs' figure, as a PNG."""
    images = torch.randint(0, 256, (count, 1, 8, 8), dtype=torch.uint8)
    labels = np.arange(count) % 3
    path = tmp_path / "gallery" / "pies.png"
    pie_gallery(images, labels, labels, (labels + 1) % 3, ["a", "b", "c"], path, title="PIEs")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
