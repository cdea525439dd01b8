"""Which layers cause the flips: mismatches localized to the layers of a compressed model.

For a candidate with the same architecture and module names as its reference, every layer is
tried on its own: the candidate with that one layer replaced by the reference's (its weights
and buffers restored; for a statically quantized candidate, the model quantized again with that
layer also kept in float), and the mismatches it then has against the reference are counted on
the test inputs. `recovered` is how many of the candidate's mismatches that one layer accounts
for. Beside it, the numeric divergence of the layer's own output, its SQNR against the
reference's output on the same inputs (forward hooks; for a quantized candidate, the output of
the layer's conv or linear op in the program, against the float program's), which says how far
the layer drifted, not whether the drift flips labels.

A table sorted by recovered mismatches (`localize_layers`); `localize_flips` takes models and
data in any form `compalign.audit_models` does. Pure PyTorch and pandas: no Prefect, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from compalign.audited import SelectedOutputs, check_models
from compalign.compressors.quantize_static import quantizable_layers, quantize_static
from compalign.errors import UserError
from compalign.pruning import folded_copy

COLUMNS = (
    "layer",
    "kind",
    "parameters",
    "changed_fraction",
    "recovered",
    "mismatches_after",
    "mismatches",
    "sqnr_db",
)
LAYERS_FILE = "layers.parquet"
# What a format that has no module names is told (one line, exit code 2).
NOT_LOCALIZABLE = {
    "torchscript": "a TorchScript file has no module tree to swap a layer in",
    "export": "a torch.export program has no module tree to swap a layer in",
    "onnx": "an ONNX graph is not a PyTorch module, so none of its layers can be swapped",
    "module": "",
    "callable": "a plain callable has no layers",
}
Select = Callable[[torch.Tensor], torch.Tensor]


def _identity(logits: torch.Tensor) -> torch.Tensor:
    return logits


# --------------------------------------------------------------------------------------------
# Layers and their outputs


def layers_with_parameters(model: nn.Module) -> list[str]:
    """Modules that hold parameters of their own (conv, linear, batch norm, ...), in module
    order: the layers a candidate can have changed."""
    return [
        name
        for name, module in model.named_modules()
        if name and any(True for _ in module.parameters(recurse=False))
    ]


def _module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's own float parameters and buffers (not its children's; not counters such as
    batch norm's num_batches_tracked, which inference never reads)."""
    state = {
        **dict(module.named_parameters(recurse=False)),
        **dict(module.named_buffers(recurse=False)),
    }
    return {k: v for k, v in state.items() if v is not None and v.is_floating_point()}


def check_same_architecture(reference: nn.Module, candidate: nn.Module) -> None:
    """UserError unless the two float models have the same parameters, by name and shape (what
    swapping one layer needs): a structurally pruned candidate has smaller layers."""
    ours = {k: v.shape for k, v in folded_copy(reference).state_dict().items()}
    theirs = {k: v.shape for k, v in folded_copy(candidate).state_dict().items()}
    if ours.keys() != theirs.keys():
        missing = sorted(ours.keys() - theirs.keys())[:3] or sorted(theirs.keys() - ours.keys())[:3]
        raise UserError(
            f"cannot localize: the candidate's modules are not the reference's ({missing} differ);"
            " localization needs the same architecture and module names"
        )
    resized = [k for k in ours if ours[k] != theirs[k]]
    if resized:
        raise UserError(
            f"cannot localize: the candidate's layer shapes differ from the reference's "
            f"({resized[:3]}; structured pruning removed channels), so no layer can be swapped"
        )


@torch.no_grad()
def predictions(model: nn.Module, batches: Sequence[torch.Tensor], select: Select) -> torch.Tensor:
    """The predicted class of every input (argmax of `select(logits)`), in order."""
    model.eval()
    return torch.cat([select(model(batch).float()).argmax(dim=1) for batch in batches])


