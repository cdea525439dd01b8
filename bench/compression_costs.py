"""Costs of each compressor on a CIFAR ResNet-56 (random weights: costs do not depend on them).

For every compressor, prints parameters, MACs, size on disk and median CPU latency at batch 1 and
batch 64, each relative to the dense reference. The targets of the compressors issue are checked
and printed: structured pruning with 50% of MACs removed at <= 0.65x the reference's batch-64
latency, and static int8 below the reference's latency.

A second table times the int8 models (static: PT2E and the FX fallback; dynamic: torchao and the
eager fallback; the PT2E program lowered by torchao's `lower_pt2e_quantized_to_x86`) and the
float reference as they are (eager) and after `torch.compile` (inductor, freezing on, as PyTorch's
PT2E x86 recipe has it): a PT2E program runs its quantize/dequantize ops in float until inductor
lowers them to fused int8 kernels. Each model is built, compiled and timed (interleaved with the
eager reference) in a child process of its own, killed after `--compile-timeout` seconds, so the
table always finishes: a model that does not compile in time, or fails to, gets a row saying why.

Usage: python bench/compression_costs.py [--model resnet56] [--rounds 40] [--threads N]
       [--no-compile] [--compile-timeout 600]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

import torch

from compalign.compressors import COMPRESSORS, Calibration
from compalign.costs import deployable, parameter_counts, serialized_size
from compalign.models import build_model
from compalign.pruning import count_macs

CASES = [  # compressor, level, options
    ("reference", None, {}),
    ("magnitude_global", 0.9, {}),
    ("structured", 0.5, {"importance": "l1"}),
    ("structured", 0.5, {"importance": "l1", "round_to": 8}),
    ("quantize_dynamic", None, {"backend": "torchao"}),
    ("quantize_dynamic", None, {"backend": "eager"}),
    ("quantize_static", None, {"backend": "pt2e"}),
    ("quantize_static", None, {"backend": "fx"}),
    ("half", None, {"dtype": "bfloat16"}),
    ("half", None, {"dtype": "float16"}),
]
# float16 runs ~40x slower on CPUs without native float16; timed apart, after the others: among
# them its slow kernels disturbed the timing of whatever ran next
SLOW = {"half (float16)"}


def interleaved_latency(
    models: dict[str, torch.nn.Module], example: torch.Tensor, batch: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Per model: median, minimum and quartiles (ms) of single forward passes at `batch`, timed
    one model after another in each of `rounds` rounds, so that a shared machine's drift falls on
    all models alike (timing each model in a block of its own let drift decide the ratios)."""
    inputs = example.repeat(batch, 1, 1, 1)
    samples: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for name, model in models.items():
            for _ in range(1 if name in SLOW else 3):  # warm-up
                model(inputs)
        order = [name for name in models if name not in SLOW]
        for _ in range(rounds):
            for name in order:
                start = time.perf_counter()
                models[name](inputs)
                samples[name].append((time.perf_counter() - start) * 1e3)
        for name in (name for name in models if name in SLOW):
            for _ in range(3):
                start = time.perf_counter()
                models[name](inputs)
                samples[name].append((time.perf_counter() - start) * 1e3)
    result = {}
    for name, values in samples.items():
        q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
        result[name] = {"median": statistics.median(values), "min": min(values), "q1": q1, "q3": q3}
    return result


def case_label(name: str, level, options: dict) -> str:
    variant = options.get("dtype") or options.get("backend")
    label = f"{name} ({variant})" if variant else name
    if level is not None:
        label += f" {level:g}"
    if options.get("round_to"):
        label += f" round_to={options['round_to']}"
    return label


def setup(model_name: str) -> tuple[torch.nn.Module, torch.Tensor, Calibration]:
    """The reference (random weights, seed 0), one example input and the calibration batches."""
    generator = torch.Generator().manual_seed(0)
    reference = build_model(model_name, 10, 3, 32, seed=0).eval()
    example = torch.randn(1, 3, 32, 32, generator=generator)
    calibration = Calibration([torch.randn(64, 3, 32, 32, generator=generator) for _ in range(4)])
    return reference, example, calibration


