"""A model's own preprocessing (compalign.preprocess) and the data's classes among its outputs."""

from __future__ import annotations

import pytest
import torch

from compalign.data import Split
from compalign.errors import UserError
from compalign.preprocess import (
    Transform,
    TransformParams,
    output_indices,
    resolve_transform,
    with_input_size,
)


def test_nothing_set_is_exactly_the_pipelines_normalisation():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = [0.2, 0.3, 0.4], [0.5, 0.6, 0.7]
    split = Split(
        images=images,
        labels=torch.zeros(4, dtype=torch.long),
        example_ids=list("abcd"),
        mean=torch.tensor(mean).view(1, 3, 1, 1),
        std=torch.tensor(std).view(1, 3, 1, 1),
        groups=None,
    )
    transform = resolve_transform(TransformParams(), None, mean, std, 3)
    assert torch.equal(transform(images), split.normalise(images))


def test_params_then_source_then_dataset():
    source = TransformParams(resize=256, centre_crop=224, mean=[0.5] * 3, std=[0.25] * 3)
    params = TransformParams(resize=40, centre_crop=32)
    transform = resolve_transform(params, source, [0.1] * 3, [0.2] * 3, 3)
    assert (transform.resize, transform.centre_crop, transform.mean) == (40, 32, (0.5,) * 3)
    assert transform(torch.zeros(2, 3, 50, 70, dtype=torch.uint8)).shape == (2, 3, 32, 32)


def test_a_resize_smaller_than_the_sources_crop_crops_nothing():
    source = TransformParams(resize=256, centre_crop=224, mean=[0.5] * 3, std=[0.25] * 3)
    transform = resolve_transform(TransformParams(resize=32), source, [0.1] * 3, [0.2] * 3, 3)
    assert (transform.resize, transform.centre_crop) == (32, None)


def test_grey_images_become_three_channels():
    transform = resolve_transform(TransformParams(channels=3), None, [0.5], [0.25], 1)
    output = transform(torch.full((1, 1, 4, 4), 255, dtype=torch.uint8))
    assert output.shape == (1, 3, 4, 4) and torch.allclose(output, torch.full_like(output, 2.0))


def test_a_fixed_input_size_fills_an_open_resize():
    transform = Transform(mean=(0.0,), std=(1.0,))
    assert with_input_size(transform, (16, 16)).centre_crop == 16
    assert with_input_size(Transform((0.0,), (1.0,), resize=8), (16, 16)).resize == 8


def test_wrong_statistics_are_one_line():
    with pytest.raises(UserError, match="data.transform.mean: 2 values for 3-channel inputs"):
        resolve_transform(TransformParams(mean=[0.1, 0.2]), None, [0.5] * 3, [0.2] * 3, 3)


def test_class_names_as_a_list_or_a_mapping():
    classes = ["cat", "dog"]
    assert output_indices(classes, None, 2) is None
    assert output_indices(classes, ["dog", "cat"], 2) == [1, 0]
    assert output_indices(classes, {"cat": 7, "dog": 3}, 10) == [7, 3]
    with pytest.raises(UserError, match="outputs 3 classes but the data has 2"):
        output_indices(classes, None, 3)
    with pytest.raises(UserError, match="lists 3 classes but the model outputs 2"):
        output_indices(classes, ["a", "cat", "dog"], 2)
    with pytest.raises(UserError, match=r"\['dog'\] have no model output"):
        output_indices(classes, {"cat": 0}, 2)
    with pytest.raises(UserError, match="beyond the model's 2 outputs"):
        output_indices(classes, {"cat": 0, "dog": 5}, 2)


def test_the_input_adapter_is_the_transform_on_the_pipelines_input_and_traces():
    """reference.source=file: the model's preprocessing as its first layer, fed images the
    pipeline standardised with the dataset's statistics; torch.fx traces it (static int8)."""
    import torch.fx

    from compalign.preprocess import InputAdapter, adapter_settings

    images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    standardised = (images.float() / 255 - 0.3) / 0.2
    for transform in (
        Transform(mean=(0.4, 0.5, 0.6), std=(0.2,) * 3, resize=36, centre_crop=32, channels=3),
        Transform(mean=(0.5,), std=(0.5,), centre_crop=10),  # padded, as CenterCrop pads
    ):
        adapter = InputAdapter(adapter_settings(transform, [0.3], [0.2], 8, 1))
        torch.fx.symbolic_trace(adapter)
        torch.testing.assert_close(adapter(standardised), transform(images), atol=1e-5, rtol=0)
