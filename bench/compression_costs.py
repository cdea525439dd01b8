"""Costs of each compressor on a CIFAR ResNet-56 (random weights: costs do not depend on them).

For every compressor, prints parameters, MACs, size on disk and median CPU latency at batch 1 and
batch 64, each relative to the dense reference. The targets of the compressors issue are checked
and printed: structured pruning with 50% of MACs removed at <= 0.65x the reference's batch-64
latency, and static int8 below the reference's latency.

Usage: python bench/compression_costs.py [--model resnet56] [--repeats 30] [--threads N]
"""

from __future__ import annotations

import argparse
import copy

import torch

from compalign.compress import COMPRESSORS, Calibration
from compalign.costs import measure_latency, parameter_counts, serialized_size
from compalign.models import build_model
from compalign.structured import count_macs

CASES = [  # compressor, level, options, repeats (None: --repeats)
    ("reference", None, {}, None),
    ("magnitude_global", 0.9, {}, None),
    ("structured", 0.5, {"importance": "l1"}, None),
    ("quantize_dynamic", None, {}, None),
    ("quantize_static", None, {}, None),
    ("half", None, {"dtype": "bfloat16"}, None),
    # float16 runs ~40x slower on CPUs without native float16: a few repeats tell as much
    ("half", None, {"dtype": "float16"}, 5),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)

    generator = torch.Generator().manual_seed(0)
    reference = build_model(arguments.model, 10, 3, 32, seed=0).eval()
    example = torch.randn(1, 3, 32, 32, generator=generator)
    calibration = Calibration([torch.randn(64, 3, 32, 32, generator=generator) for _ in range(4)])

    rows = []
    for name, level, options, repeats in CASES:
        model = copy.deepcopy(reference)
        if name != "reference":
            model = COMPRESSORS[name](model, level, options, calibration).eval()
        quantized = name in COMPRESSORS and COMPRESSORS[name].family == "quantization"
        float_model = reference if quantized else model  # MACs of a quantized model: its float twin
        label = name if not options.get("dtype") else f"{name} ({options['dtype']})"
        if level is not None:
            label += f" {level:g}"
        rows.append(
            {
                "compressor": label,
                **parameter_counts(float_model),
                "macs": count_macs(float_model, example),
                **serialized_size(model),
                **measure_latency(
                    model, example, (1, 64), warmup=2, repeats=repeats or arguments.repeats
                ),
            }
        )

    base = rows[0]
    print(
        f"{arguments.model}, 3x32x32 input, {base['latency_threads']:.0f} torch threads, "
        f"median of {arguments.repeats} runs after 5 warm-up"
    )
    print(
        f"{'compressor':<28}{'nonzero':>10}{'MACs x':>8}{'size x':>8}{'gzip x':>8}"
        f"{'b1 ms':>8}{'b1 x':>7}{'b64 ms':>9}{'b64 x':>7}"
    )
    for row in rows:
        print(
            f"{row['compressor']:<28}{row['params_nonzero']:>10,}"
            f"{row['macs'] / base['macs']:>8.2f}{row['size_bytes'] / base['size_bytes']:>8.2f}"
            f"{row['size_gzip_bytes'] / base['size_gzip_bytes']:>8.2f}"
            f"{row['latency_ms_b1']:>8.2f}{row['latency_ms_b1'] / base['latency_ms_b1']:>7.2f}"
            f"{row['latency_ms_b64']:>9.2f}{row['latency_ms_b64'] / base['latency_ms_b64']:>7.2f}"
        )
    by_name = {row["compressor"]: row for row in rows}
    structured = by_name["structured 0.5"]["latency_ms_b64"] / base["latency_ms_b64"]
    static = by_name["quantize_static"]["latency_ms_b64"] / base["latency_ms_b64"]
    print(
        f"\ntarget: structured 50% MACs at <= 0.65x batch-64 latency: {structured:.2f}x "
        f"({'met' if structured <= 0.65 else 'NOT met'})"
    )
    print(
        f"target: static int8 below the reference's batch-64 latency: {static:.2f}x "
        f"({'met' if static < 1 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
