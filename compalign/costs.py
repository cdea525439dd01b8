"""What a compressed model costs to store and to run: parameters, serialized bytes, CPU latency.

Works on every kind of model the pipeline produces: float models (possibly carrying
`torch.nn.utils.prune` masks), int8 models (PT2E programs, torchao or eager dynamic quantization,
FX GraphModules with int8 modules) and half-precision models wrapped in
`compalign.compressors.half.CastInput`. The caller's model is never changed: masks are folded
into a copy or into a fresh state dict.
"""

from __future__ import annotations

import gzip
import io
import math
import os
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
# what else a latency measurement records: the spread of each batch size's passes (10th and 90th
# percentile, ms), the batch a fixed-batch model was run at, the load average when it was taken
# and the cores this process may use (a load above them: other work competed with the timing)
LATENCY_DETAILS = ("latency_fixed_batch", "latency_load", "latency_cores")
SPREAD = ("p10", "p90")


def latency_spread_columns(batch_sizes: Sequence[int]) -> list[str]:
    """The spread columns of these batch sizes: latency_ms_b64_p10, latency_ms_b64_p90, ..."""
    return [f"latency_ms_b{size}_{end}" for size in batch_sizes for end in SPREAD]


def available_cores() -> int:
    """The CPU cores this process may use (its affinity, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def unreliable(costs: dict[str, float]) -> bool:
    """Whether a latency was taken under more load than the process's cores (other work then
    shared the CPUs with the timed passes)."""
    load, cores = costs.get("latency_load", math.nan), costs.get("latency_cores", math.nan)
    return bool(math.isfinite(load) and math.isfinite(cores) and load > cores)


MAX_LATENCY_BATCH = 1024


class LatencyOptions(Options):
    """How CPU latency is measured (keys of the `audit` section)."""

    latency_warmup: Annotated[int, Field(ge=0, le=10_000)] = 10
    """CPU latency: forward passes before timing"""
    latency_repeats: Annotated[int, Field(ge=1, le=10_000)] = 50
    """timed passes; the median is reported, with the 10th and 90th percentiles as its spread"""
    # a synthetic batch of each size is built: bounded (one of 1024 224x224 images is 600 MB)
    latency_batch_sizes: list[Annotated[int, Field(ge=1, le=MAX_LATENCY_BATCH)]] = Field(
        default_factory=lambda: [1, 64], min_length=1, max_length=8
    )
    """batch sizes timed; a model that only accepts one batch size is timed at that size, and
    a batch of N images is reported as the calls it takes (labelled "batch 1 x 64")"""


class CompileOptions(Options):
    """How `compalign audit` times an int8 PyTorch model compiled (keys of the `audit` section;
    not of the pipeline's costs, which time models as they run eagerly)."""

    latency_compile_timeout: Annotated[int, Field(ge=0)] = 120
    """`compalign audit`: seconds an int8 PyTorch model may take to be compiled (torch.compile)
    and timed, in a process of its own, for its compiled latency beside its eager one (0: not
    compiled)"""


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
        if value.dtype == torch.int8:  # a PT2E program's int8 weights (quantize_static)
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
    fixed_batch: int | None = None,
) -> dict[str, float]:
    """CPU milliseconds per call of `forward` as it is (an exported or ONNX model is already in
    its deployed form) at each batch size: the median (`latency_ms_b<N>`) and the 10th and 90th
    percentiles of the timed passes (`..._p10`, `..._p90`); the thread count, the 1-minute load
    average after timing and the cores available (`latency_load`, `latency_cores`).

    `fixed_batch`: the one batch size the model accepts. It is timed at that size only, and N
    images cost the ceil(N / fixed_batch) calls they take (a batch-1 model's batch 64 is 64
    times its batch-1 time, `latency_fixed_batch` says so), never a batch it cannot take run
    one chunk at a time and called batch N."""
    if example.dim() != 4 or example.shape[0] != 1:
        raise ValueError(
            f"example must be one input of shape [1, C, H, W], got {list(example.shape)}"
        )
    example = example.detach().cpu().float()
    timed: dict[int, list[float]] = {}

    def passes(size: int) -> list[float]:
        if size not in timed:
            batch = example.expand(size, *example.shape[1:]).contiguous()
            for _ in range(warmup):
                forward(batch)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                forward(batch)
                times.append((time.perf_counter() - start) * 1000.0)
            timed[size] = times
        return timed[size]

    result: dict[str, float] = {}
    with torch.inference_mode():
        for batch_size in batch_sizes:
            size = fixed_batch or batch_size
            calls = math.ceil(batch_size / size) if fixed_batch else 1
            times = passes(size)
            result[f"latency_ms_b{batch_size}"] = statistics.median(times) * calls
            low, high = _percentiles(times, (10, 90))
            result[f"latency_ms_b{batch_size}_p10"] = low * calls
            result[f"latency_ms_b{batch_size}_p90"] = high * calls
    result["latency_threads"] = torch.get_num_threads()
    if fixed_batch:
        result["latency_fixed_batch"] = fixed_batch
    result["latency_load"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    result["latency_cores"] = available_cores()
    return result


def _percentiles(values: Sequence[float], quantiles: Sequence[float]) -> list[float]:
    """Linear-interpolation percentiles (numpy's default) of a few values."""
    ordered = sorted(values)
    found = []
    for quantile in quantiles:
        position = (len(ordered) - 1) * quantile / 100.0
        below = math.floor(position)
        above = min(below + 1, len(ordered) - 1)
        found.append(ordered[below] + (ordered[above] - ordered[below]) * (position - below))
    return found


def batching_label(costs: dict[str, float], batch_size: int) -> str:
    """How `latency_ms_b<batch_size>` was measured when not as one call on that batch:
    "batch 1 x 64" (a fixed-batch model, the calls N images take); "" otherwise."""
    fixed = costs.get("latency_fixed_batch", math.nan)
    if not isinstance(fixed, int | float) or not math.isfinite(fixed) or fixed == batch_size:
        return ""
    return f"batch {int(fixed)} x {math.ceil(batch_size / fixed)}"


# --------------------------------------------------------------------------------------------
# Compiled latency of an int8 PyTorch model, in a process of its own

COMPILED_PREFIX = "latency_compiled_ms_b"
COMPILE_CHILD = """
import json, sys, time, torch
from compalign.costs import compiled_child
print("COMPILED " + json.dumps(compiled_child(*sys.argv[1:])))
"""


def compiled_child(spec: str, example_file: str, settings: str) -> dict[str, float]:
    """In the child process: load `spec` (compalign.model_sources), torch.compile it, time it
    with time_forward; returns the medians as latency_compiled_ms_b<N> and the compile seconds."""
    import json

    from compalign.model_sources import load_model

    batch_sizes, warmup, repeats, threads = json.loads(settings)
    torch.set_num_threads(threads)
    example = torch.load(example_file, weights_only=True)
    model = load_model(spec).model.eval()
    compiled = torch.compile(model, dynamic=False)
    start = time.perf_counter()
    with torch.inference_mode():
        for size in batch_sizes:  # compiles once per batch size
            compiled(example.expand(size, *example.shape[1:]).contiguous())
    seconds = time.perf_counter() - start
    timed = time_forward(compiled, example, batch_sizes, warmup, repeats)
    found = {f"{COMPILED_PREFIX}{size}": timed[f"latency_ms_b{size}"] for size in batch_sizes}
    return {**found, "latency_compile_s": seconds}


def compiled_latency(
    spec: str,
    example: torch.Tensor,
    batch_sizes: Sequence[int],
    warmup: int,
    repeats: int,
    timeout_s: float,
) -> tuple[dict[str, float], str]:
    """The model of `spec` compiled with torch.compile (inductor) and timed like its eager
    self, in a child process killed after `timeout_s` seconds: (latency_compiled_ms_b<N> and
    latency_compile_s, "") or ({}, why it was not measured)."""
    import json
    import subprocess
    import sys
    import tempfile

    settings = json.dumps([list(batch_sizes), warmup, repeats, torch.get_num_threads()])
    with tempfile.TemporaryDirectory() as scratch:
        example_file = f"{scratch}/example.pt"
        torch.save(example.detach().cpu().float()[:1].clone(), example_file)
        try:
            done = subprocess.run(
                [sys.executable, "-c", COMPILE_CHILD, spec, example_file, settings],
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            return {}, f"not compiled within {timeout_s:g} s"
    lines = [line for line in done.stdout.splitlines() if line.startswith("COMPILED ")]
    if done.returncode != 0 or not lines:
        errors = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = errors[-1][:160] if errors else f"exit code {done.returncode}"
        return {}, f"torch.compile failed: {reason}"
    return json.loads(lines[-1].removeprefix("COMPILED ")), ""
