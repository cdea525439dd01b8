"""Quantization compressors: post-training int8 (dynamic, static), half precision, and QAT.

Methods are named as in params.yaml: "quantize_dynamic" (int8 Linear weights, activations
quantized on the fly), "quantize_static" (FX graph mode int8 with calibrated activation ranges,
x86 backend) and "half" (float16 or bfloat16 weights and compute). Every function works on a copy:
the caller's float model (and any pruning masks it carries) is left as it was. The int8 models run
on the process's `torch.backends.quantized.engine` (x86 on this hardware).

`torch.ao.quantization` is deprecated in torch 2.x (in favour of torchao) but still works; its
deprecation warnings are silenced locally around each call.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator

import torch
import torch.ao.quantization as tq
from torch import nn
from torch.ao.quantization import quantize_fx
from torch.nn.utils import parametrize

from compalign.finetune import Family, FineTuneJob
from compalign.pruning import folded_copy

METHODS = ("quantize_dynamic", "quantize_static", "half")
HALF_DTYPES = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the warnings torch.ao.quantization emits on every call (deprecation, reduce_range)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", r".*reduce_range will be deprecated")
        warnings.filterwarnings(
            "ignore", r".*quantized tensor creation functions .* are deprecated"
        )
        yield


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose one of {list(METHODS)}")


def _check_half(dtype: torch.dtype) -> None:
    if dtype not in HALF_DTYPES:
        raise ValueError(
            f"half precision dtype must be torch.float16 or torch.bfloat16, got {dtype}"
        )


class CastInput(nn.Module):
    """Runs `module` in a lower precision: casts the float32 input to `dtype` and the output back
    to float32 (so a half-precision model is a drop-in replacement)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.dtype)).float()


# --------------------------------------------------------------------------------------------
# Post-training quantization
# --------------------------------------------------------------------------------------------


def quantize_dynamic(model: nn.Module) -> nn.Module:
    """Post-training dynamic int8 quantization of the Linear layers (weights int8,
    activations quantized on the fly)."""
    clone = folded_copy(model).eval()
    with _quiet():
        return tq.quantize_dynamic(clone, {nn.Linear}, dtype=torch.qint8, inplace=True).eval()


def float_parts_kept(model: nn.Module, mapping: tq.QConfigMapping) -> tq.QConfigMapping:
    """`mapping` with the submodules that must compute in float left unquantized: those whose
    class sets `keeps_float` (an input adapter's antialiased resize has no int8 kernel)."""
    for name, module in model.named_modules():
        if name and getattr(module, "keeps_float", False):
            mapping.set_module_name(name, None)
    return mapping


def quantize_static(
    model: nn.Module, calibration: Iterable[torch.Tensor], backend: str = "x86"
) -> nn.Module:
    """Post-training static int8 quantization in FX graph mode: observers calibrated on the given
    float batches, then converted; x86 backend."""
    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ValueError("quantize_static needs at least one calibration batch")
    clone = folded_copy(model).eval()
    with _quiet():
        prepared = quantize_fx.prepare_fx(
            clone, float_parts_kept(clone, tq.get_default_qconfig_mapping(backend)), (first,)
        )
        # no_grad, not inference_mode: observers write their running ranges into buffers, which
        # must stay ordinary tensors for convert_fx
        with torch.no_grad():
            prepared(first)
            for batch in batches:
                prepared(batch)
        return quantize_fx.convert_fx(prepared).eval()


def to_half(model: nn.Module, dtype: torch.dtype = torch.float16) -> nn.Module:
    """Weights (and compute) in float16 or bfloat16, wrapped in CastInput."""
    _check_half(dtype)
    return CastInput(folded_copy(model).to(dtype), dtype).eval()


# --------------------------------------------------------------------------------------------
# Quantization-aware fine-tuning
# --------------------------------------------------------------------------------------------


class _FakeInt8Weight(nn.Module):
    """Parametrization: the weight as quantize_dynamic will store it (symmetric per-tensor int8).

    The scale follows MinMaxObserver(qint8, per_tensor_symmetric), the weight observer of
    quantize_dynamic, so the converted model holds exactly the int8 values trained against.
    Straight-through gradient: the rounding error is treated as a constant.
    """

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        value = weight.detach()
        bound = torch.maximum(-value.min().clamp(max=0), value.max().clamp(min=0))
        scale = (bound / 127.5).clamp(min=torch.finfo(torch.float32).eps).reshape(1)
        zero_point = torch.zeros(1, dtype=torch.int32)
        rounded = torch.fake_quantize_per_tensor_affine(value, scale, zero_point, -128, 127)
        # not fake_quantize's own gradient: it is zero for the largest positive weight (127.5
        # steps, clamped to 127), which would then never move
        return weight + (rounded - value)


