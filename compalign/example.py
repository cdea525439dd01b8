"""`compalign init --example`: a small project that `compalign audit` runs on as the README shows.

In a folder of your choice it writes what a user of the audit brings, made as such a user makes
it (nothing here is compalign-specific but the params file):

- `digits/<class>/<n>.png`: scikit-learn's 8x8 digits (1,797 grey images) as a class-per-folder
  image tree, the layout `data.source: imagefolder` reads;
- `resnet18_digits.pt`: a torchvision ResNet-18 (10 classes) trained on the training part of
  that folder at 32x32, three channels, ImageNet's normalisation, saved as a state dict;
- `resnet18_digits_seed1.pt`: the same training with another seed (the noise floor);
- `resnet18_digits_int8.onnx`: the reference exported to ONNX (`torch.onnx.export(...,
  dynamo=True)`, batch size fixed at 1, as an export for serving one request at a time usually
  is) and quantized to int8 by `onnxruntime.quantization.quantize_dynamic`;
- `resnet18_digits_pruned.pt2`: the reference with 60% of its conv and linear weights zeroed
  (global magnitude, `torch.nn.utils.prune`), exported with `torch.export` (any batch size);
- `params.yaml`: the defaults (`compalign init`) with `data` pointing at the folder and the
  models' input, and an audit sized for a laptop.

The two references are trained with compalign's own training loop (`compalign.train.fit`) on
the split the audit will use (the same `data` section), so the audit's test images are images
neither reference saw.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXAMPLE_FILES = {
    "reference": "resnet18_digits.pt",
    "reference2": "resnet18_digits_seed1.pt",
    "int8": "resnet18_digits_int8.onnx",
    "pruned": "resnet18_digits_pruned.pt2",
}
IMAGES = "digits"
ARCHITECTURE = "resnet18"
INPUT_SIZE = 32
EPOCHS = 8
PRUNED_FRACTION = 0.6

# The example's params.yaml: what it changes in the defaults, with why.
EXAMPLE_SETTINGS: dict[str, dict[str, Any]] = {
    "data": {
        "source": "imagefolder",
        "root": IMAGES,
        "image_mode": "L",
        "transform": {"resize": INPUT_SIZE, "centre_crop": INPUT_SIZE, "channels": 3},
    },
    "audit": {"attribution_samples": 16, "latency_warmup": 3, "latency_repeats": 10},
    "run": {"experiment": "example"},
}
README_COMMAND = """\
compalign audit \\
  --reference torchvision:resnet18@resnet18_digits.pt \\
  --compressed int8=resnet18_digits_int8.onnx \\
  --compressed pruned=resnet18_digits_pruned.pt2 \\
  --reference2 torchvision:resnet18@resnet18_digits_seed1.pt \\
  --fail-on "mismatches_ref_correct_ci_high<=20" --fail-on "worst_class_recall_change>=-0.05"
"""
EXAMPLE_NOTE = (
    """\
# The example of `compalign init --example`: the digits as an image folder (digits/), a torchvision
# ResNet-18 trained on it at 32x32 (resnet18_digits.pt, and resnet18_digits_seed1.pt with another
# seed), an int8 ONNX copy and a 60%-pruned torch.export copy. Changed from the defaults: data
# (the folder, grey images made 3-channel at 32x32: the input the models were trained on), a
# lighter audit (16 attribution images, 10 timed passes) and the MLflow experiment. Run:
#
"""
    + "".join(f"#   {line}\n" for line in README_COMMAND.splitlines())
    + "#\n"
)


def example_params() -> Any:
    """The example's validated params (compalign.config.Params)."""
    from compalign.config import Params

    tree = Params().model_dump()
    for section, values in EXAMPLE_SETTINGS.items():
        _merge(tree[section], values)
    return Params.model_validate(tree)


