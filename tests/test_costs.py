"""Parameter counts, serialized size and CPU latency of float, pruned, int8 and half models."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import prune

from compalign.compressors import COMPRESSORS
from compalign.compressors.half import to_half
from compalign.compressors.quantize_dynamic import quantize_dynamic
from compalign.compressors.quantize_static import quantize_static
from compalign.costs import measure_latency, parameter_counts, serialized_size
from compalign.models import build_model
from compalign.pruning import folded_copy, prunable_parameters


def pruned(name: str = "resnet20", sparsity: float = 0.5, forward: bool = True):
    """A model pruned by global magnitude; after a forward pass with gradients, if `forward`."""
    channels, size = (3, 32) if name == "resnet20" else (1, 8)
    model = COMPRESSORS["magnitude_global"](build_model(name, 10, channels, size), sparsity)
    if forward:
        model(torch.randn(2, channels, size, size)).sum().backward()
    return model


def test_parameter_counts_dense():
    """A dense model: every parameter counted; random weights are nonzero (BN biases start at 0)."""
    model = build_model("resnet20", 10, 3, 32)
    counts = parameter_counts(model)
    assert counts["params_total"] == sum(p.numel() for p in model.parameters())
    bn_biases = sum(m.bias.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert counts["params_nonzero"] == counts["params_total"] - bn_biases


def test_parameter_counts_masked():
    """Pruned to 50%: the masked weights count as zeros, about half of all parameters."""
    model = pruned()
    counts = parameter_counts(model)
    weights = sum(getattr(module, name).numel() for module, name in prunable_parameters(model))
    dense = parameter_counts(build_model("resnet20", 10, 3, 32))
    assert counts["params_total"] == dense["params_total"]
    assert dense["params_nonzero"] - counts["params_nonzero"] == round(0.5 * weights)
    assert counts["params_nonzero"] / counts["params_total"] == pytest.approx(0.5, abs=0.02)
    assert parameter_counts(folded_copy(model)) == counts


def test_parameter_counts_quantized():
    """Packed int8 weights are counted too (conv biases appear where batch norm was folded in)."""
    model = build_model("resnet20", 10, 3, 32).eval()
    weights = sum(getattr(module, name).numel() for module, name in prunable_parameters(model))
    static = parameter_counts(quantize_static(model, [torch.randn(8, 3, 32, 32)]))
    assert weights < static["params_total"] < parameter_counts(model)["params_total"]
    for compressed in (quantize_dynamic(model), to_half(model)):
        counts = parameter_counts(compressed)
        assert counts["params_total"] == parameter_counts(model)["params_total"]
        # a few tiny weights round to zero in int8
        assert counts["params_nonzero"] == pytest.approx(counts["params_total"], rel=0.01)


def test_folded_copy_folds_masks_and_leaves_caller_alone():
    """folded_copy works after a forward pass with gradients and keeps the caller's masks."""
    model = pruned("small_cnn")
    copy = folded_copy(model)
    assert prune.is_pruned(model) and not prune.is_pruned(copy)
    assert torch.equal(copy[0].weight, model[0].weight_orig * model[0].weight_mask)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(copy.eval()(x), model.eval()(x))


def test_serialized_size_masked_equals_dense():
    """A masked model is stored dense: same bytes as the folded model, but it gzips much better."""
    model = pruned()
    masked = serialized_size(model)
    dense = serialized_size(folded_copy(model))
    unpruned = serialized_size(build_model("resnet20", 10, 3, 32))
    assert abs(masked["size_bytes"] - dense["size_bytes"]) < 300
    assert abs(masked["size_bytes"] - unpruned["size_bytes"]) < 300
    assert masked["size_gzip_bytes"] < 0.8 * unpruned["size_gzip_bytes"]
    assert unpruned["size_gzip_bytes"] < unpruned["size_bytes"]
    assert prune.is_pruned(model)


def test_serialized_size_int8_and_half():
    """Static int8 stores ResNet-20 in well under half the float bytes; half in about half."""
    model = build_model("resnet20", 10, 3, 32).eval()
    full = serialized_size(model)["size_bytes"]
    assert (
        serialized_size(quantize_static(model, [torch.randn(8, 3, 32, 32)]))["size_bytes"]
        < 0.4 * full
    )
    assert serialized_size(to_half(model))["size_bytes"] < 0.6 * full


