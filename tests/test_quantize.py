"""Post-training quantization, half precision, QAT and checkpoint rebuilding (the quantizers:
compalign.compressors.quantize_static, quantize_dynamic, half).

Static int8 runs through PT2E (torchao) by default and FX graph mode behind backend="fx"; dynamic
int8 through torchao's quantize_ by default and eager torch.ao behind backend="eager"."""

from __future__ import annotations

import copy
import functools
import io

import cloudpickle
import pytest
import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn
from torch.nn.utils import parametrize, prune

from compalign.compressors import COMPRESSORS, half
from compalign.compressors import quantize_dynamic as dynamic
from compalign.compressors import quantize_static as static
from compalign.compressors.half import CastInput, to_half
from compalign.compressors.quantize_dynamic import quantize_dynamic
from compalign.compressors.quantize_static import Int8Program, QatProgram, quantize_static
from compalign.data import Split
from compalign.losses import LOSSES
from compalign.models import build_model
from compalign.train import TrainConfig, fit

# (model name, channels, image size): the digits CNN and the CIFAR ResNet-20
SHAPES = {"small_cnn": (1, 8), "resnet20": (3, 32)}
METHODS = ["quantize_dynamic", "quantize_static", "half"]
QUANTIZERS = {"quantize_dynamic": dynamic, "quantize_static": static, "half": half}

# torch.load of quantized tensors warns that TypedStorage is deprecated (inside torch's own code)
pytestmark = pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")


def inputs(name: str, count: int, seed: int = 0) -> torch.Tensor:
    channels, size = SHAPES[name]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, channels, size, size, generator=generator)


@functools.cache
def _float_model(name: str) -> nn.Module:
    channels, size = SHAPES[name]
    model = build_model(name, 10, channels, size)
    model.train()
    with torch.no_grad():
        for index in range(3):
            model(inputs(name, 64, seed=100 + index))
    return model.eval()


def float_model(name: str) -> nn.Module:
    """A random model whose batch-norm statistics match the inputs, as a trained model's would."""
    return copy.deepcopy(_float_model(name))


def compress(
    model: nn.Module, method: str, name: str, dtype=torch.float16, backend=None
) -> nn.Module:
    if method == "quantize_dynamic":
        return quantize_dynamic(model, backend or "torchao")
    if method == "quantize_static":
        calibration = [inputs(name, 32, seed=1), inputs(name, 32, seed=2)]
        return quantize_static(model, calibration, backend or "pt2e")
    return to_half(model, dtype)


def quantizer_options(method: str, dtype=torch.float16, backend=None):
    """The options of quantizer `method` (its `compress.<method>` section): the half dtype, or
    an int8 backend (None: the default)."""
    if method == "half":
        return COMPRESSORS[method].settings({"dtype": str(dtype).removeprefix("torch.")})
    return COMPRESSORS[method].settings({} if backend is None else {"backend": backend})


def prepare_qat(model, method, example, dtype=torch.float16, backend=None) -> nn.Module:
    return QUANTIZERS[method].prepare_qat(model, example, quantizer_options(method, dtype, backend))


def convert_qat(prepared, method, dtype=torch.float16, backend=None) -> nn.Module:
    return QUANTIZERS[method].convert_qat(prepared, quantizer_options(method, dtype, backend))


def rebuild(model, method, example, dtype=torch.float16, backend=None) -> nn.Module:
    return COMPRESSORS[method].rebuild(model, example, quantizer_options(method, dtype, backend))


def random_split(name: str, count: int = 64) -> Split:
    channels, size = SHAPES[name]
    generator = torch.Generator().manual_seed(0)
    return Split(
        images=torch.randint(
            0, 256, (count, channels, size, size), dtype=torch.uint8, generator=generator
        ),
        labels=torch.arange(count) % 10,
        example_ids=[str(i) for i in range(count)],
        mean=torch.full((1, channels, 1, 1), 0.5),
        std=torch.full((1, channels, 1, 1), 0.25),
        groups=None,
    )


