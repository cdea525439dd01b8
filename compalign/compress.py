"""Compressors: a registry from the name used in params.yaml to a `Compressor`.

`COMPRESSORS[name](model, level, options, calibration)` returns the compressed model *without*
fine-tuning (what the loss `none` audits); `level` is the weight sparsity for unstructured
pruning, the fraction of MACs removed for structured pruning, and unused by quantization. The
entry's `family` says how its models are fine-tuned (compalign.finetune):

- unstructured: prune once, fine-tune with the masks kept applied (`torch.nn.utils.prune`);
- gradual: the cubic schedule of Zhu & Gupta (2017) applied while fine-tuning from the reference;
- structured: channels physically removed (torch-pruning), then a smaller dense model fine-tuned;
- quantization: post-training, or quantization-aware fine-tuning from the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from compalign.errors import UserError

PRUNABLE = (nn.Conv2d, nn.Linear)


@dataclass
class Calibration:
    """What data-driven compressors need: float training batches (normalised), and for Taylor
    importance a function that fills the model's gradients with the alignment loss."""

    batches: list[torch.Tensor]
    gradient_fn: Callable[[nn.Module], None] | None = None

    @property
    def example(self) -> torch.Tensor:
        return self.batches[0][:1]


def prunable_parameters(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "weight") for every conv and linear layer: the weights pruning may zero."""
    return [(module, "weight") for module in model.modules() if isinstance(module, PRUNABLE)]


def magnitude_global(
    model: nn.Module, sparsity: float, options=None, calibration=None
) -> nn.Module:
    """Global unstructured magnitude pruning: zero the `sparsity` fraction of smallest |w| over all
    conv and linear weights together (one threshold for the whole network)."""
    prune.global_unstructured(
        prunable_parameters(model), pruning_method=prune.L1Unstructured, amount=float(sparsity)
    )
    return model


def magnitude_layerwise(
    model: nn.Module, sparsity: float, options=None, calibration=None
) -> nn.Module:
    """Layer-wise unstructured magnitude pruning: each conv and linear layer loses its own
    `sparsity` fraction of smallest |w| (one threshold per layer)."""
    for module, name in prunable_parameters(model):
        prune.l1_unstructured(module, name, amount=float(sparsity))
    return model


def random_unstructured(
    model: nn.Module, sparsity: float, options=None, calibration=None
) -> nn.Module:
    """Random unstructured pruning, the baseline: a seeded uniform choice of `sparsity` of all
    conv and linear weights (global, like magnitude_global)."""
    seed = (options or {}).get("seed", 0)
    parameters = prunable_parameters(model)
    sizes = [getattr(module, name).numel() for module, name in parameters]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(sum(sizes), generator=generator)
    keep = torch.ones(sum(sizes), dtype=torch.bool)
    keep[order[: int(round(sparsity * sum(sizes)))]] = False
    for (module, name), chunk in zip(parameters, torch.split(keep, sizes), strict=True):
        weight = getattr(module, name)
        prune.custom_from_mask(module, name, chunk.view_as(weight).to(weight.dtype))
    return model


def gradual_sparsity(
    step: int, initial: float, final: float, start_step: int, end_step: int, frequency: int
) -> float:
    """Zhu & Gupta (2017) cubic schedule: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 for t in
    [t0, t0 + n dt], where t0 + n dt = end_step; s_i before t0, s_f after. Masks change every
    `frequency` (dt) steps, so t is rounded down to the last update step."""
    if step < start_step:
        return initial
    if step >= end_step:
        return final
    updated = start_step + ((step - start_step) // frequency) * frequency
    progress = (updated - start_step) / (end_step - start_step)
    return final + (initial - final) * (1.0 - progress) ** 3


def prune_layers_to(model: nn.Module, sparsity: float) -> None:
    """Set every layer's mask so its `sparsity` fraction of smallest *effective* weights is zero
    (per-layer thresholds, as Hooker et al.'s gradual pruning). Weights already masked have
    magnitude zero and stay pruned, so sparsity only grows."""
    for module, name in prunable_parameters(model):
        if not hasattr(module, f"{name}_mask"):
            prune.identity(module, name)
        mask = getattr(module, f"{name}_mask")
        effective = (getattr(module, f"{name}_orig") * mask).detach().abs().flatten()
        count = int(round(sparsity * effective.numel()))
        new_mask = torch.ones_like(effective)
        if count:
            new_mask[torch.argsort(effective, stable=True)[:count]] = 0.0
        mask.copy_(new_mask.view_as(mask))


@dataclass
class GradualSchedule:
    """The gradual-pruning schedule of one fine-tuning run; `update(step, model)` is a
    `fit` step callback that re-prunes every layer at each update step."""

    initial: float
    final: float
    start_step: int
    end_step: int
    frequency: int
    history: list[tuple[int, float]] = field(default_factory=list)

    @classmethod
    def for_run(cls, final: float, options: dict[str, Any], total_steps: int) -> GradualSchedule:
        """Defaults: prune from step 0 to 60% of the run, 10 mask updates (Hooker et al. prune
        from 5k to 8k of their steps, every 500)."""
        start = options.get("start_step") or 0
        end = options.get("end_step") or max(start + 1, int(0.6 * total_steps))
        frequency = options.get("frequency") or max(1, (end - start) // 10)
        return cls(options.get("initial_sparsity", 0.0), final, start, end, frequency)

    def update(self, step: int, model: nn.Module) -> None:
        if step < self.start_step or step > self.end_step:
            return
        if (step - self.start_step) % self.frequency and step != self.end_step:
            return
        sparsity = gradual_sparsity(
            step, self.initial, self.final, self.start_step, self.end_step, self.frequency
        )
        prune_layers_to(model, sparsity)
        self.history.append((step, sparsity))


def gradual_magnitude(
    model: nn.Module, sparsity: float, options=None, calibration=None
) -> nn.Module:
    """Without fine-tuning, gradual pruning has no steps to spread over: the model pruned to the
    final sparsity at once, layer by layer (the schedule runs in compalign.finetune)."""
    prune_layers_to(model, sparsity)
    return model


def structured(
    model: nn.Module, flops_fraction: float, options=None, calibration=None
) -> nn.Module:
    """Channel pruning with physical removal (torch-pruning), `flops_fraction` of the MACs removed;
    importance "l1" or "taylor" (first-order, gradients of the alignment loss, Meyer & Wong)."""
    from compalign.structured import prune_structured

    options = options or {}
    importance = options.get("importance", "l1")
    try:
        pruned, _ = prune_structured(
            model,
            flops_fraction,
            calibration.example if calibration else torch.zeros(1, 3, 32, 32),
            importance=importance,
            gradient_fn=calibration.gradient_fn if importance == "taylor" and calibration else None,
            global_pruning=options.get("global_pruning", False),
            round_to=options.get("round_to"),
        )
    except ValueError as error:
        raise UserError(
            f"compress.structured at {flops_fraction:g}: {error}; choose another level"
            + (" or a smaller compress.structured.round_to" if options.get("round_to") else "")
        ) from error
    return pruned


def quantize_dynamic(model: nn.Module, level=None, options=None, calibration=None) -> nn.Module:
    """Post-training dynamic int8 quantization of the Linear layers."""
    from compalign import quantize

    return quantize.quantize_dynamic(model.eval())


def quantize_static(model: nn.Module, level=None, options=None, calibration=None) -> nn.Module:
    """Post-training static int8 quantization (FX graph mode, x86), calibrated on training data."""
    from compalign import quantize

    return quantize.quantize_static(model.eval(), calibration.batches if calibration else [])


def half(model: nn.Module, level=None, options=None, calibration=None) -> nn.Module:
    """Weights and compute in bfloat16 or float16 (`compress.half.dtype`; CPUs without native
    float16, like the 2-core machines this project is sized for, run float16 very slowly)."""
    from compalign import quantize

    return quantize.to_half(model.eval(), half_dtype(options))


def half_dtype(options: dict[str, Any] | None) -> torch.dtype:
    """The torch dtype named by `compress.half.dtype`."""
    return getattr(torch, (options or {}).get("dtype", "bfloat16"))


@dataclass(frozen=True)
class Compressor:
    """A registry entry: the function, how its models are fine-tuned, whether it has levels."""

    apply: Callable[..., nn.Module]
    family: str  # "unstructured" | "gradual" | "structured" | "quantization"
    uses_level: bool = True
    needs_calibration: bool = False
    # FX symbolic tracing patches torch.nn.Module.__call__ for the whole process while it runs
    # (building and reloading a static int8 model trace it): no other model may run meanwhile
    traces_globally: bool = False

    def __call__(
        self, model: nn.Module, level: float | None = None, options=None, calibration=None
    ):
        return self.apply(model, level, options or {}, calibration)


COMPRESSORS: dict[str, Compressor] = {
    "magnitude_global": Compressor(magnitude_global, "unstructured"),
    "magnitude_layerwise": Compressor(magnitude_layerwise, "unstructured"),
    "random": Compressor(random_unstructured, "unstructured"),
    "gradual_magnitude": Compressor(gradual_magnitude, "gradual"),
    "structured": Compressor(structured, "structured", needs_calibration=True),
    "quantize_dynamic": Compressor(quantize_dynamic, "quantization", uses_level=False),
    "quantize_static": Compressor(
        quantize_static,
        "quantization",
        uses_level=False,
        needs_calibration=True,
        traces_globally=True,
    ),
    "half": Compressor(half, "quantization", uses_level=False),
}


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The pruning masks of `model` by parameter name ("features.0.weight" -> bool mask)."""
    return {
        f"{name}.weight" if name else "weight": module.weight_mask.bool().clone()
        for name, module in model.named_modules()
        if hasattr(module, "weight_mask")
    }


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Register `masks` (from `masks_of`) on `model` as pruning masks that stay applied."""
    modules = dict(model.named_modules())
    for key, mask in masks.items():
        module_name, _, param_name = key.rpartition(".")
        prune.custom_from_mask(modules[module_name], param_name, mask.to(torch.float32))
    return model


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with masks folded in ("weight" = weight_orig * mask), as a dense model has."""
    state = model.state_dict()
    plain = {}
    for key, value in state.items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            base = key[: -len("_orig")]
            value = value * state[base + "_mask"]
            key = base
        plain[key] = value.detach().clone() if isinstance(value, torch.Tensor) else value
    return plain


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights among the prunable (conv and linear) weights of a float
    model (0 for a quantized one, whose layers are not float conv/linear modules)."""
    total = zeros = 0
    for module, name in prunable_parameters(model):
        weight = getattr(module, name)
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return zeros / max(total, 1)
