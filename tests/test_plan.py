"""flows/plan.py: the grid of compressed models, its grouping, and the arguments and run labels
each model gets."""

from __future__ import annotations

import inspect

import pytest

from compalign.compressors import COMPRESSORS, LEVEL_KINDS
from compalign.tuning import candidates
from flows.plan import (
    ModelSpec,
    align_arguments,
    compress_arguments,
    compressed_id,
    compressed_labels,
    grid_by_compression,
    importance_loss,
    level_kind,
    losses_for,
    model_grid,
    reference_labels,
)
from tasks.align import align
from tasks.compress import compress

TWO_METHODS = "compress.methods=[magnitude_global, quantize_dynamic]"
TAYLOR = ("compress.methods=[structured]", "compress.structured.importance=taylor")


def test_model_spec_names_and_fine_tuning():
    pruned = ModelSpec("magnitude_global", 0.95, "kd")
    assert pruned.compressed_name == "magnitude_global-0.95"
    assert pruned.name == "magnitude_global-0.95-kd"
    assert pruned.fine_tuned
    assert pruned.family == "unstructured"
    quantized = ModelSpec("quantize_static", None, "none")
    assert quantized.name == "quantize_static-none"
    assert not quantized.fine_tuned
    assert quantized.family == "quantization"


def test_grid_is_every_method_level_and_loss_in_a_stable_order(tiny_params):
    params = tiny_params(
        TWO_METHODS, "compress.sparsities=[0.9, 0.5]", "align.losses=[none, ce, kd]"
    )
    grid = model_grid(params)
    assert [spec.name for spec in grid] == [
        "magnitude_global-0.5-none",
        "magnitude_global-0.5-ce",
        "magnitude_global-0.5-kd",
        "magnitude_global-0.9-none",
        "magnitude_global-0.9-ce",
        "magnitude_global-0.9-kd",
        "quantize_dynamic-none",  # a quantizer has no levels, and is not fine-tuned by default
    ]
    assert grid == model_grid(params)


@pytest.mark.parametrize("quantizer", ["quantize_dynamic", "quantize_static", "half"])
def test_quantizers_get_only_none_unless_quantization_aware(tiny_params, quantizer):
    plain = tiny_params("align.losses=[none, ce, kd]")
    aware = tiny_params("align.losses=[none, ce, kd]", "align.quantization_aware=true")
    assert losses_for(plain, quantizer) == ["none"]
    assert losses_for(aware, quantizer) == ["none", "ce", "kd"]
    # pruned models are fine-tuned with every loss either way
    assert losses_for(plain, "magnitude_global") == ["none", "ce", "kd"]
    assert losses_for(aware, "magnitude_global") == ["none", "ce", "kd"]


def test_quantization_aware_grid_fine_tunes_the_quantizer(tiny_params):
    params = tiny_params(
        "compress.methods=[quantize_dynamic]",
        "align.losses=[none, ce]",
        "align.quantization_aware=true",
    )
    assert [spec.name for spec in model_grid(params)] == [
        "quantize_dynamic-none",
        "quantize_dynamic-ce",
    ]


def test_groups_are_one_per_compression_with_the_baseline_loss_first(tiny_params):
    params = tiny_params(TWO_METHODS, "align.losses=[kd, none, ce]")
    groups = grid_by_compression(params)
    assert [[spec.name for spec in group] for group in groups] == [
        ["magnitude_global-0.9-ce", "magnitude_global-0.9-kd", "magnitude_global-0.9-none"],
        ["magnitude_global-0.97-ce", "magnitude_global-0.97-kd", "magnitude_global-0.97-none"],
        ["quantize_dynamic-none"],
    ]
    assert sorted(spec.name for group in groups for spec in group) == sorted(
        spec.name for spec in model_grid(params)
    )


def test_taylor_structured_pruning_ranks_with_each_loss(tiny_params):
    params = tiny_params(*TAYLOR)
    assert importance_loss(params, ModelSpec("structured", 0.5, "kd")) == "kd"
    assert importance_loss(params, ModelSpec("structured", 0.5, "ce")) == "ce"
    # the model audited as compressed was ranked with the baseline loss
    assert importance_loss(params, ModelSpec("structured", 0.5, "none")) == "ce"


def test_other_compressions_need_no_loss(tiny_params):
    l1 = tiny_params("compress.methods=[structured]")  # the default importance is l1
    assert importance_loss(l1, ModelSpec("structured", 0.5, "kd")) is None
    assert importance_loss(l1, ModelSpec("magnitude_global", 0.5, "kd")) is None
    assert importance_loss(l1, ModelSpec("quantize_dynamic", None, "none")) is None


def test_compressed_id_names_the_ranking_loss_so_only_taylor_models_differ_by_loss(tiny_params):
    taylor = tiny_params(*TAYLOR)
    assert compressed_id(taylor, ModelSpec("structured", 0.5, "kd")) == "structured-0.5-by-kd"
    # `none` and `ce` audit the same compressed model: both were ranked with ce
    assert compressed_id(taylor, ModelSpec("structured", 0.5, "none")) == "structured-0.5-by-ce"
    assert compressed_id(taylor, ModelSpec("structured", 0.5, "ce")) == "structured-0.5-by-ce"
    l1 = tiny_params("compress.methods=[structured]")
    ids = {compressed_id(l1, ModelSpec("structured", 0.5, loss)) for loss in ("none", "ce", "kd")}
    assert ids == {"structured-0.5"}
    assert compressed_id(l1, ModelSpec("quantize_dynamic", None, "none")) == "quantize_dynamic"