def round_trip(model: nn.Module) -> dict:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).float().mean())


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize(
    "method, dtype, backend, tolerance, min_agreement",
    [
        pytest.param("quantize_dynamic", None, None, 0.05, 0.85, id="dynamic"),
        pytest.param("quantize_static", None, None, 0.15, 0.75, id="static"),
        pytest.param("half", torch.float16, None, 0.01, 0.95, id="float16"),
        pytest.param("half", torch.bfloat16, None, 0.05, 0.9, id="bfloat16"),
    ],
)
def test_ptq_close_to_float(name, method, dtype, backend, tolerance, min_agreement):
    """Each post-training method changes the logits only a little and rarely the prediction."""
    model = float_model(name)
    compressed = compress(model, method, name, dtype, backend)
    slow = name == "resnet20" and dtype == torch.float16  # float16 convs are slow on CPU
    x = inputs(name, 64 if slow else 256, seed=7)
    with torch.no_grad():
        reference, output = model(x), compressed(x)
    assert output.dtype == torch.float32 and output.shape == reference.shape
    assert not compressed.training
    scale = reference.abs().max()
    relative = float((output - reference).abs().max() / scale)
    assert 0 < relative < tolerance
    # A random network's logits are nearly tied on many inputs, where any rounding may flip the
    # argmax; where the float model is clearly decided, the compressed one agrees.
    top2 = reference.topk(2, dim=1).values
    clear = top2[:, 0] - top2[:, 1] > 0.05 * scale
    assert clear.sum() >= 16
    assert agreement(output[clear], reference[clear]) >= 0.95
    assert agreement(output, reference) >= min_agreement


def test_pt2e_static_is_int8_and_close_to_fx():
    """PT2E static int8 (default): an exported program with int8 weights for every conv and the
    linear layer and quantized activations, no float module left; its logits are no further from
    the float model's than the FX fallback's, on the digits CNN."""
    model = float_model("small_cnn")
    static = compress(model, "quantize_static", "small_cnn")
    assert isinstance(static, Int8Program)
    int8_weights = [b for b in static.buffers() if b.dtype == torch.int8]
    assert len(int8_weights) == 4  # three convs and the linear layer
    assert static.activation_scales.numel() >= 8 and (static.activation_scales > 0).all()
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) for m in static.modules())
    fx = compress(model, "quantize_static", "small_cnn", backend="fx")
    assert nniq.ConvReLU2d in {type(module) for module in fx.modules()}
    x = inputs("small_cnn", 256, seed=7)
    with torch.no_grad():
        reference = model(x)
        errors = {
            name: float((quantized(x) - reference).abs().mean())
            for name, quantized in (("pt2e", static), ("fx", fx))
        }
        agreements = {"pt2e": agreement(static(x), reference), "fx": agreement(fx(x), reference)}
    assert errors["pt2e"] <= 1.25 * errors["fx"], errors
    assert agreements["pt2e"] >= agreements["fx"] - 0.03, agreements


def test_quantized_modules_are_present():
    """Static FX fallback: fused int8 conv+relu and int8 linear; dynamic: int8 Linear weights
    (torchao's, or eager torch.ao's); half: half weights."""
    model = float_model("resnet20")
    static = compress(model, "quantize_static", "resnet20", backend="fx")
    static_types = {type(module) for module in static.modules()}
    assert nniq.ConvReLU2d in static_types and nnq.Linear in static_types
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) for m in static.modules())
    dynamic = quantize_dynamic(model)
    assert type(dynamic.fc.weight).__name__ == "Int8Tensor"
    assert dynamic.fc.weight.qdata.dtype == torch.int8
    assert isinstance(dynamic.conv1, nn.Conv2d)  # dynamic quantization leaves convs in float
    eager = quantize_dynamic(model, "eager")
    assert isinstance(eager.fc, nnqd.Linear) and eager.fc.weight().dtype == torch.qint8
    for dtype in (torch.float16, torch.bfloat16):
        half = to_half(model, dtype)
        assert isinstance(half, CastInput)
        assert {p.dtype for p in half.parameters()} == {dtype}


def test_caller_model_unchanged_and_masks_folded():
    """Quantizing a pruned model keeps its masks; the quantized copy holds the pruned zeros."""
    model = COMPRESSORS["magnitude_global"](float_model("small_cnn"), 0.5)
    model(inputs("small_cnn", 4)).sum().backward()  # a forward with gradients: the awkward case
    before = {key: value.clone() for key, value in model.state_dict().items()}
    for method in METHODS:
        compress(model, method, "small_cnn")
    assert prune.is_pruned(model) and model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    half = to_half(model)
    assert not prune.is_pruned(half)
    zeros = float((half.module[0].weight == 0).float().mean())
    assert zeros == pytest.approx(float((model[0].weight == 0).float().mean()))


