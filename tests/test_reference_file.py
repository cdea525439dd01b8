"""reference.source=file: the pipeline starts from a trained model of another architecture
(a random torchvision ResNet-18 saved as a state dict) instead of training one."""

from __future__ import annotations

import pytest
import torch

from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest
from compalign.config import Params
from compalign.errors import UserError
from compalign.preprocess import TransformParams
from compalign.train import predict_logits
from tasks.compress import compress
from tasks.data import prepare
from tasks.infra.code import stage_files
from tasks.infra.store import stage_key
from tasks.train import train_reference


def _params(byom, spec, **transform):
    return Params.model_validate(
        {
            "data": {
                "source": "imagefolder",
                "root": str(byom["images"]),
                "transform": transform or {"resize": 32, "centre_crop": 32},
            },
            "reference": {"source": "file", "path": spec},
        }
    )


def test_the_reference_stage_takes_the_file_and_its_preprocessing(byom, project):
    params = _params(byom, f"torchvision:resnet18@{byom['state.pt']}")
    data = prepare(params.data.prepare_params())
    reference = train_reference(data, params.reference.stage_params(params.data), "cpu")
    manifest = read_checkpoint_manifest(reference["path"])
    assert manifest["architecture"]["name"] == "torchvision:resnet18"
    assert manifest["source_sha256"] and manifest["source_spec"].startswith("torchvision:")
    # the pipeline's input (dataset-normalised) goes through the model's own preprocessing
    from compalign.data import load_split
    from compalign.model_sources import load_model
    from compalign.preprocess import model_transform

    test = load_split(data["path"], "test")
    loaded = load_model(params.reference.path)
    transform = model_transform(
        TransformParams(resize=32, centre_crop=32),
        [loaded],
        test.mean.flatten().tolist(),
        test.std.flatten().tolist(),
        3,
    )
    with torch.no_grad():
        expected = byom["model"](transform(test.images))
    logits = predict_logits(load_checkpoint(reference["path"]), test)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)

    # compressed as usual: magnitude pruning on any conv/linear model
    pruned = compress(None, reference, "magnitude_global", 0.5, {}, None)
    assert read_checkpoint_manifest(pruned["path"])["measured_sparsity"] == pytest.approx(
        0.5, abs=0.01
    )
    assert predict_logits(load_checkpoint(pruned["path"]), test).shape == expected.shape
    # static int8 traces it (the input adapter stays in float)
    calibration = {"batches": 1, "batch_size": 8}
    int8 = compress(data, reference, "quantize_static", None, {}, calibration)
    int8_logits = predict_logits(load_checkpoint(int8["path"]), test)
    assert (int8_logits.argmax(1) == expected.argmax(1)).float().mean() > 0.5


def test_the_reference_key_covers_the_files_content_and_its_source(byom, tmp_path):
    copy = tmp_path / "state.pt"
    copy.write_bytes(byom["state.pt"].read_bytes())
    params = _params(byom, f"torchvision:resnet18@{copy}")
    parameters = {"data": {"digest": "d"}, "reference": params.reference.stage_params(params.data)}
    assert "compalign/model_sources/torchvision_state.py" in stage_files("reference", parameters)
    before = stage_key("reference", parameters)
    state = torch.load(copy, weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1
    torch.save(state, copy)  # same path, other weights
    assert stage_key("reference", parameters) != before
    trained = Params().reference.stage_params(Params().data)
    assert "source" not in trained and "path" not in trained  # a trained reference's key: as before


def test_formats_the_compressors_cannot_work_on_are_refused(byom, project):
    params = _params(byom, str(byom["model.onnx"]))
    data = prepare(params.data.prepare_params())
    with pytest.raises(UserError, match="a onnx model cannot be compressed here"):
        train_reference(data, params.reference.stage_params(params.data), "cpu")


def test_source_file_needs_a_path():
    with pytest.raises(Exception, match="needs reference.path"):
        Params.model_validate({"reference": {"source": "file"}})
