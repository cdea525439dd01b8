"""Training throughput as a fraction of the machine's matmul peak, at the same thread count.

Trains the default reference model (`ReferenceParams().model`, small_cnn) on the default data
(the embedded digits, 8x8 grey, at the default batch size) and resnet20 on CIFAR-shaped images
(32x32 RGB, batch 128) with `compalign.train.fit` itself (normalisation, shuffling, optimizer and
schedule included: a regression anywhere in the loop shows up), and prints images per second,
the achieved training FLOP/s and its fraction of a large float32 `torch.matmul`'s FLOP/s. Training
FLOPs are counted by torch's FlopCounterMode on one forward + backward pass (convolutions and
matmuls); `6 x MACs` (compalign.pruning.count_macs: forward MACs x 2 FLOPs x 3 for forward +
backward) is printed beside it as a cross-check. Nothing is asserted: timings depend on the machine
and on what else runs on it (the load average is printed).

Usage: python bench/training.py [--batches 20] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time

import pandas as pd
import torch
import torch.nn.functional as F
from populations import matmul_peak_gflops  # bench/populations.py (bench/ is on the path)
from torch.utils.flop_counter import FlopCounterMode

from compalign.config import ReferenceParams, TrainingParams
from compalign.data import Split
from compalign.losses import LOSSES
from compalign.models import build_model
from compalign.pruning import count_macs
from compalign.train import TrainConfig, fit


def random_split(count: int, channels: int, size: int, seed: int = 0) -> Split:
    """Random uint8 images of the given shape with 10 classes (cost does not depend on content)."""
    generator = torch.Generator().manual_seed(seed)
    return Split(
        images=torch.randint(
            0, 256, (count, channels, size, size), dtype=torch.uint8, generator=generator
        ),
        labels=torch.randint(0, 10, (count,), generator=generator),
        example_ids=[str(index) for index in range(count)],
        mean=torch.full((1, channels, 1, 1), 0.5),
        std=torch.full((1, channels, 1, 1), 0.25),
        groups=pd.DataFrame(index=range(count)),
    )


def training_flops_per_image(model: torch.nn.Module, example: torch.Tensor) -> float:
    """Forward + backward FLOPs per image (FlopCounterMode on one batch)."""
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(example), torch.zeros(len(example), dtype=torch.long)).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(example)


def measure(name: str, channels: int, size: int, batch_size: int, batches: int, peak: float):
    """Images/s of `fit` for `batches` batches of `name`, and the FLOP/s fraction of `peak`."""
    settings = ReferenceParams().model_dump(include=set(TrainingParams.model_fields))
    config = TrainConfig(**{**settings, "epochs": 1, "batch_size": batch_size})
    model = build_model(name, 10, channels, size, seed=0)
    fit(model, random_split(2 * batch_size, channels, size), config, LOSSES["ce"]())  # warm-up
    train = random_split(batches * batch_size, channels, size)
    example = train.normalise(train.images[:batch_size])
    flops = training_flops_per_image(model.train(), example)
    macs = count_macs(model.eval(), example) / batch_size
    start = time.perf_counter()
    fit(model, train, config, LOSSES["ce"]())
    seconds = time.perf_counter() - start
    images_per_s = len(train) / seconds
    print(
        f"{name:<10} {channels}x{size}x{size} batch {batch_size:<4} {images_per_s:9.0f} images/s  "
        f"{flops / 1e6:7.2f} MFLOP/image (6 x MACs: {6 * macs / 1e6:7.2f})  "
        f"{images_per_s * flops / 1e9:6.1f} GFLOP/s = {images_per_s * flops / peak:5.1%} of peak"
    )


def main() -> None:
    load = os.getloadavg()  # before any work of ours: what else keeps the cores busy
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="timed batches per model")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops() * 1e9
    print(
        f"training throughput, float32 on the CPU; torch threads: {torch.get_num_threads()}; "
        f"load average at start: {load[0]:.2f}"
    )
    print(f"matmul peak (2048x2048 float32, best of 10): {peak / 1e9:.1f} GFLOP/s")
    default = ReferenceParams()
    measure(default.model, 1, 8, default.batch_size, args.batches, peak)  # the embedded digits
    measure("resnet20", 3, 32, 128, args.batches, peak)  # CIFAR-10's shape


if __name__ == "__main__":
    main()
