"""Model registry: a name used in params.yaml -> a builder.

Every builder takes `num_classes` and `in_channels` and returns a fresh `nn.Module` whose forward
maps a float batch [N, C, H, W] to logits [N, num_classes]. A name `LIBRARY:ARCHITECTURE`
(`torchvision:resnet50`, `timm:convnext_tiny`) is another library's architecture
(`LIBRARY_MODELS`): the model sources of state dicts (compalign.model_sources) load weights into
them, and a pipeline checkpoint of such a reference is rebuilt from them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn

from compalign.errors import UserError
from compalign.preprocess import InputAdapter

# Weight initialisation draws from torch's global generator. Tasks may build models from several
# threads at once, so seeding and building happen under one lock; every other random draw in the
# project uses an explicit torch.Generator.
_INIT_LOCK = threading.Lock()


def small_cnn(num_classes: int, in_channels: int) -> nn.Module:
    """Three 3x3 conv layers with batch norm, global average pooling, one linear layer.

    Sized for the 8x8 digits (about 94k weights): large enough to reach ~98% on them, small
    enough that high sparsity visibly changes its predictions.
    """

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(in_channels, 32),
        *block(32, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    )


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv projection where the shape changes (He et al. 2016, option B).

    Option B instead of the zero-padding shortcut keeps every layer a module, which structured
    pruning's dependency graph (torch-pruning) can follow.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 (He et al. 2016, section 4.2): three stages of 16/32/64 channels."""

    def __init__(self, depth: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        layers: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for index in range(blocks_per_stage):
                layers.append(BasicBlock(in_planes, planes, stride if index == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


def resnet20(num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR ResNet-20 (0.27M weights)."""
    return CifarResNet(20, num_classes, in_channels)


def resnet56(num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR ResNet-56 (0.85M weights), the architecture of Meyer & Wong's CIFAR-10 runs."""
    return CifarResNet(56, num_classes, in_channels)


def resnet18(num_classes: int, in_channels: int) -> nn.Module:
    """torchvision ResNet-18 with a small-image stem: 3x3 stride-1 first conv and no max-pool."""
    import torchvision  # here, not at import: seconds that a cached run does not need

    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _vgg_bn(builder: Callable[..., nn.Module], num_classes: int, in_channels: int) -> nn.Module:
    """torchvision VGG with batch norm, CIFAR-style head: global pool then one linear layer.

    The head has no dropout: it would draw from the global generator during training.
    """
    model = builder(num_classes=num_classes)
    if in_channels != 3:
        model.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Linear(512, num_classes)
    return model


def vgg11_bn(num_classes: int, in_channels: int) -> nn.Module:
    """VGG-11 with batch norm (Simonyan & Zisserman 2015)."""
    import torchvision

    return _vgg_bn(torchvision.models.vgg11_bn, num_classes, in_channels)


def vgg16_bn(num_classes: int, in_channels: int) -> nn.Module:
    """VGG-16 with batch norm (Simonyan & Zisserman 2015)."""
    import torchvision

    return _vgg_bn(torchvision.models.vgg16_bn, num_classes, in_channels)


MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    "small_cnn": small_cnn,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet18": resnet18,
    "vgg11_bn": vgg11_bn,
    "vgg16_bn": vgg16_bn,
}


def torchvision_architecture(name: str, num_classes: int | None) -> nn.Module:
    """A torchvision architecture with random weights (its default class count if None)."""
    import torchvision

    arguments = {} if num_classes is None else {"num_classes": num_classes}
    if name in ("inception_v3", "googlenet"):  # evaluated without their auxiliary heads
        arguments.update(aux_logits=False, init_weights=False)
    return torchvision.models.get_model(name, weights=None, **arguments)


def timm_architecture(name: str, num_classes: int) -> nn.Module:
    """A timm architecture with random weights."""
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes)


# Other libraries' architectures, by the prefix of a model name (`torchvision:resnet50`)
LIBRARY_MODELS: dict[str, Callable[..., nn.Module]] = {
    "torchvision": torchvision_architecture,
    "timm": timm_architecture,
}

# The smallest square input each model accepts (VGG halves the image five times).
MIN_IMAGE_SIZE = {"vgg11_bn": 32, "vgg16_bn": 32}


def build_model(
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    seed: int = 0,
    adapter: dict | None = None,
) -> nn.Module:
    """Build model `name` with weights initialised from `seed` (same seed, same weights).

    `name` may also be an architecture of a model source, `torchvision:resnet50` or
    `timm:convnext_tiny` (a reference brought from a file, reference.source=file); `adapter`
    then holds its preprocessing, built as its first layer (compalign.preprocess.InputAdapter)."""
    if ":" in name:
        return _external_model(name, num_classes, seed, adapter)
    if name not in MODELS:
        raise UserError(f"reference.model: unknown model {name!r}; choose one of {sorted(MODELS)}")
    minimum = MIN_IMAGE_SIZE.get(name, 1)
    if image_size < minimum:
        raise UserError(
            f"reference.model: {name} needs images of at least {minimum}x{minimum}, the data has "
            f"{image_size}x{image_size}; set data.image_size={minimum} or pick another model"
        )
    with _INIT_LOCK:
        torch.manual_seed(seed)
        return MODELS[name](num_classes, in_channels)


def _external_model(name: str, num_classes: int, seed: int, adapter: dict | None) -> nn.Module:
    """Another library's architecture (LIBRARY_MODELS), its input adapter first."""
    library, _, architecture = name.partition(":")
    build = LIBRARY_MODELS.get(library)
    if build is None:
        known = ", ".join(f"{key}:" for key in LIBRARY_MODELS)
        raise UserError(f"{name}: not an architecture compalign can build ({known})")
    with _INIT_LOCK:
        torch.manual_seed(seed)
        model = build(architecture, num_classes)
    return model if adapter is None else nn.Sequential(InputAdapter(adapter), model)
