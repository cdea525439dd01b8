"""Costs of each compressor on a CIFAR ResNet-56 (random weights: costs do not depend on them).

For every compressor, prints parameters, MACs, size on disk and median CPU latency at batch 1 and
batch 64, each relative to the dense reference. The targets of the compressors issue are checked
and printed: structured pruning with 50% of MACs removed at <= 0.65x the reference's batch-64
latency, and static int8 below the reference's latency.

Usage: python bench/compression_costs.py [--model resnet56] [--rounds 40] [--threads N]
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
    ("quantize_dynamic", None, {}),
    ("quantize_static", None, {}),
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
        label = name if not options.get("dtype") else f"{name} ({options['dtype']})"
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
        ("static int8 below 1x", "quantize_static", 1.0, True),
    ):
        median = by_name[name]["b64_median"] / base["b64_median"]
        fastest = by_name[name]["b64_min"] / base["b64_min"]
        met = median < limit if strict else median <= limit
        print(
            f"target: {label} the reference's batch-64 latency: median {median:.2f}x, "
            f"min {fastest:.2f}x ({'met' if met else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
