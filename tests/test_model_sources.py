"""Model sources (compalign.model_sources): each format loads to the same logits, a spec's
mistakes are one line, and nothing that needs unpickling Python objects is ever loaded."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from compalign.errors import UserError
from compalign.model_sources import MODEL_SOURCES, SAFE_FORMATS, load_model, parse_spec


def _fill(spec: str, byom: dict) -> str:
    """A spec with {file name} placeholders replaced by the byom fixture's paths."""
    for key, value in byom.items():
        spec = spec.replace("{" + key + "}", str(value))
    return spec


def test_every_source_says_what_it_reads_and_how_it_is_written():
    for name, entry in MODEL_SOURCES.items():
        assert len(entry.description) > 40, name
        assert entry.syntax.startswith(name) or entry.directory, name


def _checkpoint(tmp_path):
    from compalign.checkpoint import save_checkpoint
    from compalign.models import build_model

    architecture = {"name": "small_cnn", "num_classes": 3, "in_channels": 3, "image_size": 32}
    model = build_model(**architecture, seed=1).eval()
    save_checkpoint(model, architecture, tmp_path / "checkpoint")
    return str(tmp_path / "checkpoint"), model


def _timm(tmp_path):
    import timm
    from safetensors.torch import save_file

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    save_file(model.state_dict(), tmp_path / "timm.safetensors")
    return f"timm:resnet18@{tmp_path / 'timm.safetensors'}", model


@pytest.mark.parametrize(
    ("source", "spec"),
    [
        ("checkpoint", None),
        ("torchvision", "torchvision:resnet18@{state.pt}"),
        ("timm", None),
        ("torchscript", "{model.ts}"),
        ("export", "{model.pt2}"),
        ("onnx", "{model.onnx}"),
    ],
)
def test_each_source_gives_the_models_logits(byom, tmp_path, source, spec):
    """One test per registry entry: the loaded model's logits are the original's, on a batch
    size the file was not exported with (5), and the source knows or probes the class count."""
    expected_model = byom["model"]
    if source == "checkpoint":
        spec, expected_model = _checkpoint(tmp_path)
    elif source == "timm":
        spec, expected_model = _timm(tmp_path)
    else:
        spec = _fill(spec, byom)
    loaded = load_model(spec)
    assert loaded.source == source
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = expected_model(images)
        logits = loaded.model.eval()(images)
    assert logits.shape == (5, 3)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert loaded.num_classes in (None, 3)
    assert loaded.files and loaded.digest and loaded.size_bytes > 0


def test_sources_know_their_preprocessing(byom, tmp_path):
    torchvision = load_model(f"torchvision:resnet18@{byom['state.pt']}").transform
    assert (torchvision.resize, torchvision.centre_crop) == (256, 224)
    assert torchvision.mean == pytest.approx([0.485, 0.456, 0.406])
    timm = load_model(_timm(tmp_path)[0]).transform
    assert timm.centre_crop == 224 and timm.resize >= 224 and len(timm.std) == 3
    onnx = load_model(str(byom["model.onnx"]))
    assert onnx.input_size == (32, 32) and onnx.num_classes == 3  # fixed in the file
    assert load_model(str(byom["model.ts"])).transform is None  # unknown: the dataset's


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("nosuch:model.bin", "unknown model source 'nosuch'"),
        ("torchvision:resnet18", "torchvision:<architecture>@<weights file>"),
        ("torchvision:resnet81@{state.pt}", "did you mean 'resnet18'"),
        ("torchvision:resnet18@missing.pt", "missing.pt is not found"),
        ("missing.onnx", "missing.onnx is not found"),
        ("{root}/weights.bin", "cannot tell the format"),
        ("{state.pt}", "a state dict, which needs its architecture: torchvision:<name>@"),
        ("onnx:{state.pt}", "onnxruntime cannot load it"),
    ],
)
def test_spec_mistakes_are_one_line(byom, spec, needle):
    (byom["root"] / "weights.bin").write_bytes(b"not a model")
    spec = _fill(spec, byom)
    with pytest.raises(UserError) as caught:
        load_model(spec)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("spec", ["torchvision:resnet18@{pickled.pt}", "{pickled.pt}"])
def test_a_pickled_module_is_refused_naming_the_safe_formats(byom, spec):
    with pytest.raises(UserError) as caught:
        load_model(_fill(spec, byom))
    message = str(caught.value)
    assert "pickled Python object" in message and SAFE_FORMATS in message and "\n" not in message


def test_an_export_archive_with_pickled_weights_is_refused_before_loading(byom, tmp_path):
    """torch.export.load would unpickle weights marked use_pickle: the archive is refused."""
    tampered = tmp_path / "tampered.pt2"
    with zipfile.ZipFile(byom["model.pt2"]) as source, zipfile.ZipFile(tampered, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                data = json.dumps(config).encode()
            target.writestr(item, data)
    with pytest.raises(UserError, match="pickled Python object"):
        load_model(str(tampered))


def test_bare_paths_name_their_source(byom):
    assert parse_spec(str(byom["model.onnx"]))[0] == "onnx"
    assert parse_spec(str(byom["model.pt2"]))[0] == "export"
    assert parse_spec(str(byom["model.ts"]))[0] == "torchscript"
    assert parse_spec(str(byom["root"]))[0] == "checkpoint"
    assert parse_spec("timm:vit_tiny_patch16_224@w.safetensors") == (
        "timm",
        "vit_tiny_patch16_224@w.safetensors",
    )
