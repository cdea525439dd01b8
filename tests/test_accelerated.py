"""compalign.accelerated: CUDA-only accelerations, none of which touches CPU training."""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_resume import TRAIN, assert_same_weights, small_cnn

from compalign.accelerated import accelerated, simulates_precision
from compalign.compressors import COMPRESSORS, half, quantize_dynamic, quantize_static
from compalign.compressors.gradual_magnitude import prune_layers_to
from compalign.losses import LOSSES
from compalign.models import build_model
from compalign.train import TrainConfig, augment_batch, fit, total_steps


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cpu_training_is_the_plain_float32_loop():
    """GPU accelerations (compalign.accelerated) change nothing on the CPU: fit equals the loop
    written out without them (float32, no autocast, no grad scaler, no channels-last)."""
    config = TrainConfig(epochs=2, batch_size=32, augment=True, seed=4)
    trained = fit(small_cnn(), TRAIN, config, LOSSES["ce"]())

    model = small_cnn().train()
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=total_steps(len(TRAIN), config)
    )
    for _ in range(config.epochs):
        order = torch.randperm(len(TRAIN), generator=generator)
        for start in range(0, len(TRAIN), config.batch_size):
            index = order[start : start + config.batch_size]
            images = augment_batch(TRAIN.normalise(TRAIN.images[index]), generator)
            loss = torch.nn.functional.cross_entropy(model(images), TRAIN.labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    assert_same_weights(trained, model)
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in trained.parameters())


def test_on_the_cpu_every_acceleration_is_the_identity():
    speed = accelerated("cpu")
    assert speed.dtype is None and speed.scaler is None and speed.state_dict() == {}
    assert isinstance(speed.autocast(), contextlib.nullcontext)
    model = small_cnn()
    assert speed.compiled(model) is model
    images = torch.randn(2, 1, 8, 8)
    assert speed.images(images) is images


@pytest.mark.parametrize("method", ["quantize_static", "quantize_dynamic", "half"])
def test_quantization_aware_training_is_never_autocast(method):
    """Fake quantization and half rounding simulate a precision: autocast would change it."""
    example = TRAIN.normalise(TRAIN.images[:1])
    quantizer = {"quantize_static": quantize_static, "quantize_dynamic": quantize_dynamic}
    options = COMPRESSORS[method].settings({"dtype": "float16"} if method == "half" else {})
    prepare_qat = quantizer.get(method, half).prepare_qat
    prepared = prepare_qat(build_model("small_cnn", 10, 1, 8).eval(), example, options)
    assert simulates_precision(prepared)
    pruned = small_cnn()
    prune_layers_to(pruned, 0.5)
    assert not simulates_precision(pruned) and not simulates_precision(small_cnn())
