"""An ONNX file (`torch.onnx.export(model, (x,), path, dynamo=True)`, or any exporter): `.onnx`."""

from __future__ import annotations

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


def external_files(path: Path) -> list[Path]:
    """The external data files the model's initializers are stored in (large exports)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    locations = {
        entry.value
        for initializer in graph.initializer
        if initializer.data_location == onnx.TensorProto.EXTERNAL
        for entry in initializer.external_data
        if entry.key == "location"
    }
    return [path.parent / location for location in sorted(locations)]


def parameter_counts(path: Path) -> dict[str, int]:
    """Elements of the file's initializers (its weights), all and nonzero."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    total = nonzero = 0
    for initializer in graph.initializer:
        values = numpy_helper.to_array(initializer)
        total += int(values.size)
        nonzero += int(np.count_nonzero(values))
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