@pytest.mark.parametrize(
    "method, dtype, backend",
    [
        pytest.param("quantize_dynamic", None, None, id="dynamic"),
        pytest.param("quantize_dynamic", None, "eager", id="dynamic-eager"),
        pytest.param("quantize_static", None, None, id="static"),
        pytest.param("quantize_static", None, "fx", id="static-fx"),
        pytest.param("half", torch.float16, None, id="float16"),
        pytest.param("half", torch.bfloat16, None, id="bfloat16"),
    ],
)
def test_rebuild_round_trip(method, dtype, backend):
    """save -> torch.load(weights_only) -> rebuild(fresh model) -> load_state_dict: same outputs;
    the model also pickles and unpickles (MLflow logs models pickled)."""
    model = float_model("resnet20")
    compressed = compress(model, method, "resnet20", dtype, backend)
    x = inputs("resnet20", 8, seed=9)
    empty = rebuild(
        build_model("resnet20", 10, 3, 32, seed=5), method, x[:1], dtype or torch.float16, backend
    )
    with torch.no_grad():
        assert not torch.equal(empty(x), compressed(x))
        empty.load_state_dict(round_trip(compressed))
        assert torch.equal(empty(x), compressed(x))
        if backend != "fx":  # FX's int8 modules pickle but do not unpickle (a torch.ao limit)
            unpickled = cloudpickle.loads(cloudpickle.dumps(compressed))
            assert torch.equal(unpickled(x), compressed(x))
    assert not empty.training


@pytest.mark.parametrize("method", METHODS)
def test_qat_fine_tunes_and_converts(method):
    """prepare_qat -> fit -> convert_qat gives the deployable module types and reloads exactly."""
    model = float_model("small_cnn")
    example = inputs("small_cnn", 2)
    prepared = prepare_qat(model, method, example)
    before = {k: v.clone() for k, v in prepared.state_dict().items()}
    fit(
        prepared,
        random_split("small_cnn"),
        TrainConfig(epochs=2, batch_size=16, lr=0.05),
        LOSSES["ce"](),
    )
    changed = [k for k, v in prepared.state_dict().items() if not torch.equal(before[k], v)]
    assert changed  # the optimizer moved the weights
    converted = convert_qat(prepared, method)
    assert not converted.training
    types = {type(module) for module in converted.modules()}
    if method == "quantize_static":  # PT2E: prepare_qat_pt2e, convert_pt2e
        assert isinstance(prepared, QatProgram) and isinstance(converted, Int8Program)
        assert sum(b.dtype == torch.int8 for b in converted.buffers()) == 4
    elif method == "quantize_dynamic":
        assert type(converted[-1].weight).__name__ == "Int8Tensor" and nn.Conv2d in types
    else:
        assert isinstance(converted, CastInput)
        assert {p.dtype for p in converted.parameters()} == {torch.float16}
    assert not any(parametrize.is_parametrized(module) for module in converted.modules())
    x = inputs("small_cnn", 32, seed=3)
    empty = rebuild(build_model("small_cnn", 10, 1, 8, seed=5), method, example[:1])
    empty.load_state_dict(round_trip(converted))
    with torch.no_grad():
        out = converted(x)
        assert torch.isfinite(out).all() and torch.equal(empty(x), out)
        # the fake-quantized model predicts what the converted model does
        assert agreement(prepared(x), out) >= 0.9


def test_qat_weights_match_deployed_weights():
    """The weights trained against are exactly those the converted int8 / half model holds."""
    model = float_model("small_cnn")
    example = inputs("small_cnn", 2)
    dynamic = prepare_qat(model, "quantize_dynamic", example)
    linear = dynamic[-1]
    assert torch.equal(
        linear.weight, convert_qat(dynamic, "quantize_dynamic")[-1].weight.dequantize()
    )
    eager = prepare_qat(model, "quantize_dynamic", example, backend="eager")
    converted = convert_qat(eager, "quantize_dynamic", backend="eager")
    assert torch.equal(eager[-1].weight, converted[-1].weight().dequantize())
    with pytest.raises(ValueError, match="prepared for backend"):
        convert_qat(eager, "quantize_dynamic")
    half = prepare_qat(model, "half", example, dtype=torch.bfloat16)
    converted = convert_qat(half, "half", torch.bfloat16)
    assert torch.equal(half[0].weight.to(torch.bfloat16), converted.module[0].weight)
    with pytest.raises(ValueError, match="prepared for"):
        convert_qat(half, "half", torch.float16)


