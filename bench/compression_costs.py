"""Costs of each compressor on a CIFAR ResNet-56 (random weights: costs do not depend on them).

For every compressor, prints parameters, MACs, size on disk and median CPU latency at batch 1 and
batch 64, each relative to the dense reference. The targets of the compressors issue are checked
and printed: structured pruning with 50% of MACs removed at <= 0.65x the reference's batch-64
latency, and static int8 below the reference's latency.

A second table times the int8 models (static: PT2E and the FX fallback; dynamic: torchao and the
eager fallback) as they are (eager) and after `torch.compile` (inductor, freezing on, as PyTorch's
PT2E x86 recipe has it): a PT2E program runs its quantize/dequantize ops in float until inductor
lowers them to fused int8 kernels.

Usage: python bench/compression_costs.py [--model resnet56] [--rounds 40] [--threads N]
       [--no-compile]
"""

from __future__ import annotations

import argparse
import copy
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile timing of int8 models"
    )
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)

    generator = torch.Generator().manual_seed(0)
    reference = build_model(arguments.model, 10, 3, 32, seed=0).eval()
    example = torch.randn(1, 3, 32, 32, generator=generator)
    calibration = Calibration([torch.randn(64, 3, 32, 32, generator=generator) for _ in range(4)])

    models, rows = {}, []
    for name, level, options in CASES:
        model = copy.deepcopy(reference)
        if name != "reference":
            model = COMPRESSORS[name](model, level, options, calibration).eval()
        quantized = name in COMPRESSORS and COMPRESSORS[name].family.quantized
        float_model = reference if quantized else model  # MACs of a quantized model: its float twin
        variant = options.get("dtype") or options.get("backend")
        label = f"{name} ({variant})" if variant else name
        if level is not None:
            label += f" {level:g}"
        if options.get("round_to"):
            label += f" round_to={options['round_to']}"
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
        f"{'compressor':<24}{'nonzero':>9}{'MACs x':>7}{'size x':>7}{'gzip x':>7}"
        f"{'b1 ms':>7}{'b1 x':>6}{'b64 ms':>9}{'[q1, q3]':>16}{'b64 x':>7}{'min x':>7}"
    )
    for row in rows:
        quartiles = f"[{row['b64_q1']:.0f}, {row['b64_q3']:.0f}]"
        print(
            f"{row['compressor']:<24}{row['params_nonzero']:>9,}"
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
        int8 = ["reference", *(label for label in models if label.startswith("quantize_"))]
        pt2e = models["quantize_static (pt2e)"]
        try:  # torchao's eager lowering of a PT2E program to onednn int8 ops (no inductor)
            from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

            # the lowering exports again with static shapes: one program per batch size
            lowered = {
                batch: lower_pt2e_quantized_to_x86(pt2e.program, (example.repeat(batch, 1, 1, 1),))
                for batch in (1, 64)
            }
            models["quantize_static (pt2e, lowered)"] = lambda x: lowered[x.shape[0]](x)
            int8.append("quantize_static (pt2e, lowered)")
        except Exception as error:
            print(f"lower_pt2e_quantized_to_x86 failed: {type(error).__name__}: {error}")
        compiled_latency(models, int8, example, arguments.rounds)


def compiled_latency(
    models: dict[str, torch.nn.Module], labels: list[str], example: torch.Tensor, rounds: int
) -> None:
    """Print eager and torch.compile latency (median ms, batch 1 and 64) of the given models."""
    import torch._inductor.config as inductor_config

    # freezing: weights become constants, so inductor can prepack int8 weights and fuse the
    # quantize/dequantize ops of a PT2E program into int8 kernels (PyTorch's x86 PT2E recipe)
    inductor_config.freezing = True
    compiled, failures, compile_s = {}, {}, {}
    for label in labels:
        if "lowered" in label:
            failures[label] = "not compiled (already lowered)"
            continue
        start = time.perf_counter()
        try:
            candidate = torch.compile(models[label], dynamic=False)
            with torch.inference_mode():
                for batch in (1, 64):  # compiles once per batch size
                    candidate(example.repeat(batch, 1, 1, 1))
            compiled[f"{label} [compiled]"] = candidate
            compile_s[label] = time.perf_counter() - start
        except Exception as error:  # reported in the table, not hidden
            failures[label] = f"compile failed: {type(error).__name__}: {str(error)[:60]!r}"
    timed = {label: models[label] for label in labels} | compiled
    latency = {batch: interleaved_latency(timed, example, batch, rounds) for batch in (1, 64)}
    base = latency[64]["reference"]["median"]
    print()
    print(
        "int8 latency, eager and torch.compile (inductor, freezing): median ms of "
        f"{rounds} interleaved rounds; x = relative to the eager reference at batch 64"
    )
    print(
        f"{'model':<28}{'b1 eager':>9}{'b1 comp':>9}{'b64 eager':>11}{'b64 comp':>10}"
        f"{'eager x':>9}{'comp x':>8}{'compile s':>11}"
    )
    for label in labels:
        eager = {batch: latency[batch][label]["median"] for batch in (1, 64)}
        if label in failures:
            print(
                f"{label:<28}{eager[1]:>9.2f}{'-':>9}{eager[64]:>11.1f}{'-':>10}"
                f"{eager[64] / base:>9.2f}{'-':>8}  {failures[label]}"
            )
            continue
        key = f"{label} [compiled]"
        fast = {batch: latency[batch][key]["median"] for batch in (1, 64)}
        print(
            f"{label:<28}{eager[1]:>9.2f}{fast[1]:>9.2f}{eager[64]:>11.1f}{fast[64]:>10.1f}"
            f"{eager[64] / base:>9.2f}{fast[64] / base:>8.2f}{compile_s[label]:>11.0f}"
        )


if __name__ == "__main__":
    main()