def test_compress_arguments_of_a_data_free_pruner(tiny_params):
    params = tiny_params()
    needs_data, arguments = compress_arguments(params, ModelSpec("magnitude_global", 0.9, "kd"))
    assert needs_data is False
    assert arguments == {
        "method": "magnitude_global",
        "level": 0.9,
        "options": params.compress.options("magnitude_global"),
        "calibration": None,
        "loss": None,
        "hyperparameters": None,
    }


def test_compress_arguments_of_taylor_pruning_carry_calibration_and_the_loss(tiny_params):
    params = tiny_params(
        *TAYLOR,
        "compress.calibration_batches=3",
        "compress.calibration_batch_size=16",
        "align.kd.alpha=0.5",
    )
    needs_data, arguments = compress_arguments(params, ModelSpec("structured", 0.5, "kd"))
    assert needs_data is True
    assert arguments["calibration"] == {"batches": 3, "batch_size": 16}
    assert arguments["options"]["importance"] == "taylor"
    assert arguments["loss"] == "kd"
    assert arguments["hyperparameters"]["alpha"] == 0.5
    assert arguments["hyperparameters"] == params.align.loss_hyperparameters("kd")


def test_compress_arguments_of_a_calibrated_quantizer(tiny_params):
    params = tiny_params("compress.methods=[quantize_static]")
    needs_data, arguments = compress_arguments(params, ModelSpec("quantize_static", None, "none"))
    assert needs_data is True
    assert arguments["level"] is None
    assert arguments["calibration"] is not None
    assert arguments["loss"] is None and arguments["hyperparameters"] is None


def test_align_arguments(tiny_params):
    params = tiny_params("align.kd.temperature=2.0", "align.tune=true", "align.epochs=3")
    arguments = align_arguments(params, ModelSpec("magnitude_global", 0.9, "kd"), "cpu")
    assert arguments["method"] == "magnitude_global"
    assert arguments["level"] == 0.9
    assert arguments["loss"] == "kd"
    assert arguments["hyperparameters"]["temperature"] == 2.0
    assert arguments["training"]["epochs"] == 3
    assert arguments["training"]["batch_size"] == 32
    assert "losses" not in arguments["training"] and "kd" not in arguments["training"]
    assert arguments["device"] == "cpu"
    assert arguments["tune"] is True
    # every loss of the run gets as many tuning candidates as label_preserving's grid gives
    assert arguments["tune_budget"] == len(candidates("label_preserving", {})) == 6
    assert (
        align_arguments(tiny_params(), ModelSpec("magnitude_global", 0.9, "kd"), "cpu")[
            "tune_budget"
        ]
        is None
    )


def test_arguments_fit_the_task_signatures(tiny_params):
    """What the plan passes is what the compress and align stage functions accept."""
    params = tiny_params(*TAYLOR)
    spec = ModelSpec("structured", 0.5, "kd")
    data = reference = compressed = {"path": "p", "digest": "d"}
    _, arguments = compress_arguments(params, spec)
    inspect.signature(compress).bind(data, reference, **arguments)
    inspect.signature(align).bind(
        data, reference, compressed, **align_arguments(params, spec, "cpu")
    )


def test_level_kind_comes_from_the_compressor():
    assert level_kind("magnitude_global") == "weight_sparsity"
    assert level_kind("structured") == "flops_removed"
    assert level_kind("magnitude_channel") == "channel_sparsity"
    assert level_kind("quantize_dynamic") == "none"
    for name, entry in COMPRESSORS.items():
        kind = level_kind(name)
        assert kind in LEVEL_KINDS if entry.uses_level else kind == "none", name


def test_reference_labels(tiny_params):
    params = tiny_params("reference.model=resnet20")
    assert reference_labels(params) == {
        "name": "reference",
        "role": "reference",
        "compressor": "none",
        "sparsity": "0",
        "level_kind": "none",
        "loss": "none",
        "dataset": "digits",
        "model": "resnet20",
    }


def test_compressed_labels(tiny_params):
    params = tiny_params()
    pruned = compressed_labels(params, ModelSpec("magnitude_global", 0.97, "kd"))
    assert pruned == {
        "name": "magnitude_global-0.97-kd",
        "role": "compressed",
        "compressor": "magnitude_global",
        "sparsity": "0.97",
        "level_kind": "weight_sparsity",
        "loss": "kd",
        "dataset": "digits",
        "model": "small_cnn",
    }
    quantized = compressed_labels(params, ModelSpec("quantize_dynamic", None, "none"))
    assert quantized["sparsity"] == "0"
    assert quantized["level_kind"] == "none"
    # the same tags on every child run, all strings (MLflow tags)
    assert set(quantized) == set(pruned) == set(reference_labels(params))
    assert all(isinstance(value, str) for value in quantized.values())