@torch.no_grad()
def hooked_outputs_sqnr(
    reference: nn.Module,
    candidate: nn.Module,
    names: Sequence[str],
    batches: Sequence[torch.Tensor],
) -> dict[str, float]:
    """SQNR in dB of each named module's output in `candidate` against the same module's in
    `reference` on `batches` (forward hooks): 10 log10(sum ref^2 / sum (ref - cand)^2), summed
    over every input; inf where the outputs are equal."""
    signal = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    captured: dict[str, dict[str, torch.Tensor]] = {"reference": {}, "candidate": {}}
    handles = []
    for role, model in (("reference", reference), ("candidate", candidate)):
        modules = dict(model.named_modules())
        for name in names:

            def hook(_module, _inputs, output, name=name, role=role):
                captured[role][name] = output.detach().float()

            handles.append(modules[name].register_forward_hook(hook))
    try:
        reference.eval()
        candidate.eval()
        for batch in batches:
            reference(batch)
            candidate(batch)
            for name in names:
                ours, theirs = captured["reference"][name], captured["candidate"][name]
                signal[name] += float(ours.pow(2).sum())
                noise[name] += float((ours - theirs).pow(2).sum())
    finally:
        for handle in handles:
            handle.remove()
    return {name: _sqnr(signal[name], noise[name]) for name in names}


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


# --------------------------------------------------------------------------------------------
# Float candidates: weights restored


def localize_layers(
    reference: nn.Module,
    candidate: nn.Module,
    batches: Sequence[torch.Tensor],
    select: Select = _identity,
) -> pd.DataFrame:
    """For every layer of a float `candidate` (same module names and shapes as `reference`):
    the mismatches against the reference left when that layer's parameters and buffers are
    the reference's (`mismatches_after`), those it recovers, the fraction of its values that
    differ, and the SQNR of its output against the reference's; sorted by recovered mismatches
    (then by SQNR, lowest first). `batches`: the model inputs (already normalised); `select`
    maps logits to the data's classes."""
    check_same_architecture(reference, candidate)
    reference = folded_copy(reference).eval()
    candidate = folded_copy(candidate).eval()
    reference_labels = predictions(reference, batches, select)
    mismatches = int((predictions(candidate, batches, select) != reference_labels).sum())
    names = layers_with_parameters(reference)
    reference_modules = dict(reference.named_modules())
    candidate_modules = dict(candidate.named_modules())
    sqnr = hooked_outputs_sqnr(reference, candidate, names, batches)
    rows = []
    for name in names:
        ours = _module_state(reference_modules[name])
        theirs = _module_state(candidate_modules[name])
        values = sum(v.numel() for v in ours.values())
        changed = sum(int((ours[k] != theirs[k]).sum()) for k in ours)
        after = mismatches
        if changed:
            swapped = folded_copy(candidate)
            target = dict(swapped.named_modules())[name]
            with torch.no_grad():
                for key, value in ours.items():
                    getattr(target, key).copy_(value)
            after = int((predictions(swapped, batches, select) != reference_labels).sum())
        rows.append(
            {
                "layer": name,
                "kind": type(reference_modules[name]).__name__,
                "parameters": sum(p.numel() for p in reference_modules[name].parameters(False)),
                "changed_fraction": changed / max(values, 1),
                "recovered": mismatches - after,
                "mismatches_after": after,
                "mismatches": mismatches,
                "sqnr_db": sqnr[name],
            }
        )
    return _sorted(rows)


