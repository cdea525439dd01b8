"""What a compressed model costs to store and to run: parameters, serialized bytes, CPU latency.

Works on every kind of model the pipeline produces: float models (possibly carrying
`torch.nn.utils.prune` masks), int8 models (PT2E programs, torchao or eager dynamic quantization,
FX GraphModules with int8 modules) and half-precision models wrapped in `compalign.quantize.CastInput`. The caller's model is never
changed: masks are folded into a copy or into a fresh state dict.
"""

from __future__ import annotations

import gzip
import io
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Annotated

import torch
import torch.ao.nn.quantized as nnq
from pydantic import Field
from torch import nn

from compalign.options import Options
from compalign.pruning import folded_copy, folded_state_dict

# every cost the pipeline measures, in the order tables show them
COST_METRICS = (
    "params_total",
    "params_nonzero",
    "macs",
    "size_bytes",
    "size_gzip_bytes",
    "latency_ms_b1",
    "latency_ms_b64",
    "latency_threads",
)


MAX_LATENCY_BATCH = 1024


class LatencyOptions(Options):
    """How CPU latency is measured (keys of the `audit` section)."""

    latency_warmup: Annotated[int, Field(ge=0, le=10_000)] = 10  # forward passes before timing
    latency_repeats: Annotated[int, Field(ge=1, le=10_000)] = 50  # timed passes; the median
    # a synthetic batch of each size is built: bounded (one of 1024 224x224 images is 600 MB)
    latency_batch_sizes: list[Annotated[int, Field(ge=1, le=MAX_LATENCY_BATCH)]] = Field(
        default_factory=lambda: [1, 64], min_length=1, max_length=8
    )


# Quantized modules keep their weights packed (not as parameters); these expose them via
# weight() / bias(). The dynamic Linear and the fused ConvReLU modules are subclasses.
_PACKED = (nnq.Linear, nnq.Conv1d, nnq.Conv2d, nnq.Conv3d)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and nonzero parameters ({"params_total", "params_nonzero"}), masks applied.

    Also counts int8 weights: torchao's, a PT2E program's (int8 buffers) and the packed weights
    and biases of torch.ao quantized conv/linear modules.
    """
    buffers = dict(model.named_buffers())
    total = nonzero = 0
    for name, parameter in model.named_parameters():
        value = parameter.detach()
        if type(value) is not torch.Tensor and hasattr(value, "dequantize"):
            value = value.dequantize()  # a torchao int8 weight (quantize_dynamic)
        if name.endswith("_orig"):
            mask = buffers.get(name[: -len("_orig")] + "_mask")
            if mask is not None:
                value = value * mask
        total += value.numel()
        nonzero += int(torch.count_nonzero(value))
    for value in buffers.values():
        if value.dtype == torch.int8:  # a PT2E program's int8 weights (compalign.quantize)
            total += value.numel()
            nonzero += int(torch.count_nonzero(value))
    for module in model.modules():
        if isinstance(module, _PACKED):
            for value in (module.weight(), module.bias()):
                if value is not None:
                    value = value.dequantize() if value.is_quantized else value
                    total += value.numel()
                    nonzero += int(torch.count_nonzero(value))
    return {"params_total": total, "params_nonzero": nonzero}


def serialized_size(model: nn.Module) -> dict[str, int]:
    """Bytes of the state dict as torch.save writes it, masks folded in ({"size_bytes"}), and of
    the same bytes gzip-compressed ({"size_gzip_bytes"})."""
    buffer = io.BytesIO()
    torch.save(folded_state_dict(model), buffer)
    data = buffer.getvalue()
    # mtime=0: the same model gives the same compressed bytes on every run
    return {"size_bytes": len(data), "size_gzip_bytes": len(gzip.compress(data, 6, mtime=0))}


def deployable(model: nn.Module) -> nn.Module:
    """An eval-mode copy as it would be deployed on a CPU: pruning masks folded into the weights,
    and, for a float model, batch norm folded into the preceding convolutions (torch.fx's
    conv-bn fusion, the usual inference-time rewrite). Quantized models already carry their
    fused int8 modules; half-precision models and models FX cannot trace are left unfused.

    FX tracing patches torch.nn.Module.__call__ process-wide while it runs: call this only
    when no other thread runs a model (the pipeline measures costs one model at a time)."""
    copied = folded_copy(model).eval()
    floats = all(p.dtype == torch.float32 for p in copied.parameters())
    quantized = any(
        type(m).__module__.startswith("torch.ao.nn.quantized") for m in copied.modules()
    )
    if not floats or quantized or not any(isinstance(m, nn.BatchNorm2d) for m in copied.modules()):
        return copied
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copied)
    except Exception:  # a model FX cannot trace symbolically is timed as it is
        return copied


def measure_latency(
    model: nn.Module,
    example: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 64),
    warmup: int = 5,
    repeats: int = 30,
) -> dict[str, float]:
    """Median CPU milliseconds per forward pass at each batch size ({"latency_ms_b1", ...}) and
    the thread count used ({"latency_threads"}), of the model as `deployable` makes it;
    `example` is one input [1, C, H, W]."""
    if example.dim() != 4 or example.shape[0] != 1:
        raise ValueError(
            f"example must be one input of shape [1, C, H, W], got {list(example.shape)}"
        )
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    # Timed on a deployable copy: a deployed pruned model has its masks folded in (the mask
    # multiply of the prune hooks is not part of its cost), a deployed float CNN its batch norm;
    # the caller's model keeps its masks and mode.
    return time_forward(deployable(model), example, batch_sizes, warmup, repeats)


def time_forward(
    forward: Callable[[torch.Tensor], torch.Tensor],
    example: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 64),
    warmup: int = 5,
    repeats: int = 30,
) -> dict[str, float]:
    """Median CPU milliseconds per call of `forward` as it is (an exported or ONNX model is
    already in its deployed form) at each batch size, and the thread count."""
    if example.dim() != 4 or example.shape[0] != 1:
        raise ValueError(
            f"example must be one input of shape [1, C, H, W], got {list(example.shape)}"
        )
    example = example.detach().cpu().float()
    result: dict[str, float] = {}
    with torch.inference_mode():
        for batch_size in batch_sizes:
            batch = example.expand(batch_size, *example.shape[1:]).contiguous()
            for _ in range(warmup):
                forward(batch)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                forward(batch)
                times.append(time.perf_counter() - start)
            result[f"latency_ms_b{batch_size}"] = statistics.median(times) * 1000.0
    result["latency_threads"] = torch.get_num_threads()
    return result