def compress(reference, name, level, options, calibration) -> torch.nn.Module:
    model = copy.deepcopy(reference)
    if name != "reference":
        model = COMPRESSORS[name](model, level, options, calibration).eval()
    return model


LOWERED = "quantize_static (pt2e, lowered)"
COMPILED = [  # the second table's rows: the reference and every int8 model
    "reference",
    *(case_label(*case) for case in CASES if case[0].startswith("quantize_")),
    LOWERED,
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile timing of int8 models"
    )
    parser.add_argument(
        "--compile-timeout",
        type=float,
        default=600,
        help="seconds each model may take to be built, compiled and timed (its own process)",
    )
    parser.add_argument("--compiled-one", help=argparse.SUPPRESS)  # the child's model
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    if arguments.compiled_one:
        print(json.dumps(compiled_one(arguments.model, arguments.compiled_one, arguments.rounds)))
        return

    reference, example, calibration = setup(arguments.model)
    models, rows = {}, []
    for name, level, options in CASES:
        model = compress(reference, name, level, options, calibration)
        quantized = name in COMPRESSORS and COMPRESSORS[name].family.quantized
        float_model = reference if quantized else model  # MACs of a quantized model: its float twin
        label = case_label(name, level, options)
        models[label] = deployable(model)  # as the pipeline times it: BN folded, masks folded
        rows.append(
            {
                "compressor": label,
                **parameter_counts(float_model),
                "macs": count_macs(float_model, example),
                **serialized_size(model),
            }
        )
    for batch in (1, 64):
        latency = interleaved_latency(models, example, batch, arguments.rounds)
        for row in rows:
            row.update({f"b{batch}_{k}": v for k, v in latency[row["compressor"]].items()})

    base = rows[0]
    print(
        f"{arguments.model}, 3x32x32 input, {torch.get_num_threads()} torch threads; latency: "
        f"{arguments.rounds} interleaved rounds of one forward pass per model (float16: 3); "
        "x = relative to the reference"
    )
    print(
        f"{'compressor':<28}{'nonzero':>9}{'MACs x':>7}{'size x':>7}{'gzip x':>7}"
        f"{'b1 ms':>7}{'b1 x':>6}{'b64 ms':>9}{'[q1, q3]':>16}{'b64 x':>7}{'min x':>7}"
    )
    for row in rows:
        quartiles = f"[{row['b64_q1']:.0f}, {row['b64_q3']:.0f}]"
        print(
            f"{row['compressor']:<28}{row['params_nonzero']:>9,}"
            f"{row['macs'] / base['macs']:>7.2f}{row['size_bytes'] / base['size_bytes']:>7.2f}"
            f"{row['size_gzip_bytes'] / base['size_gzip_bytes']:>7.2f}"
            f"{row['b1_median']:>7.2f}{row['b1_median'] / base['b1_median']:>6.2f}"
            f"{row['b64_median']:>9.1f}{quartiles:>16}"
            f"{row['b64_median'] / base['b64_median']:>7.2f}{row['b64_min'] / base['b64_min']:>7.2f}"
        )
    by_name = {row["compressor"]: row for row in rows}
    for label, name, limit, strict in (
        ("structured 50% MACs at <= 0.65x", "structured 0.5", 0.65, False),
        ("structured 50% MACs, round_to=8, at <= 0.65x", "structured 0.5 round_to=8", 0.65, False),
        ("static int8 (pt2e) below 1x", "quantize_static (pt2e)", 1.0, True),
        ("static int8 (fx) below 1x", "quantize_static (fx)", 1.0, True),
    ):
        median = by_name[name]["b64_median"] / base["b64_median"]
        fastest = by_name[name]["b64_min"] / base["b64_min"]
        met = median < limit if strict else median <= limit
        print(
            f"target: {label} the reference's batch-64 latency: median {median:.2f}x, "
            f"min {fastest:.2f}x ({'met' if met else 'NOT met'})"
        )
    if not arguments.no_compile:
        del models
        compiled_table(arguments)


