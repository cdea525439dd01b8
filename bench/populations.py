"""Throughput of training a population of reference models: one at a time vs vectorised.

Trains K members (`--members`, default 8) of `--model` (default: the reference model of
`ReferenceParams()`, small_cnn) on the embedded digits with the default reference training
settings except `--epochs` (default 5), seeds 0..K-1, twice: one after another with
`compalign.train.fit`, and together with `compalign.vectorised.fit_population`. Prints models per
minute, the speed-up, torch's thread count, and the convolution/matmul GFLOPS that one-at-a-time
training achieves against a big-matmul peak: where single-model training already runs near the
peak, batching the members has little left to win. Nothing is asserted.

Measured on a 2-core CPU (small_cnn, digits): the convolutions cost the same batched or not, but
one-at-a-time training gets channels-last tensors for free (1-channel images read from an HWC
buffer), where CPU max-pool and batch norm are ~10x faster, while vmap's pooling and batch-norm
rules fold the member dimension into the batch through a copy to a contiguous NCHW tensor; so the
vectorised path is somewhat slower here. It pays where single-model training is overhead-bound
(small batches, small models, GPUs).

Usage: python bench/populations.py [--epochs 5] [--members 8] [--model small_cnn]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from compalign.config import DataParams, ReferenceParams, TrainingParams
from compalign.data import build_table, load_split, write_prepared
from compalign.losses import LOSSES
from compalign.models import build_model
from compalign.train import TrainConfig, fit, predict_logits
from compalign.vectorised import fit_population


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Best GFLOPS of a float32 size x size matmul: the machine's practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def training_flops(model: torch.nn.Module, example: torch.Tensor, train_size: int, epochs: int):
    """Convolution/matmul FLOPs (forward + backward) of training on `train_size` examples for
    `epochs`, counted on one batch of `example` (FLOPs scale with the batch)."""
    model = copy.deepcopy(model).train()
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(example), torch.zeros(len(example), dtype=torch.long)).backward()
    return counter.get_total_flops() * train_size / len(example) * epochs


def main() -> None:
    load = os.getloadavg()  # before any work of ours: what else keeps the cores busy
    reference = ReferenceParams()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--model", default=reference.model)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        table, manifest = build_table(DataParams())
        manifest = write_prepared(table, manifest, scratch)
        train, test = load_split(scratch, "train", manifest), load_split(scratch, "test", manifest)
    height, _, channels = manifest["image_shape"]
    architecture = {
        "name": args.model,
        "num_classes": manifest["num_classes"],
        "in_channels": channels,
        "image_size": height,
    }
    settings = reference.model_dump(include=set(TrainingParams.model_fields))
    settings["epochs"] = args.epochs
    seeds = range(reference.seed, reference.seed + args.members)
    configs = [TrainConfig(**{**settings, "seed": seed}) for seed in seeds]
    start = [build_model(**architecture, seed=seed) for seed in seeds]
    loss_fn = LOSSES["ce"]()

    # Warm-up of both paths (first-call allocations, kernel selection) on a one-epoch run.
    warm = [TrainConfig(**{**settings, "epochs": 1, "seed": seed}) for seed in seeds][:2]
    fit(copy.deepcopy(start[0]), train, warm[0], loss_fn)
    fit_population(copy.deepcopy(start[:2]), train, warm, loss_fn)

    begin = time.perf_counter()
    alone = [fit(copy.deepcopy(m), train, c, loss_fn) for m, c in zip(start, configs, strict=True)]
    sequential_s = time.perf_counter() - begin
    begin = time.perf_counter()
    together = fit_population(copy.deepcopy(start), train, configs, loss_fn)
    vectorised_s = time.perf_counter() - begin

    example = train.normalise(train.images[: configs[0].batch_size])
    flops = args.members * training_flops(start[0], example, len(train), args.epochs)
    peak = matmul_peak_gflops()
    agreement = min(
        float(
            (predict_logits(a, test).argmax(1) == predict_logits(b, test).argmax(1)).float().mean()
        )
        for a, b in zip(alone, together, strict=True)
    )

    print(
        f"population: {args.members} x {args.model}, {args.epochs} epochs on {len(train)} digits, "
        f"batch {configs[0].batch_size}, {configs[0].optimizer}, lr {configs[0].lr}"
    )
    print(
        f"torch threads: {torch.get_num_threads()}; load average at start: {load[0]:.2f} "
        f"(other busy processes share the cores and slow small kernels most)"
    )
    for label, seconds in (("one at a time (fit)", sequential_s), ("vectorised", vectorised_s)):
        print(
            f"{label + ':':<24} {seconds:7.2f} s   {args.members / seconds * 60:7.1f} models/min"
            f"   {flops / seconds / 1e9:6.1f} GFLOPS"
        )
    print(f"speed-up (vectorised / one at a time): {sequential_s / vectorised_s:.2f}x")
    print(
        f"big-matmul peak: {peak:.1f} GFLOPS; one-at-a-time training reaches "
        f"{flops / sequential_s / 1e9 / peak:.0%} of it (conv/matmul FLOPs, forward + backward)"
    )
    print(f"test predictions, vectorised vs one at a time: >= {agreement:.1%} agree per member")


if __name__ == "__main__":
    main()
