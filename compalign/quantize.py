"""Quantization compressors: post-training int8 (dynamic, static), half precision, and QAT.

Methods are named as in params.yaml: "quantize_dynamic" (int8 Linear weights, activations
quantized on the fly), "quantize_static" (int8 with calibrated activation ranges) and "half"
(float16 or bfloat16 weights and compute). Every function works on a copy: the caller's float
model (and any pruning masks it carries) is left as it was.

Int8 goes through PyTorch's maintained path, torchao:
- static (`backend="pt2e"`, the default): `torch.export`, then torchao's `prepare_pt2e` /
  `convert_pt2e` with its `X86InductorQuantizer` (QAT: `prepare_qat_pt2e`). The result is an
  exported program of quantize/dequantize ops around float convs (`Int8Program`): it runs as it
  is, and `torch.compile` lowers it to fused int8 x86 kernels.
- dynamic (`backend="torchao"`, the default): torchao's `quantize_` with
  `Int8DynamicActivationInt8WeightConfig` (int8 per-row weights, activations quantized per row on
  the fly).
The older `torch.ao.quantization` paths stay behind `backend="fx"` (FX graph mode static, which
PyTorch has deprecated and plans to remove: pytorch/ao#2259) and `backend="eager"` (eager dynamic
quantization, also deprecated); their deprecation warnings are silenced locally around each call.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.ao.quantization as tq
from torch import fx, nn
from torch.nn.utils import parametrize

from compalign.finetune import Family, FineTuneJob
from compalign.pruning import folded_copy

METHODS = ("quantize_dynamic", "quantize_static", "half")
HALF_DTYPES = (torch.float16, torch.bfloat16)
STATIC_BACKENDS = ("pt2e", "fx")
DYNAMIC_BACKENDS = ("torchao", "eager")


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


def _check_backend(backend: str, known: tuple[str, ...], method: str) -> None:
    if backend not in known:
        raise ValueError(f"unknown {method} backend {backend!r}; choose one of {list(known)}")
    if backend != known[0]:  # the first is the maintained path (PT2E / torchao)
        warnings.warn(
            f"compress.{method}.backend={backend} uses torch.ao.quantization, which PyTorch has "
            f"deprecated (pytorch/ao#2259); {known[0]!r}, the default, is the maintained path",
            FutureWarning,
            stacklevel=3,
        )


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
        from compalign.errors import UserError

        raise UserError(
            f"compress.quantize_static.float_layers: {unknown} are not conv or linear layers of "
            f"the model (it has {', '.join(quantizable_layers(model))})"
        )


# --------------------------------------------------------------------------------------------
# Post-training quantization
# --------------------------------------------------------------------------------------------


def quantize_dynamic(model: nn.Module, backend: str = "torchao") -> nn.Module:
    """Post-training dynamic int8 quantization of the Linear layers (weights int8, activations
    quantized on the fly): torchao's `quantize_` with Int8DynamicActivationInt8WeightConfig
    (per-row int8 weights, per-row symmetric activations), or with `backend="eager"` the
    deprecated `torch.ao.quantization.quantize_dynamic` (per-tensor weights and activations)."""
    _check_backend(backend, DYNAMIC_BACKENDS, "quantize_dynamic")
    clone = folded_copy(model).eval()
    if backend == "eager":
        with _quiet():
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
    _check_backend(backend, STATIC_BACKENDS, "quantize_static")
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

    with _quiet():
        mapping = float_parts_kept(clone, tq.get_default_qconfig_mapping("x86"), float_layers)
        prepared = quantize_fx.prepare_fx(clone, mapping, (first,))
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


class _RoundToHalf(nn.Module):
    """Parametrization: the weight rounded to `dtype` in the forward pass, straight-through
    gradient (the rounding error is treated as a constant)."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (weight.to(self.dtype).to(weight.dtype) - weight).detach()


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


def default_backend(method: str, backend: str | None = None) -> str | None:
    """`backend`, or the int8 method's default ("pt2e" static, "torchao" dynamic)."""
    defaults = {"quantize_static": STATIC_BACKENDS[0], "quantize_dynamic": DYNAMIC_BACKENDS[0]}
    return backend or defaults.get(method)