def compiled_one(model_name: str, label: str, rounds: int) -> dict:
    """In the child: build `label`'s model, compile it (or lower it: the PT2E program through
    torchao's lower_pt2e_quantized_to_x86) and time the eager reference, the model as it is and
    the compiled model, interleaved. Returns the medians (ms) and the compile seconds, or the
    error that stopped it."""
    import torch._inductor.config as inductor_config

    reference, example, calibration = setup(model_name)
    cases = {case_label(*case): case for case in CASES}
    name, level, options = cases[label if label != LOWERED else "quantize_static (pt2e)"]
    model = deployable(compress(reference, name, level, options, calibration))
    # freezing: weights become constants, so inductor can prepack int8 weights and fuse the
    # quantize/dequantize ops of a PT2E program into int8 kernels (PyTorch's x86 PT2E recipe)
    inductor_config.freezing = True
    start = time.perf_counter()
    try:
        if label == LOWERED:
            from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

            # the lowering exports again with static shapes: one program per batch size
            lowered = {
                batch: lower_pt2e_quantized_to_x86(model.program, (example.repeat(batch, 1, 1, 1),))
                for batch in (1, 64)
            }

            def fast(x: torch.Tensor) -> torch.Tensor:
                return lowered[x.shape[0]](x)
        else:
            fast = torch.compile(model, dynamic=False)
        with torch.inference_mode():
            for batch in (1, 64):  # compiles once per batch size
                fast(example.repeat(batch, 1, 1, 1))
    except Exception as error:  # reported in the table, not hidden
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return {
            "error": f"{'lowering' if label == LOWERED else 'compile'} failed: "
            f"{type(error).__name__}: {first[:80]}"
        }
    seconds = time.perf_counter() - start
    # the reference as the first table times it (batch norm folded)
    timed = {"reference": deployable(reference), "eager": model, "compiled": fast}
    latency = {batch: interleaved_latency(timed, example, batch, rounds) for batch in (1, 64)}
    return {"latency": latency, "compile_s": seconds}


def compiled_table(arguments: argparse.Namespace) -> None:
    """Print eager and torch.compile latency (median ms, batch 1 and 64) of the reference and the
    int8 models, each measured in a child process with a time limit."""
    print()
    print(
        "eager and torch.compile (inductor, freezing) latency: median ms of "
        f"{arguments.rounds} interleaved rounds, each model in its own process, interleaved with "
        "the eager reference; x = relative to that eager reference at batch 64 (median; min: "
        "fastest pass over fastest pass)"
    )
    print(
        f"{'model':<32}{'b1 eager':>9}{'b1 comp':>9}{'b64 eager':>11}{'b64 comp':>10}"
        f"{'eager x':>9}{'comp x':>8}{'e min x':>9}{'c min x':>8}{'compile s':>11}"
    )
    for label in COMPILED:
        command = [
            sys.executable,
            __file__,
            "--model",
            arguments.model,
            "--rounds",
            str(arguments.rounds),
            "--compiled-one",
            label,
        ]
        if arguments.threads:
            command += ["--threads", str(arguments.threads)]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=arguments.compile_timeout
            )
            lines = done.stdout.strip().splitlines()
            result = (
                json.loads(lines[-1])
                if done.returncode == 0 and lines
                else {"error": f"exit {done.returncode}: {done.stderr.strip()[-80:]}"}
            )
        except subprocess.TimeoutExpired:
            result = {"error": f"not done in {arguments.compile_timeout:g} s (killed)"}
        if "error" in result:
            dashes = "".join(f"{'-':>{width}}" for width in (9, 9, 11, 10, 9, 8, 9, 8))
            print(f"{label:<32}{dashes}  {result['error']}")
            continue
        b1, b64 = result["latency"]["1"], result["latency"]["64"]
        base, fastest = b64["reference"]["median"], b64["reference"]["min"]
        print(
            f"{label:<32}{b1['eager']['median']:>9.2f}{b1['compiled']['median']:>9.2f}"
            f"{b64['eager']['median']:>11.1f}{b64['compiled']['median']:>10.1f}"
            f"{b64['eager']['median'] / base:>9.2f}{b64['compiled']['median'] / base:>8.2f}"
            f"{b64['eager']['min'] / fastest:>9.2f}{b64['compiled']['min'] / fastest:>8.2f}"
            f"{result['compile_s']:>11.0f}"
        )


if __name__ == "__main__":
    main()
