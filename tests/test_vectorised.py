"""fit_population: K members trained as one batched model, against compalign.train.fit."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from compalign.data import Split
from compalign.losses import LOSSES
from compalign.models import build_model
from compalign.train import TrainConfig, fit, make_optimizer, predict_logits
from compalign.vectorised import fit_population

K = 3
LR = {"sgd": 0.05, "adamw": 2e-3}


def make_split(count: int, seed: int) -> Split:
    """Random uint8 8x8 images: a fixed per-class template plus noise (learnable, not trivial)."""
    templates = torch.randint(0, 256, (10, 1, 8, 8), generator=torch.Generator().manual_seed(99))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=generator)
    noise = torch.randint(-90, 91, (count, 1, 8, 8), generator=generator)
    images = (templates[labels] + noise).clamp(0, 255).to(torch.uint8)
    return Split(
        images=images,
        labels=labels,
        example_ids=[f"x-{index}" for index in range(count)],
        mean=torch.tensor([0.5]).view(1, 1, 1, 1),
        std=torch.tensor([0.3]).view(1, 1, 1, 1),
        groups=pd.DataFrame(index=range(count)),
    )


TRAIN, TEST = make_split(240, seed=1), make_split(128, seed=2)


def members(seeds: list[int]) -> list[nn.Module]:
    """small_cnn models for the digits-like data, weights from `seeds`."""
    return [build_model("small_cnn", 10, 1, 8, seed=seed) for seed in seeds]


def configs(optimizer: str = "sgd", seeds=range(K), **overrides) -> list[TrainConfig]:
    """One config per member; only the seed differs."""
    settings = {"epochs": 2, "batch_size": 32, "optimizer": optimizer, "lr": LR[optimizer]}
    return [TrainConfig(**{**settings, **overrides, "seed": seed}) for seed in seeds]


def sequential(models, train, train_configs, loss_fn, references=None) -> list[nn.Module]:
    """Copies of `models`, each trained alone by compalign.train.fit."""
    out = []
    for k, (model, config) in enumerate(zip(models, train_configs, strict=True)):
        reference = None if references is None else references[k]
        out.append(fit(copy.deepcopy(model), train, config, loss_fn, reference=reference))
    return out


def max_difference(a: nn.Module, b: nn.Module) -> float:
    """Largest absolute difference over parameters and floating-point buffers."""
    state_a, state_b = a.state_dict(), b.state_dict()
    return max((state_a[k].double() - state_b[k].double()).abs().max().item() for k in state_a)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_stacked_optimizer_equals_separate(optimizer):
    """One optimizer over stacked tensors updates each slice exactly as K separate ones do."""
    # weight decay large enough to matter next to the gradients
    config = TrainConfig(1, 1, optimizer=optimizer, lr=LR[optimizer], weight_decay=0.05)
    generator = torch.Generator().manual_seed(0)
    shapes = [(32, 1, 3, 3), (10,), (7, 13)]
    separate = [
        nn.ParameterList(
            [nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
        )
        for _ in range(K)
    ]
    stacked = nn.ParameterList(
        [nn.Parameter(torch.stack([m[i].detach() for m in separate])) for i in range(len(shapes))]
    )
    optimizers = [make_optimizer(m, config) for m in separate]
    stacked_optimizer = make_optimizer(stacked, config)
    for _ in range(5):
        # gradients over many magnitudes, down to AdamW's eps, where rounding would show
        grads = [
            [torch.randn(s, generator=generator) * 10.0 ** -torch.randint(0, 10, s) for s in shapes]
            for _ in range(K)
        ]
        for k in range(K):
            for parameter, grad in zip(separate[k], grads[k], strict=True):
                parameter.grad = grad.clone()
            optimizers[k].step()
        for i, parameter in enumerate(stacked):
            parameter.grad = torch.stack([grads[k][i] for k in range(K)])
        stacked_optimizer.step()
    for i in range(len(shapes)):
        for k in range(K):
            assert torch.equal(stacked[i][k], separate[k][i])


def record_gradients(monkeypatch) -> list[list[torch.Tensor]]:
    """Patch SGD/AdamW.step to record every parameter's gradient just before each step."""
    recorded: list[list[torch.Tensor]] = []
    for cls in (torch.optim.SGD, torch.optim.AdamW):
        original = cls.step

        def step(self, closure=None, _original=original):
            recorded.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
            return _original(self, closure)

        monkeypatch.setattr(cls, "step", step)
    return recorded


