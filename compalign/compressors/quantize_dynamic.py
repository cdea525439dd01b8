"""`quantize_dynamic`: post-training dynamic int8 quantization of the Linear layers (weights
int8, activations quantized on the fly): torchao's `quantize_` with
Int8DynamicActivationInt8WeightConfig, or PyTorch's eager `quantize_dynamic` behind
`backend: eager`; its quantization-aware fine-tuning and the rebuilding of its checkpoints."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.ao.quantization as tq
from torch import nn
from torch.nn.utils import parametrize

from compalign.compressors.base import Compressor
from compalign.compressors.quantization import (
    check_backend,
    quantization,
    quiet,
    strip_parametrizations,
)
from compalign.options import Options
from compalign.pruning import folded_copy

BACKENDS = ("torchao", "eager")  # the first is the maintained path


class QuantizeDynamicOptions(Options):
    """Dynamic int8: which quantization path."""

    # torchao: per-row int8 weights and activations. eager: torch.ao.quantization.quantize_dynamic
    # (deprecated by PyTorch; per-tensor), which reproduces results made before the switch.
    backend: Literal["torchao", "eager"] = "torchao"
    """torchao (quantize_, per-row int8) | eager (deprecated torch.ao quantize_dynamic)"""


def quantize_dynamic(model: nn.Module, backend: str = "torchao") -> nn.Module:
    """Post-training dynamic int8 quantization of the Linear layers (weights int8, activations
    quantized on the fly): torchao's `quantize_` with Int8DynamicActivationInt8WeightConfig
    (per-row int8 weights, per-row symmetric activations), or with `backend="eager"` the
    deprecated `torch.ao.quantization.quantize_dynamic` (per-tensor weights and activations)."""
    check_backend(backend, BACKENDS, "quantize_dynamic")
    clone = folded_copy(model).eval()
    if backend == "eager":
        with quiet():
            return tq.quantize_dynamic(clone, {nn.Linear}, dtype=torch.qint8, inplace=True).eval()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    # set_inductor_config=False: quantize_ would otherwise change torch._inductor's global
    # configuration for the whole process
    config = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    quantize_(clone, config, filter_fn=_is_plain_linear)
    for module in clone.modules():
        if any(_is_torchao(p) for p in module.parameters(recurse=False)):
            module.register_state_dict_post_hook(_plain_int8_state)
            module.register_load_state_dict_pre_hook(_int8_from_plain)
    return clone.eval()


def _is_torchao(value: torch.Tensor) -> bool:
    """A torchao tensor subclass (quantize_'s Int8Tensor weight)."""
    return type(value).__module__.startswith("torchao.")


def _plain_int8_state(module: nn.Module, state_dict: dict, prefix: str, metadata: Any) -> None:
    """State dict post-hook of a layer that torchao's quantize_ converted: each torchao weight is
    saved as the plain tensors it holds (`<name>.qdata` int8, `<name>.scale`, ...), which
    `torch.load(weights_only=True)` reads without torchao's class (not allowlisted unless torchao
    was imported first, and never allowlisted here)."""
    for name, value in module.named_parameters(recurse=False):
        key = prefix + name
        if key in state_dict and _is_torchao(value):
            del state_dict[key]
            inner, _ = value.__tensor_flatten__()
            for part in inner:
                state_dict[f"{key}.{part}"] = getattr(value, part).detach()


def _int8_from_plain(module: nn.Module, state_dict: dict, prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook, the inverse of _plain_int8_state: the saved plain tensors are
    put back into a torchao weight whose other attributes (block size, dtype, activation
    quantization) come from the rebuilt layer, quantized with the same configuration. A state
    dict that lacks some of the parts is left as it is (the load then names what is missing)."""
    for name, value in module.named_parameters(recurse=False):
        key = prefix + name
        if not _is_torchao(value):
            continue
        inner, context = value.__tensor_flatten__()
        keys = {part: f"{key}.{part}" for part in inner}
        if not all(k in state_dict for k in keys.values()):
            continue
        parts = {part: state_dict.pop(k) for part, k in keys.items()}
        state_dict[key] = type(value).__tensor_unflatten__(
            parts, context, value.size(), value.stride()
        )


def _is_plain_linear(module: nn.Module, name: str = "") -> bool:
    """The layers dynamic quantization converts (exactly nn.Linear, as quantize_dynamic({nn.Linear}))."""
    return type(module) is nn.Linear


# --------------------------------------------------------------------------------------------
# Quantization-aware fine-tuning
# --------------------------------------------------------------------------------------------


class _FakeInt8Weight(nn.Module):
    """Parametrization: the weight as quantize_dynamic will store it, straight-through gradient
    (the rounding error is treated as a constant), so the converted model holds exactly the int8
    values trained against.

    backend "torchao": per-row symmetric int8, computed by torchao's own Int8Tensor (what
    quantize_ with Int8DynamicActivationInt8WeightConfig stores); backend "eager": per-tensor
    symmetric, the scale of MinMaxObserver(qint8, per_tensor_symmetric), eager quantize_dynamic's
    weight observer.
    """

    def __init__(self, backend: str = "torchao") -> None:
        super().__init__()
        self.backend = backend

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        value = weight.detach()
        if self.backend == "torchao":
            from torchao.quantization import Int8Tensor, PerRow

            rounded = Int8Tensor.from_hp(value, granularity=PerRow()).dequantize()
            return weight + (rounded.to(value.dtype) - value)
        bound = torch.maximum(-value.min().clamp(max=0), value.max().clamp(min=0))
        scale = (bound / 127.5).clamp(min=torch.finfo(torch.float32).eps).reshape(1)
        zero_point = torch.zeros(1, dtype=torch.int32)
        rounded = torch.fake_quantize_per_tensor_affine(value, scale, zero_point, -128, 127)
        # not fake_quantize's own gradient: it is zero for the largest positive weight (127.5
        # steps, clamped to 127), which would then never move
        return weight + (rounded - value)


def prepare_qat(
    model: nn.Module, example: torch.Tensor, options: QuantizeDynamicOptions
) -> nn.Module:
    """A trainable copy of a float model whose Linear weights are rounded as quantize_dynamic
    will store them (straight-through gradient); train it with compalign.train.fit."""
    check_backend(options.backend, BACKENDS, "quantize_dynamic")
    clone = folded_copy(model)
    for module in list(clone.modules()):
        if _is_plain_linear(module):  # what quantize_dynamic converts
            parametrize.register_parametrization(module, "weight", _FakeInt8Weight(options.backend))
    return clone.train()


def convert_qat(prepared: nn.Module, options: QuantizeDynamicOptions) -> nn.Module:
    """The deployable int8 model after quantization-aware fine-tuning: the underlying float
    weights quantized with the same scale as the fake quantization, so it holds exactly the
    weights the forward pass trained against; `options.backend` must be the one the model was
    prepared with."""
    clone = folded_copy(prepared).eval()
    removed = strip_parametrizations(clone)
    trained = {p.backend for p in removed if isinstance(p, _FakeInt8Weight)}
    if trained - {options.backend}:
        raise ValueError(
            f"the model was prepared for backend {trained.pop()}, not {options.backend}"
        )
    return quantize_dynamic(clone, options.backend)


# --------------------------------------------------------------------------------------------
# The registry entry
# --------------------------------------------------------------------------------------------


def apply(model: nn.Module, level, options: QuantizeDynamicOptions, calibration) -> nn.Module:
    return quantize_dynamic(model.eval(), options.backend)


def rebuild(model: nn.Module, example, options: QuantizeDynamicOptions) -> nn.Module:
    """An empty int8 model of the right structure to load a saved state dict into."""
    return quantize_dynamic(model, options.backend)


ENTRY = Compressor(
    apply,
    quantization(prepare_qat, convert_qat),
    QuantizeDynamicOptions,
    level_kind=None,
    rebuild=rebuild,
)