class _RoundToHalf(nn.Module):
    """Parametrization: the weight rounded to `dtype` in the forward pass, straight-through
    gradient (the rounding error is treated as a constant)."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (weight.to(self.dtype).to(weight.dtype) - weight).detach()


def _observers_follow_mode(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: fake-quant observers update only in train mode.

    torch's observers also update in eval mode, so evaluating the prepared model (e.g. on the
    validation split between epochs) would otherwise move the quantization ranges.
    """
    module.apply(tq.enable_observer if module.training else tq.disable_observer)


def prepare_qat(
    model: nn.Module, method: str, example_inputs: torch.Tensor, dtype: torch.dtype = torch.float16
) -> nn.Module:
    """A trainable copy of a float model with fake quantization for quantization-aware
    fine-tuning ("half" rounds the weights to `dtype`); train it with compalign.train.fit."""
    _check_method(method)
    clone = folded_copy(model)
    if method == "quantize_static":
        with _quiet():
            mapping = float_parts_kept(clone, tq.get_default_qat_qconfig_mapping("x86"))
            prepared = quantize_fx.prepare_qat_fx(clone.train(), mapping, (example_inputs,))
        prepared.register_forward_pre_hook(_observers_follow_mode)
        return prepared
    if method == "quantize_dynamic":
        for module in list(clone.modules()):
            if type(module) is nn.Linear:  # what quantize_dynamic({nn.Linear}) converts
                parametrize.register_parametrization(module, "weight", _FakeInt8Weight())
        return clone.train()
    _check_half(dtype)
    for module in list(clone.modules()):
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter.is_floating_point():
                parametrize.register_parametrization(module, name, _RoundToHalf(dtype))
    return clone.train()


def _strip_parametrizations(model: nn.Module) -> list[nn.Module]:
    """Remove every parametrization of a copied model in place, keeping the underlying float
    tensors; return the parametrizations removed."""
    removed: list[nn.Module] = []
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            # A deepcopy of a parametrized module shares the class torch injected for it, and
            # removing a parametrization deletes its property from that class, breaking the
            # module it was copied from; so the copy gets a class of its own first.
            cls = type(module)
            namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, namespace)
            for name in list(module.parametrizations.keys()):
                removed.extend(module.parametrizations[name])
                parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    return removed


def convert_qat(prepared: nn.Module, method: str, dtype: torch.dtype = torch.float16) -> nn.Module:
    """The deployable model after quantization-aware fine-tuning (int8 modules, or the half model)."""
    _check_method(method)
    if method == "quantize_static":
        with _quiet():
            # convert_fx modifies its argument; the prepared model stays usable
            return quantize_fx.convert_fx(folded_copy(prepared).eval()).eval()
    clone = folded_copy(prepared).eval()
    # The underlying float weights are converted: int8 (same scale as the fake quantization) or
    # cast to the half dtype give exactly the weights the forward pass trained against.
    removed = _strip_parametrizations(clone)
    if method == "quantize_dynamic":
        return quantize_dynamic(clone)
    trained = {p.dtype for p in removed if isinstance(p, _RoundToHalf)}
    if trained - {dtype}:
        raise ValueError(f"the model was prepared for {trained.pop()}, not {dtype}")
    return to_half(clone, dtype)


# --------------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------------


def rebuild(
    float_model: nn.Module,
    method: str,
    example_inputs: torch.Tensor,
    dtype: torch.dtype = torch.float16,
) -> nn.Module:
    """An empty quantized/half model of the right structure to `load_state_dict` a saved
    quantized/half state dict into (no calibration data needed), for checkpoint loading."""
    _check_method(method)
    if method == "quantize_dynamic":
        return quantize_dynamic(float_model)
    if method == "quantize_static":
        # One pass over the example initialises every observer, so conversion needs no
        # placeholder ranges; every scale and zero point is then replaced by load_state_dict.
        return quantize_static(float_model, [example_inputs])
    return to_half(float_model, dtype)


# --------------------------------------------------------------------------------------------
# The quantizers' family
# --------------------------------------------------------------------------------------------


def half_dtype(options: object) -> torch.dtype:
    """The half dtype named by a quantizer's options (`compress.half.dtype`); bfloat16 for the
    int8 quantizers, which have no such option."""
    return getattr(torch, getattr(options, "dtype", "bfloat16"))


def fine_tune_quantization_aware(job: FineTuneJob) -> nn.Module:
    """Quantization-aware fine-tuning: from the reference with fake quantization, then converted."""
    example = job.train.normalise(job.train.images[:1])
    dtype = half_dtype(job.options)
    prepared = prepare_qat(job.fresh_reference(), job.method, example, dtype=dtype)
    job.fit(prepared)
    return convert_qat(prepared.cpu(), job.method, dtype)


QUANTIZATION = Family("quantization", fine_tune_quantization_aware, quantized=True)