ONE_STEP = {"epochs": 1, "batch_size": len(TRAIN)}  # one batch of everything: one step


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_one_step_matches_fit(optimizer, monkeypatch):
    """One step from the same start: gradients, BN buffers and (SGD) parameters are fit's."""
    recorded = record_gradients(monkeypatch)
    start = members([0, 1, 2])
    train_configs = configs(optimizer, **ONE_STEP)
    alone = sequential(start, TRAIN, train_configs, LOSSES["ce"]())
    alone_grads = recorded[:]
    recorded.clear()
    together = fit_population(copy.deepcopy(start), TRAIN, train_configs, LOSSES["ce"]())
    (stacked_grads,) = recorded
    for k in range(K):
        for fit_grad, stacked_grad in zip(alone_grads[k], stacked_grads, strict=True):
            torch.testing.assert_close(stacked_grad[k], fit_grad, atol=1e-6, rtol=1e-5)
        for name, buffer in alone[k].named_buffers():
            torch.testing.assert_close(together[k].get_buffer(name), buffer, atol=1e-6, rtol=1e-5)
    if optimizer == "sgd":
        # AdamW's first update is lr * g / (|g| + eps): where |g| ~ eps it magnifies the
        # gradients' rounding, so its parameters are compared through the gradients above
        for k in range(K):
            for name, parameter in alone[k].named_parameters():
                torch.testing.assert_close(
                    together[k].get_parameter(name), parameter, atol=1e-6, rtol=1e-5
                )


def assert_like_sequential(together, alone) -> None:
    """Predictions on the test batch agree on >= 95% of examples; accuracies within 0.05."""
    for batched, single in zip(together, alone, strict=True):
        assert not batched.training
        batched_pred = predict_logits(batched, TEST).argmax(1)
        single_pred = predict_logits(single, TEST).argmax(1)
        assert (batched_pred == single_pred).float().mean() >= 0.95
        batched_acc = (batched_pred == TEST.labels).float().mean()
        single_acc = (single_pred == TEST.labels).float().mean()
        assert abs(batched_acc - single_acc) <= 0.05


@pytest.mark.parametrize(
    "optimizer, loss, augment",
    [("sgd", "ce", False), ("adamw", "ce", False), ("sgd", "kd", True), ("adamw", "kd", True)],
)
def test_training_close_to_sequential(optimizer, loss, augment):
    """Two epochs end close to fit's members: SGD/AdamW, per-member references (kd), augment."""
    start = members([0, 1, 2])
    train_configs = configs(optimizer, augment=augment)
    references = None
    if loss == "kd":
        references = [
            fit(m, TRAIN, c, LOSSES["ce"]())
            for m, c in zip(members([7, 8, 9]), configs("sgd", epochs=1), strict=True)
        ]
    loss_fn = LOSSES[loss]()
    alone = sequential(start, TRAIN, train_configs, loss_fn, references)
    given = copy.deepcopy(start)
    together = fit_population(given, TRAIN, train_configs, loss_fn, references)
    assert all(a is b for a, b in zip(together, given, strict=True))  # trained in place
    print(f"max parameter difference: {max(map(max_difference, together, alone)):.3g}")
    assert_like_sequential(together, alone)


def test_seeds_decide_members():
    """Same start and same seed: identical members; another seed (data order): a different one."""
    together = fit_population(
        members([0, 0, 0]), TRAIN, configs("sgd", seeds=[0, 1, 0]), LOSSES["ce"]()
    )
    assert max_difference(together[0], together[2]) == 0.0
    assert max_difference(together[0], together[1]) > 1e-3


def test_bad_inputs_raise():
    """Different architectures, configs differing beyond the seed, masks, repeats, dropout."""
    ce = LOSSES["ce"]()
    mixed = members([0, 1]) + [build_model("small_cnn", 5, 1, 8)]
    with pytest.raises(ValueError, match="architecture"):
        fit_population(mixed, TRAIN, configs(), ce)
    differing = configs()[:2] + configs(lr=0.1)[2:]
    with pytest.raises(ValueError, match="seed"):
        fit_population(members([0, 1, 2]), TRAIN, differing, ce)
    masked = members([0, 1, 2])
    for model in masked:
        prune.l1_unstructured(model[0], "weight", amount=0.5)
    with pytest.raises(ValueError, match="prune masks"):
        fit_population(masked, TRAIN, configs(), ce)
    with pytest.raises(ValueError, match="configs"):
        fit_population(members([0, 1, 2]), TRAIN, configs()[:2], ce)
    model = members([0])[0]
    with pytest.raises(ValueError, match="twice"):
        fit_population([model, model, model], TRAIN, configs(), ce)
    dropping = [nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10)) for _ in range(K)]
    with pytest.raises(ValueError, match="dropout"):
        fit_population(dropping, TRAIN, configs(), ce)
