"""`quantize_static`: post-training static int8 quantization, x86, activation ranges calibrated
on training batches: PT2E (torch.export + torchao's prepare_pt2e/convert_pt2e with its
X86InductorQuantizer), or FX graph mode behind `backend: fx`; its quantization-aware fine-tuning
(PT2E's prepare_qat_pt2e, or FX's prepare_qat_fx) and the rebuilding of its checkpoints.

The PT2E result is an exported program of quantize/dequantize ops around float convs
(`Int8Program`): it runs as it is, and `torch.compile` lowers it to fused int8 x86 kernels.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import torch
import torch.ao.quantization as tq
from pydantic import Field
from torch import fx, nn

from compalign.compressors.base import Compressor
from compalign.compressors.quantization import check_backend, quantization, quiet
from compalign.errors import UserError
from compalign.options import Options
from compalign.pruning import folded_copy

BACKENDS = ("pt2e", "fx")  # the first is the maintained path


class QuantizeStaticOptions(Options):
    """Static int8: which quantization path, and which layers stay in float."""

    # pt2e: PyTorch's maintained path (torchao). fx: torch.ao.quantization.quantize_fx, which
    # PyTorch has deprecated and plans to remove (pytorch/ao#2259); kept as an optional fallback
    # that reproduces results made before the switch.
    backend: Literal["pt2e", "fx"] = "pt2e"
    """pt2e (torch.export + torchao) | fx (deprecated FX graph mode: the fallback)"""
    float_layers: list[str] = Field(default_factory=list)
    """conv and linear layers (module names) kept in float, e.g. those `compalign search --method
    quantize_static` chose; empty: every layer int8"""


# --------------------------------------------------------------------------------------------
# PT2E programs
# --------------------------------------------------------------------------------------------


def _activation_quant_nodes(program: fx.GraphModule) -> list[fx.Node]:
    """The per-tensor (de)quantize nodes whose scale and zero point convert_pt2e wrote into the
    graph as constants (the activations'), in graph order."""
    ops = torch.ops.quantized_decomposed
    targets = (ops.quantize_per_tensor.default, ops.dequantize_per_tensor.default)
    return [node for node in program.graph.nodes if node.target in targets]


def _plain_program(program: fx.GraphModule) -> None:
    """Make a converted program a plain GraphModule that pickles and unpickles (MLflow logs
    models pickled):
    without export's batch-size guard (a submodule holding torch's config, which does not
    pickle; the batch size is dynamic) and without the instance `train`/`eval` that refuse
    mode changes. Delete the parameters and buffers the graph no longer reads (convert_pt2e
    keeps the float weights beside their int8 copies), so the state dict holds only what runs."""
    for node in list(program.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            program.graph.erase_node(node)
    program.__dict__.pop("train", None)
    program.__dict__.pop("eval", None)
    # unpickling re-traces the code with the recorded tracer; export's needs arguments
    program._tracer_cls = program.graph._tracer_cls = None
    used = {node.target for node in program.graph.nodes if node.op == "get_attr"}
    for name, _ in [*program.named_parameters(), *program.named_buffers()]:
        if name not in used:
            owner_name, _, attribute = name.rpartition(".")
            delattr(program.get_submodule(owner_name) if owner_name else program, attribute)
    _canonical_names(program)
    program.delete_all_unused_submodules()
    program.recompile()


def _canonical_names(program: fx.GraphModule) -> None:
    """Name the program's tensors `tensor_<i>` in the order of the layers that read them
    (through their dequantize op), so a program converted after QAT and one converted after
    calibration, whose constants convert_pt2e numbers in different orders, share one state dict
    layout (checkpoints of both rebuild the same way)."""
    ops = torch.ops.quantized_decomposed
    passes_through = {
        ops.quantize_per_tensor.default,
        ops.dequantize_per_tensor.default,
        ops.quantize_per_channel.default,
        ops.dequantize_per_channel.default,
    }
    nodes = list(program.graph.nodes)
    position = {node: index for index, node in enumerate(nodes)}

    def reader(node: fx.Node) -> tuple[int, tuple[int, ...]]:
        path, current = [], node
        while current.users:
            user = min(current.users, key=position.__getitem__)
            path.append(user.args.index(current) if current in user.args else len(user.args))
            if user.target not in passes_through:
                return position[user], tuple(reversed(path))
            current = user
        return len(nodes), tuple(reversed(path))

    constants = sorted((n for n in nodes if n.op == "get_attr"), key=reader)
    values = []
    for node in constants:
        owner_name, _, attribute = node.target.rpartition(".")
        owner = program.get_submodule(owner_name) if owner_name else program
        values.append(getattr(owner, attribute))
        delattr(owner, attribute)
    for index, (node, value) in enumerate(zip(constants, values, strict=True)):
        name = f"tensor_{index}"
        if isinstance(value, nn.Parameter):
            program.register_parameter(name, value)
        else:
            program.register_buffer(name, value)
        node.target = name


class Int8Program(nn.Module):
    """A PT2E-quantized model (the converted exported program) whose state dict restores it.

    convert_pt2e writes the activations' scales and zero points into the graph as constants, not
    tensors; they are kept here as buffers too, and `load_state_dict` writes the loaded values
    back into the graph, so a rebuilt program of the same structure becomes the saved one. The
    program holds no train-mode behaviour (no dropout or batch norm left), so `train()` only sets
    the flag (an exported program refuses `.train()` / `.eval()`).
    """

    def __init__(self, program: fx.GraphModule) -> None:
        super().__init__()
        _plain_program(program)
        self.program = program
        nodes = _activation_quant_nodes(program)
        self.register_buffer(
            "activation_scales", torch.tensor([n.args[1] for n in nodes], dtype=torch.float64)
        )
        self.register_buffer(
            "activation_zero_points", torch.tensor([n.args[2] for n in nodes], dtype=torch.int64)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def train(self, mode: bool = True) -> Int8Program:
        self.training = mode
        return self

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        nodes = _activation_quant_nodes(self.program)
        if len(nodes) != self.activation_scales.numel():
            raise ValueError(
                f"the state dict has {self.activation_scales.numel()} activation scales, the "
                f"program {len(nodes)}: it was saved from a differently quantized model"
            )
        for node, scale, zero_point in zip(
            nodes,
            self.activation_scales.tolist(),
            self.activation_zero_points.tolist(),
            strict=True,
        ):
            node.args = (node.args[0], scale, zero_point, *node.args[3:])
        self.program.recompile()
        return result


def _export(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """`model` captured by torch.export with a dynamic batch size.

    Strict (TorchDynamo) capture: it names each call of a module apart, which the quantizer's
    pattern matching needs when one module (a ReLU) is called twice, as in a residual block; the
    example is repeated to a batch of 2 (export specialises a dimension of size 1)."""
    batch = example[:1].expand(2, *example.shape[1:]).contiguous()
    dynamic = ({0: torch.export.Dim("batch")},)
    return torch.export.export(model, (batch,), dynamic_shapes=dynamic, strict=True).module()


def x86_quantizer(model: nn.Module, qat: bool = False, float_layers: Sequence[str] = ()) -> Any:
    """torchao's X86InductorQuantizer with its default int8 configuration (per-channel symmetric
    weights, per-tensor affine uint8 activations with histogram observers), leaving in float the
    submodules whose class sets `keeps_float` (an input adapter's antialiased resize) and the
    layers named in `float_layers` (module names, as `named_modules` gives them).

    A layer is kept in float with `set_module_name_qconfig(name, None)`: torchao marks its
    operator annotated without a quantization spec, so neither its weight nor its input gets
    quantize/dequantize ops (its conv or linear runs in float on whatever reaches it)."""
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    check_float_layers(model, float_layers)
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config(is_qat=qat))
    for name, module in model.named_modules():
        if name and (getattr(module, "keeps_float", False) or name in float_layers):
            quantizer.set_module_name_qconfig(name, None)
    return quantizer


QUANTIZABLE = (nn.Conv2d, nn.Linear)  # the layers int8 static quantization converts


def quantizable_layers(model: nn.Module) -> list[str]:
    """The names of the layers static int8 quantization converts (conv and linear), in module
    order: what `float_layers` may name."""
    return [
        name
        for name, module in model.named_modules()
        if name and isinstance(module, QUANTIZABLE) and not getattr(module, "keeps_float", False)
    ]


def check_float_layers(model: nn.Module, float_layers: Sequence[str]) -> None:
    """Refuse a `float_layers` entry that names no quantizable layer of `model` (a typo would
    otherwise quantize everything silently)."""
    unknown = sorted(set(float_layers) - set(quantizable_layers(model)))
    if unknown:
        raise UserError(
            f"compress.quantize_static.float_layers: {unknown} are not conv or linear layers of "
            f"the model (it has {', '.join(quantizable_layers(model))})"
        )


# --------------------------------------------------------------------------------------------
# Post-training quantization
# --------------------------------------------------------------------------------------------


def float_parts_kept(
    model: nn.Module, mapping: tq.QConfigMapping, float_layers: Sequence[str] = ()
) -> tq.QConfigMapping:
    """`mapping` with the submodules that must compute in float left unquantized: those whose
    class sets `keeps_float` (an input adapter's antialiased resize has no int8 kernel) and the
    layers named in `float_layers`."""
    check_float_layers(model, float_layers)
    for name, module in model.named_modules():
        if name and (getattr(module, "keeps_float", False) or name in float_layers):
            mapping.set_module_name(name, None)
    return mapping


def quantize_static(
    model: nn.Module,
    calibration: Iterable[torch.Tensor],
    backend: str = "pt2e",
    float_layers: Sequence[str] = (),
) -> nn.Module:
    """Post-training static int8 quantization with activation ranges calibrated on the given
    float batches, x86 backend: PT2E (torch.export + torchao's prepare_pt2e/convert_pt2e, an
    `Int8Program`), or with `backend="fx"` the deprecated FX graph mode. The conv and linear
    layers named in `float_layers` stay in float."""
    check_backend(backend, BACKENDS, "quantize_static")
    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ValueError("quantize_static needs at least one calibration batch")
    clone = folded_copy(model).eval()
    if backend == "fx":
        return _quantize_static_fx(clone, first, batches, float_layers)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with warnings.catch_warnings():
        # a layer kept in float leaves the next pooling op's input float: torchao says so
        warnings.filterwarnings("ignore", r"The input of \w+ is not quantized")
        quantizer = x86_quantizer(clone, float_layers=float_layers)
        prepared = prepare_pt2e(_export(clone, first), quantizer)
    # no_grad, not inference_mode: observers write their running ranges into buffers
    with torch.no_grad():
        prepared(first)
        for batch in batches:
            prepared(batch)
    return Int8Program(convert_pt2e(prepared)).eval()


def _quantize_static_fx(
    clone: nn.Module,
    first: torch.Tensor,
    batches: Iterator[torch.Tensor],
    float_layers: Sequence[str] = (),
) -> nn.Module:
    """FX graph mode static int8 (deprecated by PyTorch; the optional fallback)."""
    from torch.ao.quantization import quantize_fx

    with quiet():
        mapping = float_parts_kept(clone, tq.get_default_qconfig_mapping("x86"), float_layers)
        prepared = quantize_fx.prepare_fx(clone, mapping, (first,))
        # no_grad, not inference_mode: observers write their running ranges into buffers, which
        # must stay ordinary tensors for convert_fx
        with torch.no_grad():
            prepared(first)
            for batch in batches:
                prepared(batch)
        return quantize_fx.convert_fx(prepared).eval()


# --------------------------------------------------------------------------------------------
# Quantization-aware fine-tuning
# --------------------------------------------------------------------------------------------


def _observers_follow_mode(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook (FX QAT): fake-quant observers update only in train mode.

    torch's observers also update in eval mode, so evaluating the prepared model (e.g. on the
    validation split between epochs) would otherwise move the quantization ranges.
    """
    module.apply(tq.enable_observer if module.training else tq.disable_observer)


class QatProgram(nn.Module):
    """A PT2E program prepared for quantization-aware training (prepare_qat_pt2e), trainable
    with compalign.train.fit like any module.

    An exported program refuses `.train()` / `.eval()`; here they switch its batch norm and
    dropout (torchao's move_exported_model_to_train / _eval) and its observers: the fake-quant
    ranges move only in train mode, so evaluating between epochs leaves them alone.
    """

    def __init__(self, program: fx.GraphModule) -> None:
        super().__init__()
        self.program = program

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def train(self, mode: bool = True) -> QatProgram:
        from torchao.quantization import pt2e

        self.training = mode
        if mode:
            pt2e.move_exported_model_to_train(self.program)
        else:
            pt2e.move_exported_model_to_eval(self.program)
        self.program.apply(pt2e.enable_observer if mode else pt2e.disable_observer)
        return self


def prepare_qat(
    model: nn.Module, example: torch.Tensor, options: QuantizeStaticOptions
) -> nn.Module:
    """A trainable copy of a float model with fake quantization for quantization-aware
    fine-tuning; train it with compalign.train.fit. PT2E's prepare_qat_pt2e (a QatProgram), or
    FX's prepare_qat_fx (`backend: fx`), the layers named in `float_layers` left in float."""
    clone = folded_copy(model)
    check_backend(options.backend, BACKENDS, "quantize_static")
    if options.backend == "pt2e":
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

        program = _export(clone.train(), example)
        quantizer = x86_quantizer(clone, qat=True, float_layers=options.float_layers)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"The input of \w+ is not quantized")
            return QatProgram(prepare_qat_pt2e(program, quantizer)).train()
    from torch.ao.quantization import quantize_fx

    with quiet():
        mapping = float_parts_kept(
            clone, tq.get_default_qat_qconfig_mapping("x86"), options.float_layers
        )
        prepared = quantize_fx.prepare_qat_fx(clone.train(), mapping, (example,))
    prepared.register_forward_pre_hook(_observers_follow_mode)
    return prepared


def convert_qat(prepared: nn.Module, options: QuantizeStaticOptions) -> nn.Module:
    """The deployable int8 model after quantization-aware fine-tuning (conversion works on a
    copy: the prepared model stays usable); `options.backend` must be the one the model was
    prepared with."""
    backend = options.backend
    check_backend(backend, BACKENDS, "quantize_static")
    if isinstance(prepared, QatProgram):
        if backend != "pt2e":
            raise ValueError(f"the model was prepared for backend pt2e, not {backend}")
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        program = folded_copy(prepared).eval().program
        return Int8Program(convert_pt2e(program)).eval()
    if backend != "fx":
        raise ValueError(f"the model was prepared for backend fx, not {backend}")
    from torch.ao.quantization import quantize_fx

    with quiet():
        return quantize_fx.convert_fx(folded_copy(prepared).eval()).eval()


# --------------------------------------------------------------------------------------------
# The registry entry
# --------------------------------------------------------------------------------------------


def apply(model: nn.Module, level, options: QuantizeStaticOptions, calibration) -> nn.Module:
    batches = calibration.batches if calibration else []
    return quantize_static(model.eval(), batches, options.backend, options.float_layers)


def rebuild(model: nn.Module, example, options: QuantizeStaticOptions) -> nn.Module:
    """An empty int8 model of the right structure to load a saved state dict into: one pass
    over the example initialises every observer, so conversion needs no placeholder ranges;
    every scale and zero point is then replaced by load_state_dict."""
    return quantize_static(model, [example], options.backend, options.float_layers)


ENTRY = Compressor(
    apply,
    quantization(prepare_qat, convert_qat),
    QuantizeStaticOptions,
    level_kind=None,
    needs_calibration=True,
    traces_globally=True,
    rebuild=rebuild,
)