@pytest.mark.parametrize("method", ["quantize_dynamic", "half"])
def test_qat_gradient_is_straight_through(method):
    """Rounding in the forward pass still passes the full gradient to every float weight."""
    model = float_model("small_cnn")
    prepared = prepare_qat(model, method, inputs("small_cnn", 2)).eval()  # BN as in `model`
    prepared(inputs("small_cnn", 8)).sum().backward()
    original = prepared[-1].parametrizations.weight.original
    reference = copy.deepcopy(model)
    reference(inputs("small_cnn", 8)).sum().backward()
    assert original.grad is not None and (original.grad != 0).all()
    assert torch.allclose(original.grad, reference[-1].weight.grad, rtol=0.05, atol=1e-3)


def test_qat_static_eval_does_not_move_ranges():
    """Evaluating the prepared model leaves its quantization ranges alone; training moves them."""
    model = float_model("small_cnn")
    prepared = prepare_qat(model, "quantize_static", inputs("small_cnn", 2))
    with torch.no_grad():
        prepared(inputs("small_cnn", 32, seed=3))  # train mode: the ranges are initialised
    prepared.eval()
    with torch.no_grad():
        prepared(inputs("small_cnn", 32, seed=3))  # the hook switches the observers off
    # num_batches_tracked still counts in eval (the exported graph keeps its add_; batch norm
    # itself runs in eval mode): it moves no range or statistic, so it is left out here
    before = {
        k: v.clone()
        for k, v in prepared.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    with torch.no_grad():
        prepared(inputs("small_cnn", 32, seed=4) * 3)
    after = prepared.state_dict()
    assert all(torch.equal(value, after[k]) for k, value in before.items())
    prepared.train()
    with torch.no_grad():
        prepared(inputs("small_cnn", 32, seed=4) * 3)
    assert any(not torch.equal(value, prepared.state_dict()[k]) for k, value in before.items())


def test_deterministic():
    """The same model and calibration data give bit-identical quantized models."""
    model = float_model("small_cnn")
    x = inputs("small_cnn", 16, seed=5)
    for method in METHODS:
        with torch.no_grad():
            assert torch.equal(
                compress(model, method, "small_cnn")(x), compress(model, method, "small_cnn")(x)
            )


def test_rejects_unknown_backend_and_dtype():
    """Unknown backends and non-half dtypes are refused with a clear error."""
    model = float_model("small_cnn")
    with pytest.raises(ValueError, match="float16 or torch.bfloat16"):
        to_half(model, torch.float64)
    with pytest.raises(ValueError, match="calibration batch"):
        quantize_static(model, [])
    with pytest.raises(ValueError, match="unknown quantize_static backend"):
        quantize_static(model, [inputs("small_cnn", 2)], backend="onnx")
    with pytest.raises(ValueError, match="unknown quantize_dynamic backend"):
        quantize_dynamic(model, backend="fx")


def test_torchao_checkpoint_loads_where_torchao_was_never_imported(tmp_path):
    """A QAT-fine-tuned torchao dynamic int8 model, saved by the pipeline's checkpoint writer,
    loads with weights_only=True in a process that has not imported torchao (the pipeline's
    tasks read checkpoints other processes wrote): its int8 weights are saved as plain tensors,
    not as torchao's Int8Tensor, which weights_only refuses there."""
    import subprocess
    import sys

    from compalign.checkpoint import CHECKPOINT_FILE, save_checkpoint

    prepared = prepare_qat(float_model("small_cnn"), "quantize_dynamic", inputs("small_cnn", 2))
    fit(
        prepared,
        random_split("small_cnn"),
        TrainConfig(epochs=1, batch_size=16, lr=0.05),
        LOSSES["ce"](),
    )
    converted = convert_qat(prepared, "quantize_dynamic")
    architecture = {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "image_size": 8}
    save_checkpoint(converted, architecture, tmp_path / "model", kind="quantize_dynamic")
    payload = torch.load(tmp_path / "model" / CHECKPOINT_FILE, weights_only=True)
    assert {type(value) for value in payload["state_dict"].values()} == {torch.Tensor}
    assert payload["state_dict"]["12.weight.qdata"].dtype == torch.int8
    x = inputs("small_cnn", 16, seed=3)
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch\n"
        "from compalign.checkpoint import load_checkpoint\n"
        "assert 'torchao' not in sys.modules\n"
        f"model = load_checkpoint({str(tmp_path / 'model')!r})\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        f"    torch.save(model(x), {str(tmp_path / 'out.pt')!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.no_grad():
        expected = converted(x)
    assert not torch.equal(expected, quantize_dynamic(build_model("small_cnn", 10, 1, 8))(x))
    assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), expected)


@pytest.mark.parametrize(
    ("method", "backend"),
    [
        ("quantize_static", "pt2e"),
        ("quantize_static", "fx"),
        ("quantize_dynamic", "torchao"),
        ("quantize_dynamic", "eager"),
        ("half", None),
    ],
)
def test_int8_models_get_no_attribution_agreement(method, backend):
    """The audit's attribution metric leaves every int8 model out, whichever backend made it (no
    gradient reaches the input of a PT2E program or torchao's int8: captum fails on them), and
    measures a half-precision one."""
    import numpy as np
    import pandas as pd

    from compalign.attribution import attribution_maps
    from compalign.audit import AuditInputs, ReferenceAudit, predictions_frame
    from compalign.audit.metrics.attribution import ENTRY as ATTRIBUTION
    from compalign.audit.metrics.attribution import MAPS_FILE, attributable
    from compalign.config import AuditParams

    reference = float_model("small_cnn")
    compressed = compress(reference, method, "small_cnn", torch.bfloat16, backend)
    split = random_split("small_cnn", 16)
    images = split.normalise(split.images)
    if backend in ("pt2e", "torchao"):  # what the pipeline ran into before the metric skipped them
        with pytest.raises(RuntimeError, match="not have been used in the graph"):
            attribution_maps(compressed, images[:2], torch.zeros(2, dtype=torch.long), "saliency")
    settings = AuditParams(
        attribution_samples=4,
        bootstrap_samples=200,
        integrated_gradients_steps=4,
        figure_examples=0,
    )

    def audit_inputs(model, reference_audit=None):
        with torch.no_grad():
            logits = model(images).float()
        frame = predictions_frame(split.example_ids, split.labels, logits)
        groups = pd.DataFrame({"odd": split.labels.numpy() % 2})
        return AuditInputs(
            frame,
            [str(c) for c in range(10)],
            groups,
            settings,
            reference_audit,
            model=model,
            images=split.images,
            normalise=split.normalise,
        )

    first = audit_inputs(reference)
    assert ATTRIBUTION.run(first) == {}
    maps = first.outputs[MAPS_FILE]
    assert maps["integrated_gradients"].shape == (4, 8, 8) and np.isfinite(maps["saliency"]).all()
    metrics = ATTRIBUTION.run(audit_inputs(compressed, ReferenceAudit(first.frame, {}, maps)))
    assert attributable(compressed) == (method == "half")
    if method == "half":
        assert -1 <= metrics["attribution.integrated_gradients.spearman_mean"] <= 1
    else:
        assert metrics == {}


@pytest.mark.parametrize("backend", ["pt2e", "fx"])
def test_float_layers_stay_float_and_their_checkpoint_rebuilds(tmp_path, backend):
    """compress.quantize_static.float_layers: the named conv keeps a float weight, the others
    are int8; a checkpoint saved with those options rebuilds to the same outputs; a name that is
    no conv or linear layer is one line."""
    from compalign.checkpoint import load_checkpoint, save_checkpoint
    from compalign.errors import UserError

    model = float_model("small_cnn")
    calibration = [inputs("small_cnn", 32, seed=1)]
    everything = quantize_static(model, calibration, backend)
    kept = quantize_static(model, calibration, backend, float_layers=["3"])
    x = inputs("small_cnn", 16, seed=4)
    with torch.no_grad():
        assert not torch.equal(kept(x), everything(x))
    if backend == "pt2e":
        weights = [v for v in kept.state_dict().values() if v.dim() == 4]  # conv weights
        assert [w.dtype for w in weights].count(torch.float32) == 1  # layer "3" only
        assert [w.dtype for w in weights].count(torch.int8) == 2
    options = {"backend": backend, "float_layers": ["3"]}
    channels, size = SHAPES["small_cnn"]
    architecture = {
        "name": "small_cnn",
        "num_classes": 10,
        "in_channels": channels,
        "image_size": size,
    }
    save_checkpoint(kept, architecture, tmp_path, kind="quantize_static", options=options)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path)(x), kept(x))
    with pytest.raises(UserError, match=r"\['4'\] are not conv or linear layers"):
        quantize_static(model, calibration, backend, float_layers=["4"])
