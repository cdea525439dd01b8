"""`compalign init --example`: the files a user of the audit brings, made as such a user makes
them, in a folder of their own; the README's audit command is the one the example prints."""

from __future__ import annotations

import pytest
import torch

from conftest import ROOT


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The example written with one epoch of training per reference (the default is 8)."""
    from compalign.example import write_example

    folder = tmp_path_factory.mktemp("example")
    lines = []
    write_example(folder, epochs=1, say=lines.append)
    return folder, lines


@pytest.mark.slow
def test_the_example_holds_an_image_folder_and_models_in_the_formats_users_bring(example):
    from compalign.config import load_params
    from compalign.example import EXAMPLE_FILES
    from compalign.model_sources import load_model
    from compalign.model_sources.base import FixedBatch

    folder, lines = example
    assert len(lines) == 6 and all(line.endswith(" s)") for line in lines)  # a line per step
    classes = sorted(path.name for path in (folder / "digits").iterdir())
    assert classes == [str(digit) for digit in range(10)]
    assert sum(1 for _ in (folder / "digits").rglob("*.png")) == 1797
    params = load_params(folder / "params.yaml")
    assert (params.data.source, params.data.root, params.data.image_mode) == (
        "imagefolder",
        "digits",
        "L",
    )
    assert params.data.transform.channels == 3 and params.data.transform.resize == 32
    # the README's specs load, each model runs on the example's input
    specs = {
        "reference": f"torchvision:resnet18@{folder / EXAMPLE_FILES['reference']}",
        "reference2": f"torchvision:resnet18@{folder / EXAMPLE_FILES['reference2']}",
        "int8": str(folder / EXAMPLE_FILES["int8"]),
        "pruned": str(folder / EXAMPLE_FILES["pruned"]),
    }
    images = torch.zeros(3, 3, 32, 32)
    logits = {}
    for name, spec in specs.items():
        loaded = load_model(spec)
        with torch.no_grad():
            logits[name] = loaded.model.eval()(images)
        assert logits[name].shape == (3, 10), name
    int8 = load_model(specs["int8"])
    assert isinstance(int8.model, FixedBatch) and int8.model.batch_size == 1  # as served
    reference_size = (folder / EXAMPLE_FILES["reference"]).stat().st_size
    assert (folder / EXAMPLE_FILES["int8"]).stat().st_size < 0.4 * reference_size  # int8 weights
    program = torch.export.load(folder / EXAMPLE_FILES["pruned"])  # our own file
    weights = [
        tensor
        for name, tensor in program.state_dict.items()
        if name.endswith("weight") and tensor.dim() > 1  # conv and linear, not batch norm
    ]
    zeros = sum(int((tensor == 0).sum()) for tensor in weights)
    assert zeros / sum(tensor.numel() for tensor in weights) == pytest.approx(0.6, abs=0.01)


def test_the_readme_runs_the_command_the_example_prints():
    from compalign.example import README_COMMAND

    assert README_COMMAND in (ROOT / "README.md").read_text()
    assert README_COMMAND in (ROOT / "docs" / "getting-started.md").read_text()


def test_init_example_never_overwrites(tmp_path, monkeypatch):
    """An example file already there: one line naming it, nothing written (checked before any
    training)."""
    from typer.testing import CliRunner

    from compalign.errors import UserError
    from flows.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet18_digits.pt").write_bytes(b"mine")
    result = CliRunner().invoke(app, ["init", "--example"])
    assert isinstance(result.exception, UserError)
    assert "resnet18_digits.pt: already here" in str(result.exception)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["resnet18_digits.pt"]
    assert (tmp_path / "resnet18_digits.pt").read_bytes() == b"mine"
