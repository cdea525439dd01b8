"""Training speed on a CUDA GPU: reference training, and a population one at a time vs vectorised.

Runs only where CUDA is available (elsewhere it prints one line and exits 0). Trains with
`compalign.train.fit` and `compalign.vectorised.fit_population` as the pipeline does on CUDA
(bf16 autocast, or fp16 with a grad scaler; channels-last; pinned, non-blocking copies;
compalign.accelerated), on random CIFAR-shaped images (cost does not depend on content), and
prints images per second:
- reference training of `--model` (default resnet20), eager and with `run.compile: true`
  (torch.compile);
- a population of `--members` (default 8) small_cnn members: one `fit` after another, and all
  together with `fit_population`;
- trainings at once on the one GPU, as the pipeline's thread pool runs them (`run.gpu_workers`,
  default 2): 1, 2 and 4 `fit`s of `--model` in threads at the same time, total images/s.

Usage: python bench/gpu.py [--model resnet20] [--batches 50] [--members 8]
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd
import torch

from compalign.accelerated import compiling
from compalign.config import ReferenceParams, TrainingParams
from compalign.data import Split
from compalign.losses import LOSSES
from compalign.models import build_model
from compalign.train import TrainConfig, fit
from compalign.vectorised import fit_population


def random_split(count: int, channels: int = 3, size: int = 32, seed: int = 0) -> Split:
    """Random uint8 images with 10 classes."""
    generator = torch.Generator().manual_seed(seed)
    shape = (count, channels, size, size)
    return Split(
        images=torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator),
        labels=torch.randint(0, 10, (count,), generator=generator),
        example_ids=[str(index) for index in range(count)],
        mean=torch.full((1, channels, 1, 1), 0.5),
        std=torch.full((1, channels, 1, 1), 0.25),
        groups=pd.DataFrame(index=range(count)),
    )


def config(batch_size: int, seed: int = 0) -> TrainConfig:
    settings = ReferenceParams().model_dump(include=set(TrainingParams.model_fields))
    return TrainConfig(**{**settings, "epochs": 1, "batch_size": batch_size, "seed": seed})


def timed(train) -> float:
    """Seconds of `train()` (after its queued GPU work has finished)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    train()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def trainings_at_once(
    model_name: str, count: int, train: Split, batch_size: int, device: torch.device
) -> float:
    """Total images/s of `count` trainings of `model_name` running at once, each in a thread of
    its own (as the pipeline's task threads run them), each on `train`."""
    from concurrent.futures import ThreadPoolExecutor

    channels, size = train.images.shape[1], train.images.shape[2]
    models = [build_model(model_name, 10, channels, size, seed=seed) for seed in range(count)]

    def train_one(seed: int) -> None:
        fit(models[seed], train, config(batch_size, seed), LOSSES["ce"](), device=device)

    def all_at_once() -> None:
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(train_one, range(count)))

    seconds = timed(all_at_once) if device.type == "cuda" else _wall(all_at_once)
    return count * len(train) / seconds


def _wall(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    if not torch.cuda.is_available():
        print("bench/gpu.py: skipped, no CUDA device")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    device = torch.device("cuda")
    loss_fn = LOSSES["ce"]()
    name = torch.cuda.get_device_name(device)
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16 + grad scaler"
    print(f"{name}; autocast {precision}; torch {torch.__version__}")

    warm = random_split(2 * args.batch_size)
    train = random_split(args.batches * args.batch_size)
    for compile_model in (False, True):
        with compiling(compile_model):
            model = build_model(args.model, 10, 3, 32, seed=0)
            fit(model, warm, config(args.batch_size), loss_fn, device=device)  # warm-up/compile
            seconds = timed(
                lambda m=model: fit(m, train, config(args.batch_size), loss_fn, device=device)
            )
        label = "compiled" if compile_model else "eager"
        print(
            f"reference {args.model} ({label}, batch {args.batch_size}): "
            f"{len(train) / seconds:9.0f} images/s"
        )

    configs = [config(args.batch_size, seed) for seed in range(args.members)]
    members = [build_model("small_cnn", 10, 3, 32, seed=seed) for seed in range(args.members)]
    fit(members[0], warm, configs[0], loss_fn, device=device)
    fit_population(members[:2], warm, configs[:2], loss_fn, device=device)
    one_at_a_time = timed(
        lambda: [
            fit(model, train, member, loss_fn, device=device)
            for model, member in zip(members, configs, strict=True)
        ]
    )
    together = timed(lambda: fit_population(members, train, configs, loss_fn, device=device))
    images = args.members * len(train)
    print(
        f"population of {args.members} small_cnn (batch {args.batch_size}): one at a time "
        f"{images / one_at_a_time:9.0f} images/s, vectorised {images / together:9.0f} images/s "
        f"({one_at_a_time / together:.2f}x)"
    )

    trainings_at_once(args.model, 2, warm, args.batch_size, device)  # warm-up
    for count in (1, 2, 4):
        rate = trainings_at_once(args.model, count, train, args.batch_size, device)
        print(
            f"{count} {args.model} training(s) at once, in threads (batch {args.batch_size}): "
            f"{rate:9.0f} images/s in all"
        )


if __name__ == "__main__":
    sys.exit(main())