def prepare_qat(
    model: nn.Module,
    method: str,
    example_inputs: torch.Tensor,
    dtype: torch.dtype = torch.float16,
    backend: str | None = None,
    float_layers: Sequence[str] = (),
) -> nn.Module:
    """A trainable copy of a float model with fake quantization for quantization-aware
    fine-tuning ("half" rounds the weights to `dtype`); train it with compalign.train.fit.
    Static int8: PT2E's prepare_qat_pt2e (a QatProgram), or FX's prepare_qat_fx (`backend="fx"`),
    the layers named in `float_layers` left in float."""
    _check_method(method)
    backend = default_backend(method, backend)
    clone = folded_copy(model)
    if method == "quantize_static":
        _check_backend(backend, STATIC_BACKENDS, method)
        if backend == "pt2e":
            from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

            program = _export(clone.train(), example_inputs)
            quantizer = x86_quantizer(clone, qat=True, float_layers=float_layers)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", r"The input of \w+ is not quantized")
                return QatProgram(prepare_qat_pt2e(program, quantizer)).train()
        from torch.ao.quantization import quantize_fx

        with _quiet():
            mapping = float_parts_kept(
                clone, tq.get_default_qat_qconfig_mapping("x86"), float_layers
            )
            prepared = quantize_fx.prepare_qat_fx(clone.train(), mapping, (example_inputs,))
        prepared.register_forward_pre_hook(_observers_follow_mode)
        return prepared
    if method == "quantize_dynamic":
        _check_backend(backend, DYNAMIC_BACKENDS, method)
        for module in list(clone.modules()):
            if _is_plain_linear(module):  # what quantize_dynamic converts
                parametrize.register_parametrization(module, "weight", _FakeInt8Weight(backend))
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


def convert_qat(
    prepared: nn.Module,
    method: str,
    dtype: torch.dtype = torch.float16,
    backend: str | None = None,
) -> nn.Module:
    """The deployable model after quantization-aware fine-tuning (int8, or the half model);
    `backend` must be the one the model was prepared with."""
    _check_method(method)
    backend = default_backend(method, backend)
    if method == "quantize_static":
        _check_backend(backend, STATIC_BACKENDS, method)
        # conversion modifies its argument; the prepared model stays usable
        if isinstance(prepared, QatProgram):
            if backend != "pt2e":
                raise ValueError(f"the model was prepared for backend pt2e, not {backend}")
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

            program = folded_copy(prepared).eval().program
            return Int8Program(convert_pt2e(program)).eval()
        if backend != "fx":
            raise ValueError(f"the model was prepared for backend fx, not {backend}")
        from torch.ao.quantization import quantize_fx

        with _quiet():
            return quantize_fx.convert_fx(folded_copy(prepared).eval()).eval()
    clone = folded_copy(prepared).eval()
    # The underlying float weights are converted: int8 (same scale as the fake quantization) or
    # cast to the half dtype give exactly the weights the forward pass trained against.
    removed = _strip_parametrizations(clone)
    if method == "quantize_dynamic":
        trained = {p.backend for p in removed if isinstance(p, _FakeInt8Weight)}
        if trained - {backend}:
            raise ValueError(f"the model was prepared for backend {trained.pop()}, not {backend}")
        return quantize_dynamic(clone, backend)
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
    backend: str | None = None,
    float_layers: Sequence[str] = (),
) -> nn.Module:
    """An empty quantized/half model of the right structure to `load_state_dict` a saved
    quantized/half state dict into (no calibration data needed), for checkpoint loading."""
    _check_method(method)
    backend = default_backend(method, backend)
    if method == "quantize_dynamic":
        return quantize_dynamic(float_model, backend)
    if method == "quantize_static":
        # One pass over the example initialises every observer, so conversion needs no
        # placeholder ranges; every scale and zero point is then replaced by load_state_dict.
        return quantize_static(float_model, [example_inputs], backend, float_layers)
    return to_half(float_model, dtype)


# --------------------------------------------------------------------------------------------
# The quantizers' family
# --------------------------------------------------------------------------------------------


def half_dtype(options: object) -> torch.dtype:
    """The half dtype named by a quantizer's options (`compress.half.dtype`); bfloat16 for the
    int8 quantizers, which have no such option."""
    return getattr(torch, getattr(options, "dtype", "bfloat16"))


def int8_backend(options: object) -> str | None:
    """The int8 backend named by a quantizer's options (`compress.quantize_static.backend`,
    `compress.quantize_dynamic.backend`); None (the method's default) for the others."""
    return getattr(options, "backend", None)


def float_layers_of(options: object) -> tuple[str, ...]:
    """The layers a quantizer's options keep in float (`compress.quantize_static.float_layers`);
    none for the others."""
    return tuple(getattr(options, "float_layers", ()) or ())


def fine_tune_quantization_aware(job: FineTuneJob) -> nn.Module:
    """Quantization-aware fine-tuning: from the reference with fake quantization, then converted."""
    example = job.train.normalise(job.train.images[:1])
    dtype, backend = half_dtype(job.options), int8_backend(job.options)
    prepared = prepare_qat(
        job.fresh_reference(), job.method, example, dtype, backend, float_layers_of(job.options)
    )
    job.fit(prepared)
    return convert_qat(prepared.cpu(), job.method, dtype, backend)


QUANTIZATION = Family("quantization", fine_tune_quantization_aware, quantized=True)