def _merge(tree: dict[str, Any], values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value


def write_digits(folder: Path) -> int:
    """scikit-learn's digits as PNG files under `folder/<class>/`; returns how many."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    for index, (image, label) in enumerate(zip(pixels, bunch.target, strict=True)):
        path = folder / str(label) / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(path)
    return len(pixels)


def _train(split: Any, transform: Any, seed: int, epochs: int) -> Any:
    """A torchvision ResNet-18 trained on `split` seen through `transform`."""
    import dataclasses

    import torch
    import torchvision

    from compalign.train import TrainConfig, fit

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = torchvision.models.resnet18(num_classes=10)
    seen = dataclasses.replace(split)
    seen.normalise = transform  # the models' input, not the dataset's own normalisation
    config = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, seed=seed)
    return fit(
        model,
        seen,
        config,
        lambda logits, _reference, labels: torch.nn.functional.cross_entropy(logits, labels),
    )


def _pruned(model: Any, fraction: float) -> Any:
    """A copy with `fraction` of its conv and linear weights zeroed (global magnitude)."""
    import copy

    from torch import nn
    from torch.nn.utils import prune

    pruned = copy.deepcopy(model).eval()
    layers = [(m, "weight") for m in pruned.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=fraction)
    for module, name in layers:
        prune.remove(module, name)
    return pruned


def _int8_onnx(model: Any, path: Path) -> None:
    """The model as ONNX with batch size 1 (fixed), then int8 by onnxruntime's dynamic
    quantization."""
    import logging
    import tempfile

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    example = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with tempfile.TemporaryDirectory() as scratch:
        exported = Path(scratch) / "float.onnx"
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (example,), str(exported), dynamo=True)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # "consider pre-processing": a note for tuning, not news
        try:
            quantize_dynamic(str(exported), str(path), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)


def _exported(model: Any, path: Path) -> None:
    """The model as a torch.export program that takes any batch size."""
    import torch

    example = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model.eval(), (example,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, path)


def existing(folder: Path) -> list[str]:
    """What of the example is already in `folder` (it is never overwritten)."""
    names = ["params.yaml", IMAGES, *EXAMPLE_FILES.values()]
    return [name for name in names if (folder / name).exists()]


def write_example(
    folder: str | Path,
    *,
    epochs: int = EPOCHS,
    say: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Write the example into `folder` (see the module's docstring); `say` gets one line per
    step, with its time. Returns the paths written by name."""
    import torch

    from compalign.config import params_yaml
    from compalign.data import build_table, load_split, write_prepared
    from compalign.model_sources.torchvision_state import default_transform
    from compalign.preprocess import resolve_transform

    folder = Path(folder)
    params = example_params()
    started = time.monotonic()

    def step(text: str) -> None:
        say(f"{text} ({time.monotonic() - started:.0f} s)")

    count = write_digits(folder / IMAGES)
    step(f"{IMAGES}/: {count} images in 10 class folders")
    data = params.data.model_copy(update={"root": str(folder / IMAGES)})
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        write_prepared(*build_table(data), scratch)
        train = load_split(scratch, "train")
    transform = resolve_transform(
        params.data.transform,
        default_transform(ARCHITECTURE),
        train.mean.flatten().tolist(),
        train.std.flatten().tolist(),
        int(train.images.shape[1]),
    )
    paths = {name: folder / file for name, file in EXAMPLE_FILES.items()}
    models = {}
    for name, seed in (("reference", 0), ("reference2", 1)):
        models[name] = _train(train, transform, seed, epochs)
        torch.save(models[name].state_dict(), paths[name])
        step(
            f"{paths[name].name}: ResNet-18 trained {epochs} epoch{'s' * (epochs != 1)}, seed {seed}"
        )
    _int8_onnx(models["reference"], paths["int8"])
    step(f"{paths['int8'].name}: ONNX export (batch 1), int8 by onnxruntime")
    _exported(_pruned(models["reference"], PRUNED_FRACTION), paths["pruned"])
    step(f"{paths['pruned'].name}: {PRUNED_FRACTION:.0%} of the weights zeroed, torch.export")
    paths["params"] = folder / "params.yaml"
    paths["params"].write_text(EXAMPLE_NOTE + params_yaml(params))
    step("params.yaml: the defaults, data and audit set for the example")
    return {"images": folder / IMAGES, **paths}