def _sorted(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.sort_values(
        ["recovered", "sqnr_db"], ascending=[False, True], kind="stable"
    ).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Statically quantized candidates: the layer in float


def program_outputs(program: nn.Module, names: Sequence[str], batch: torch.Tensor) -> dict:
    """The output of each named layer's conv or linear op in a PT2E program (an Int8Program or
    its GraphModule) on `batch`, found by the module each op was traced from."""
    from torch import fx

    graph_module = getattr(program, "program", program)
    wanted = {torch.ops.aten.conv2d.default, torch.ops.aten.linear.default}
    owners: dict[fx.Node, str] = {}
    for node in graph_module.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if node.target in wanted and stack:
            owner = list(stack.values())[-1][0]
            if owner in names:
                owners[node] = owner
    captured: dict[str, torch.Tensor] = {}

    class Capture(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            result = super().run_node(node)
            if node in owners:
                captured[owners[node]] = result.detach().float()
            return result

    with torch.no_grad():
        Capture(graph_module).run(batch)
    return captured


def localize_quantized(
    candidate: nn.Module,
    requantize: Callable[[Sequence[str]], nn.Module],
    reference: nn.Module,
    float_layers: Sequence[str],
    reference_labels: torch.Tensor,
    batches: Sequence[torch.Tensor],
    select: Select = _identity,
) -> tuple[pd.DataFrame, list[str]]:
    """For every conv and linear layer of `reference` that a statically quantized `candidate`
    has in int8: the mismatches against the reference's labels left when the model is quantized
    again with that layer also in float (`requantize(float layers)`: the same calibration),
    those it recovers, and the SQNR of its conv/linear output against the all-float program's
    (batch norm folded in, as PT2E folds it). Returns the table and notes (one
    when the candidate's own quantization is not what `requantize` makes of its float layers:
    the recoveries are then measured against that re-quantized model)."""
    layers = quantizable_layers(reference)
    modules = dict(reference.named_modules())
    candidate_labels = predictions(candidate, batches, select)
    mismatches = int((candidate_labels != reference_labels).sum())
    notes = []
    baseline = requantize(float_layers)
    baseline_labels = predictions(baseline, batches, select)
    differing = int((baseline_labels != candidate_labels).sum())
    if differing:
        notes.append(
            f"The candidate's quantization was not reproduced from the reference ({differing} "
            "predictions differ): recoveries are counted against the model quantized again."
        )
        mismatches = int((baseline_labels != reference_labels).sum())
    quantized = [name for name in layers if name not in float_layers]
    all_float = requantize(list(layers))
    signal = dict.fromkeys(quantized, 0.0)
    noise = dict.fromkeys(quantized, 0.0)
    for batch in batches:
        ours = program_outputs(all_float, quantized, batch)
        theirs = program_outputs(candidate, quantized, batch)
        for name in quantized:
            if name in ours and name in theirs:
                signal[name] += float(ours[name].pow(2).sum())
                noise[name] += float((ours[name] - theirs[name]).pow(2).sum())
    rows = []
    for name in quantized:
        trial = requantize([layer for layer in layers if layer in {*float_layers, name}])
        after = int((predictions(trial, batches, select) != reference_labels).sum())
        rows.append(
            {
                "layer": name,
                "kind": f"{type(modules[name]).__name__} (int8)",
                "parameters": sum(p.numel() for p in modules[name].parameters(recurse=False)),
                "changed_fraction": math.nan,
                "recovered": mismatches - after,
                "mismatches_after": after,
                "mismatches": mismatches,
                "sqnr_db": _sqnr(signal[name], noise[name]) if signal[name] else math.nan,
            }
        )
    return _sorted(rows), notes


# --------------------------------------------------------------------------------------------
# Models and data as users have them


def not_localizable(loaded: Any) -> str | None:
    """Why a loaded model (compalign.model_sources.LoadedModel) cannot be localized, in one
    line; None when it can: a float PyTorch module with module names (compalign checkpoints,
    torchvision:/timm: state dicts, nn.Modules) or a compalign quantize_static checkpoint."""
    kind = checkpoint_kind(loaded)
    if kind == "quantize_static":
        return None
    if kind not in (None, "float"):
        return (
            f"a {kind} checkpoint: its layers are not float modules nor a PT2E program, so "
            "neither a restored weight nor a float copy of one layer can be made"
        )
    if loaded.source in NOT_LOCALIZABLE and (loaded.weights is None or not loaded.eager):
        return NOT_LOCALIZABLE[loaded.source] or "the model holds no float layers to swap"
    if loaded.weights is None:
        return "the model holds no PyTorch module to swap a layer in"
    return None


def checkpoint_kind(loaded: Any) -> str | None:
    """A compalign checkpoint's kind ("float" or its quantizer's name); None for other
    sources."""
    if loaded.source != "checkpoint" or not loaded.files:
        return None
    from compalign.checkpoint import read_checkpoint_manifest

    return read_checkpoint_manifest(loaded.files[0].parent).get("kind", "float")


def check_localizable(reference: Any, candidates: dict[str, Any]) -> None:
    """UserError naming the first model that cannot be localized against `reference`, and why
    (LoadedModels; checked before anything runs)."""
    why = not_localizable(reference)
    if why is None and checkpoint_kind(reference) == "quantize_static":
        why = "a quantized reference: localization restores the reference's float layers"
    if why is not None:
        raise UserError(f"--localize: the reference {reference.spec!r} cannot be localized: {why}")
    for name, loaded in candidates.items():
        why = not_localizable(loaded)
        if why is not None:
            raise UserError(f"--localize: {name} ({loaded.spec}) cannot be localized: {why}")
        if checkpoint_kind(loaded) == "quantize_static":
            _quantized_architecture(reference, loaded, name)
        else:
            try:
                check_same_architecture(reference.weights, loaded.weights)
            except UserError as error:
                raise UserError(f"--localize: {name} ({loaded.spec}): {error}") from None


def _quantized_architecture(reference: Any, loaded: Any, name: str) -> dict[str, Any]:
    """The float architecture of a quantize_static checkpoint, refused unless it is the
    reference's."""
    from compalign.checkpoint import read_checkpoint_manifest
    from compalign.models import build_model

    architecture = read_checkpoint_manifest(loaded.files[0].parent)["architecture"]
    float_model = build_model(**architecture)
    try:
        check_same_architecture(reference.weights, float_model)
    except UserError as error:
        raise UserError(f"--localize: {name} ({loaded.spec}): {error}") from None
    return architecture


def quantized_options(loaded: Any) -> dict[str, Any]:
    """The compressor options saved in a quantize_static checkpoint (backend, float layers)."""
    from compalign.compressors import COMPRESSORS
    from compalign.model_sources.base import torch_load_weights

    payload = torch_load_weights(loaded.files[0])
    return COMPRESSORS["quantize_static"].settings(payload.get("options", {})).model_dump()


def _batches(images: torch.Tensor, normalise: Callable, batch_size: int, device) -> list:
    return [
        normalise(images[start : start + batch_size]).to(device)
        for start in range(0, len(images), batch_size)
    ]


def localize_audited(
    reference: Any,
    candidate: Any,
    images: torch.Tensor,
    normalise: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 256,
    calibration: Iterable[torch.Tensor] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Localize one candidate against the reference, both compalign.audited.AuditedModels
    (loaded, outputs mapped to the data's classes) on the test `images`; `calibration`
    (float training batches) only for a quantize_static candidate, which is quantized again
    with each layer in float. Returns the table and its notes."""
    select: Select = _identity
    if isinstance(candidate.model, SelectedOutputs):
        indices = candidate.model.indices.cpu()
        select = lambda logits: logits[:, indices]  # noqa: E731
    reference_select: Select = _identity
    if isinstance(reference.model, SelectedOutputs):
        reference_indices = reference.model.indices.cpu()
        reference_select = lambda logits: logits[:, reference_indices]  # noqa: E731
    batches = _batches(images, normalise, batch_size, "cpu")
    reference_module = folded_copy(reference.loaded.weights).cpu().eval()
    if checkpoint_kind(candidate.loaded) != "quantize_static":
        return localize_layers(
            reference_module, candidate.loaded.weights.cpu(), batches, select
        ), []
    options = quantized_options(candidate.loaded)
    if calibration is None:
        raise UserError(
            f"--localize: {candidate.name} is statically quantized: localizing it quantizes "
            "again with each layer in float, which needs calibration batches"
        )
    calibration = list(calibration)

    def requantize(float_layers: Sequence[str]) -> nn.Module:
        return quantize_static(
            reference_module, calibration, options["backend"], list(float_layers)
        )

    labels = predictions(reference_module, batches, reference_select)
    return localize_quantized(
        candidate.loaded.weights.cpu(),
        requantize,
        reference_module,
        options["float_layers"],
        labels,
        batches,
        select,
    )


def localize_flips(
    reference: Any,
    candidate: Any,
    data: Any,
    *,
    class_names: Sequence[str] | None = None,
    class_map: Any = None,
    transform: Any = None,
    normalise: Callable[[torch.Tensor], torch.Tensor] | None = None,
    calibration: Iterable[torch.Tensor] | None = None,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Which layers of `candidate` flip its labels against `reference`, on `data`: models and
    data in any form compalign.audit_models takes (a spec, an nn.Module, a LoadedModel; a
    Split, a Dataset or a DataLoader). Returns the layer table sorted by recovered mismatches
    (`localize_layers`), its notes in `frame.attrs["notes"]`. A quantize_static checkpoint
    needs `calibration` (the float batches it was calibrated on)."""
    prepared = check_models(
        reference,
        {"candidate": candidate},
        data,
        class_names=class_names,
        class_map=class_map,
        transform=transform,
        normalise=normalise,
        attribution_samples=0,
    )
    check_localizable(
        prepared.models["reference"].loaded, {"candidate": prepared.models["candidate"].loaded}
    )
    frame, notes = localize_audited(
        prepared.models["reference"],
        prepared.models["candidate"],
        prepared.data.images,
        prepared.normalise,
        batch_size,
        calibration,
    )
    frame.attrs["notes"] = notes
    return frame
