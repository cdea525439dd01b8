"""The figures of compalign.report.figures that the page tests do not reach: the attribution
agreement grid, the PIE gallery, and the pipeline's level figures with far-off unaligned models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from compalign.attribution import ATTRIBUTION_METHODS
from compalign.report.figures import (
    CAPTION,
    CELL,
    PANEL,
    agreement_figure,
    compressed_rows,
    level_figure,
    loss_colors,
    pie_gallery,
)

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
    page = np.asarray(Image.open(path).convert("RGB"))
    columns = 1 + 2 * len(maps)
    assert page.shape == (4 * CELL[0], columns * CELL[1], 3)

    def panel(row: int, column: int) -> np.ndarray:
        top, left = row * CELL[0] + CAPTION, column * CELL[1] + (CELL[1] - PANEL) // 2
        return page[top : top + PANEL, left : left + PANEL]

    # the image, magnified without smoothing: its top-left pixel fills the panel's corner
    first = images[1, :, 0, 0].numpy()
    assert (panel(1, 0)[: PANEL // 8, : PANEL // 8] == (first if channels == 3 else first[0])).all()
    # each map on inferno up to its own maximum; a dead map is inferno's first colour
    dead = 2 + 2 * list(maps).index("saliency")
    low = np.round(np.asarray(colormaps["inferno"](0.0)[:3]) * 255)
    assert (panel(0, dead) == low).all()
    high = np.round(np.asarray(colormaps["inferno"](1.0)[:3]) * 255)
    brightest = np.unravel_index(maps["saliency"][0][2].argmax(), (8, 8))
    step = PANEL // 8
    assert (
        panel(2, dead - 1)[brightest[0] * step + step // 2, brightest[1] * step + step // 2] == high
    ).all()


@pytest.mark.parametrize("count", [0, 3])
def test_pie_gallery_writes_png(tmp_path, count):
    """Grey PIEs titled with their labels, or a 'no PIEs' figure, as a PNG."""
    images = torch.randint(0, 256, (count, 1, 8, 8), dtype=torch.uint8)
    labels = np.arange(count) % 3
    path = tmp_path / "gallery" / "pies.png"
    pie_gallery(images, labels, labels, (labels + 1) % 3, ["a", "b", "c"], path, title="PIEs")
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def _rows(unaligned_accuracy: float, unaligned_mismatches: float) -> pd.DataFrame:
    """magnitude at 0.5 and 0.9 with ce and kd close together, and the unaligned model (loss
    none) at the given accuracy and mismatches; a quantizer audited as it is (none only)."""
    rows = []
    for level in (0.5, 0.9):
        for loss, accuracy, mismatches in (
            ("none", unaligned_accuracy, unaligned_mismatches),
            ("ce", 0.86 - level / 10, 40.0 + 10 * level),
            ("kd", 0.87 - level / 10, 30.0 + 10 * level),
        ):
            rows.append(
                {
                    "name": f"magnitude-{level}-{loss}",
                    "compressor": "magnitude",
                    "sparsity": level,
                    "level_kind": "weight_sparsity",
                    "loss": loss,
                    "accuracy": accuracy,
                    "mismatches": mismatches,
                    "mismatches_ci_low": mismatches - 5,
                    "mismatches_ci_high": mismatches + 5,
                }
            )
    rows.append(
        {
            "name": "quantize_dynamic-none",
            "compressor": "quantize_dynamic",
            "sparsity": 0.0,
            "level_kind": "none",
            "loss": "none",
            "accuracy": 0.88,
            "mismatches": 3.0,
            "mismatches_ci_low": 1.0,
            "mismatches_ci_high": 6.0,
        }
    )
    return compressed_rows(pd.DataFrame(rows))


def _panels(rows: pd.DataFrame, column: str, **options) -> dict[str, tuple[set[str], tuple]]:
    """Title -> (the labels drawn, the y limits) of each visible panel."""
    figure = level_figure(rows, column, column, loss_colors(list(rows["loss"])), **options)
    return {
        axis.get_title(): (set(axis.get_legend_handles_labels()[1]), axis.get_ylim())
        for axis in figure.axes
        if axis.get_visible()
    }


def test_far_off_unaligned_models_get_a_panel_of_their_own():
    """An unaligned model far below the others is drawn below them, on its own scale: the
    aligned losses' panel spans their values, not the unaligned one's."""
    rows = _rows(unaligned_accuracy=0.2, unaligned_mismatches=900.0)
    accuracy = _panels(rows, "accuracy", interval=False, baseline=(0.9, "reference"))
    below = "magnitude: loss none (unaligned)"
    assert list(accuracy) == ["magnitude", below, "quantizers"]
    (aligned, limits), (unaligned, _) = accuracy["magnitude"], accuracy[below]
    assert aligned == {"ce", "kd", "reference"} and unaligned == {"none", "reference"}
    assert limits[0] > 0.7  # before: the axis went down to 0.2 and flattened ce and kd
    assert accuracy["quantizers"][0] == {"none", "reference"}  # none alone: nothing to split
    mismatches = _panels(rows, "mismatches", interval=True, baseline=None)
    assert mismatches["magnitude"][0] == {"ce", "kd"} and mismatches["magnitude"][1][1] < 100
    assert mismatches[below][1][1] > 900


def test_unaligned_models_close_to_the_others_share_their_panel():
    """An unaligned model that would not squash the other lines stays in their panel."""
    rows = _rows(unaligned_accuracy=0.8, unaligned_mismatches=60.0)
    panels = _panels(rows, "accuracy", interval=False, baseline=(0.9, "reference"))
    assert list(panels) == ["magnitude", "quantizers"]
    assert panels["magnitude"][0] == {"none", "ce", "kd", "reference"}


def test_the_pie_figure_draws_a_count_outside_its_interval():
    """A population's PIE count can lie below its interval from resampling the members
    (resampling adds disagreement): the figure draws it (errorbar refused negative errors)."""
    from compalign.report.figures import hooker_pie_figure

    pruning = pd.DataFrame(
        {"level": [0.5, 0.9], "pie_count": [3, 10], "pie_low": [5.0, 8.0], "pie_high": [9.0, 14.0]}
    )
    figure = hooker_pie_figure(pruning, {"half": 2}, floor=(1, 2.0, 6.0))
    [left, _] = figure.axes
    assert [list(line.get_ydata()) for line in left.lines if line.get_label() == "pruning"] == [
        [3, 10]
    ]
