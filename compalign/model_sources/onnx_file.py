"""An ONNX file (`torch.onnx.export(model, (x,), path, dynamo=True)`, or any exporter): `.onnx`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from compalign.errors import UserError
from compalign.model_sources.base import (
    FixedBatch,
    LoadedModel,
    ModelSource,
    Unregistered,
    existing_file,
    fixed_batch_size,
)


class OnnxRuntime:
    """An onnxruntime CPU session as a callable from a float tensor to logits."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3  # errors only
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise UserError(f"{path}: onnxruntime cannot load it ({first})") from None
        inputs = self.session.get_inputs()
        self.input = inputs[0]
        self.output = self.session.get_outputs()[0]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().cpu().numpy().astype(np.float32, copy=False)
        (logits,) = self.session.run([self.output.name], {self.input.name: array})
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))


MAX_INLINE_READ = 2**31  # bytes of one initializer counted; larger ones are not read


def _used_names(graph) -> set[str]:
    """Every value name a node of the graph (or of a subgraph) reads."""
    import onnx

    used: set[str] = set()
    stack = [graph]
    while stack:
        current = stack.pop()
        used.update(output.name for output in current.output)
        for node in current.node:
            used.update(name for name in node.input if name)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    stack.append(attribute.g)
                elif attribute.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attribute.graphs)
    return used


def _external(initializer) -> dict[str, str]:
    return {entry.key: entry.value for entry in initializer.external_data}


def _inside(path: Path, location: str) -> Path:
    """The external data file `location` names, refused unless it is a file in the model's
    folder (or below it)."""
    folder = path.parent.resolve()
    target = (path.parent / location).resolve()
    if Path(location).is_absolute() or not target.is_relative_to(folder) or not target.is_file():
        raise UserError(
            f"{path}: external data {location!r} is not a file beside the model; keep the "
            ".onnx file and its data files in one folder"
        )
    return target


def _graph(path: Path):
    """The model's graph, read without its external data (and without any initializer data
    outside the .onnx file)."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False).graph
    except Exception as error:  # protobuf raises its own types
        raise UserError(f"{path}: not a readable ONNX file ({type(error).__name__})") from None


def external_files(path: Path) -> list[Path]:
    """The external data files the model's used initializers are stored in (large exports),
    each checked to be a file in the model's folder."""
    graph = _graph(path)
    used = _used_names(graph)
    locations = {
        _external(initializer).get("location", "")
        for initializer in graph.initializer
        if initializer.name in used and _external(initializer)
    }
    return [_inside(path, location) for location in sorted(locations)]


def _values(path: Path, initializer) -> np.ndarray | None:
    """An initializer's values, read only when its declared size matches the bytes stored for
    it and is at most MAX_INLINE_READ (None: not read)."""
    from onnx import helper, numpy_helper

    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(initializer.data_type))
    except (KeyError, TypeError, ValueError):
        return None
    count = math.prod(initializer.dims)
    expected = count * dtype.itemsize
    if expected > MAX_INLINE_READ:
        return None
    external = _external(initializer)
    if external:
        target = _inside(path, external.get("location", ""))
        offset = int(external.get("offset", 0) or 0)
        length = int(external.get("length", expected) or expected)
        if length != expected or offset < 0 or offset + length > target.stat().st_size:
            raise UserError(
                f"{path}: initializer {initializer.name!r} declares {expected} bytes that its "
                f"external data file does not hold"
            )
        return np.fromfile(target, dtype=dtype, count=count, offset=offset)
    if initializer.raw_data and len(initializer.raw_data) != expected:
        raise UserError(
            f"{path}: initializer {initializer.name!r} holds {len(initializer.raw_data)} bytes "
            f"for {expected} declared"
        )
    try:
        return numpy_helper.to_array(initializer)
    except (ValueError, TypeError):
        return None


def parameter_counts(path: Path) -> dict[str, int]:
    """Elements of the initializers the graph uses (its weights), all and nonzero. Unused
    initializers are not read; external data is read only from files beside the model and
    only as many bytes as each initializer declares; an initializer too large to read counts
    as all nonzero."""
    graph = _graph(path)
    used = _used_names(graph)
    total = nonzero = 0
    for initializer in graph.initializer:
        if initializer.name not in used:
            continue
        count = math.prod(initializer.dims)
        values = _values(path, initializer)
        total += count
        nonzero += count if values is None else int(np.count_nonzero(values))
    return {"params_total": total, "params_nonzero": nonzero}


def load(argument: str, spec: str) -> LoadedModel:
    """An ONNX model run by onnxruntime on the CPU (no gradients: no attribution agreement).
    A fixed batch size is run in chunks of that size; a fixed image size becomes the default
    resize and crop; a fixed last output dimension is its class count."""
    path = existing_file(argument, spec)
    runtime = OnnxRuntime(path)
    shape = list(runtime.input.shape)
    batch = fixed_batch_size(shape)
    model = Unregistered(runtime) if batch is None else FixedBatch(runtime, batch)
    sizes = [value if isinstance(value, int) else None for value in shape[1:]]
    channels, height, width = (sizes + [None, None, None])[:3]
    classes = list(runtime.output.shape)[-1] if runtime.output.shape else None
    return LoadedModel(
        model=model,
        source="onnx",
        spec=spec,
        files=(path, *external_files(path)),
        num_classes=classes if isinstance(classes, int) else None,
        input_size=(height, width) if height and width else None,
        in_channels=channels,
        parameter_counts=parameter_counts(path),
    )


SOURCE = ModelSource(load, syntax="onnx:<file> (or a .onnx file)", suffixes=(".onnx",))