def test_measure_latency_all_model_kinds():
    """Positive medians with the documented keys for float, masked, int8 and half models."""
    model = build_model("small_cnn", 10, 1, 8).eval()
    example = torch.randn(1, 1, 8, 8)
    masked = pruned("small_cnn")
    kinds = {
        "float": model,
        "masked": masked,
        "dynamic": quantize_dynamic(model),
        "static": quantize_static(model, [torch.randn(16, 1, 8, 8)]),
        "float16": to_half(model),
        "bfloat16": to_half(model, torch.bfloat16),
    }
    spread = {f"latency_ms_b{size}_{end}" for size in (1, 64) for end in ("p10", "p90")}
    context = {"latency_threads", "latency_load", "latency_cores"}
    for kind, candidate in kinds.items():
        result = measure_latency(candidate, example, warmup=1, repeats=3)
        assert set(result) == {"latency_ms_b1", "latency_ms_b64", *spread, *context}, kind
        assert result["latency_ms_b1"] > 0 and result["latency_ms_b64"] > 0, kind
        for size in (1, 64):  # the median lies within its spread
            low, high = result[f"latency_ms_b{size}_p10"], result[f"latency_ms_b{size}_p90"]
            assert low <= result[f"latency_ms_b{size}"] <= high, kind
        assert result["latency_threads"] == torch.get_num_threads()
    assert prune.is_pruned(masked) and hasattr(masked[0], "weight_mask")
    assert set(measure_latency(model, example, batch_sizes=(2,), repeats=1)) == {
        "latency_ms_b2",
        "latency_ms_b2_p10",
        "latency_ms_b2_p90",
        *context,
    }
    with pytest.raises(ValueError, match=r"\[1, C, H, W\]"):
        measure_latency(model, torch.randn(4, 1, 8, 8))


def test_a_fixed_batch_model_is_timed_at_its_batch_and_labelled():
    """A model that only takes batch 1 is called once per timed pass at batch 1: its batch-64
    latency is 64 times that, labelled "batch 1 x 64" (never 64 chunked calls timed as one
    batch); a model without a fixed batch gets no label."""
    from compalign.costs import batching_label, time_forward

    seen = []

    def forward(images):
        seen.append(len(images))
        return images.flatten(1)[:, :3]

    example = torch.zeros(1, 1, 4, 4)
    result = time_forward(forward, example, (1, 64), warmup=1, repeats=4, fixed_batch=1)
    assert set(seen) == {1} and len(seen) == 5  # timed once, at batch 1 (1 warm-up, 4 passes)
    assert result["latency_ms_b64"] == pytest.approx(64 * result["latency_ms_b1"])
    assert result["latency_ms_b64_p90"] == pytest.approx(64 * result["latency_ms_b1_p90"])
    assert batching_label(result, 64) == "batch 1 x 64"
    assert batching_label(result, 1) == ""
    assert batching_label(time_forward(forward, example, (64,), 0, 1), 64) == ""
    two = time_forward(forward, example, (1, 5), warmup=0, repeats=1, fixed_batch=2)
    assert batching_label(two, 1) == "batch 2 x 1" and batching_label(two, 5) == "batch 2 x 3"


def test_latency_under_load_is_unreliable():
    from compalign.costs import unreliable

    assert unreliable({"latency_load": 3.2, "latency_cores": 2})
    assert not unreliable({"latency_load": 1.9, "latency_cores": 2})
    assert not unreliable({"latency_load": float("nan"), "latency_cores": 2})


def test_compiled_latency_is_time_boxed_and_says_why_it_is_missing(tmp_path):
    """The compile child is killed at its time limit, and a model it cannot load or compile
    gives the reason (the audit shows it beside the eager latency)."""
    from compalign.checkpoint import save_checkpoint
    from compalign.costs import compiled_latency

    architecture = {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "image_size": 8}
    model = quantize_dynamic(build_model(**architecture).eval())
    save_checkpoint(model, architecture, tmp_path / "int8", kind="quantize_dynamic", options={})
    example = torch.randn(1, 1, 8, 8)
    found, why = compiled_latency(str(tmp_path / "int8"), example, [1], 0, 1, timeout_s=0.5)
    assert found == {} and why == "not compiled within 0.5 s"
    found, why = compiled_latency(str(tmp_path / "nothing"), example, [1], 0, 1, timeout_s=120)
    assert found == {} and why.startswith("torch.compile failed: ") and "nothing" in why
