"""The model zoo: every network flight_parsl can train or broadcast, by name.

This module owns the model registry (``model_names``), the reference input
shapes of each architecture (``reference_spec``, used by no-training scaling
runs whose model sizes must match the published ones), model construction
(``build_model``) with input-size validation, and ``count_parameters``.
``ModelSpec`` itself lives in the torch-free ``flight_parsl.core.model_spec`` and is
re-exported here.

All models are plain ``torch.nn`` modules defined at module level (so they
pickle for remote workers); torchvision is not used. SqueezeNet 1.0 and the
ResNets reproduce torchvision's definitions, parameter counts, initialisation
and state-dict key names, with a configurable number of input channels.
Inputs are ``(B, C, H, W)`` float tensors; outputs are logits
``(B, num_classes)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch
from torch import nn

from flight_parsl.core.errors import ConfigError, unknown_name
from flight_parsl.core.model_spec import REFERENCE_SPECS, ModelSpec, model_names  # torch-free; re-exported

__all__ = [
    "ModelSpec",
    "build_model",
    "check_trainable",
    "count_parameters",
    "model_names",
    "reference_spec",
    "seeded_model",
]


# ---------------------------------------------------------------------------
# Small models
# ---------------------------------------------------------------------------


class TinyNet(nn.Module):
    """Flight's TinyNet: a single ``Linear(1, 1)``, for no-training scaling runs.

    It reads only the first input feature and returns ``(B, 1)``; it cannot
    classify and exists only to be broadcast.
    """

    def __init__(self) -> None:
        """Create the 2-parameter linear layer."""
        super().__init__()
        self.fc = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the linear layer to the first feature of each sample."""
        return self.fc(x.flatten(1)[:, :1])


class SmallNet(nn.Module):
    """The CNN of PyTorch's 60-minute blitz (62,006 parameters on 3x32x32, 10 classes)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        """Build the layers; the flatten width follows ``image_size``."""
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class FedProxCNN(nn.Module):
    """The two-conv CNN of the FedAvg/FedProx papers (1,663,370 parameters on MNIST)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        """Build the layers; the flatten width follows ``image_size``."""
        super().__init__()
        side = image_size // 2 // 2
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * side * side, 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(x)))


class LogReg(nn.Module):
    """Multinomial logistic regression on the flattened image (7,850 parameters on MNIST)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        """Build the single linear layer."""
        super().__init__()
        self.fc = nn.Linear(in_channels * image_size * image_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.fc(torch.flatten(x, 1))


class MLP(nn.Module):
    """McMahan et al.'s 2NN: two hidden layers of 200 (199,210 parameters on MNIST)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        """Build the three linear layers."""
        super().__init__()
        self.fc1 = nn.Linear(in_channels * image_size * image_size, 200)
        self.fc2 = nn.Linear(200, 200)
        self.fc3 = nn.Linear(200, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5 in its modern form (ReLU, max pooling; 61,706 parameters on MNIST).

    The first conv is padded so a 28x28 input behaves like LeCun's 32x32 one.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        """Build the layers; the flatten width follows ``image_size``."""
        super().__init__()
        side = (image_size // 2 - 4) // 2
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class ConvBlock(nn.Sequential):
    """Conv2d 3x3 (padding 1) + BatchNorm2d + ReLU, keeping the spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        """Build the three layers."""
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class CNNBlocks(nn.Module):
    """The model-size-sweep CNN: a 64-channel stem plus ``extra_blocks`` equal blocks.

    Each extra block adds exactly 37,056 parameters, so the size grows linearly.
    """

    def __init__(self, in_channels: int, num_classes: int, extra_blocks: int) -> None:
        """Build the stem, the extra blocks and the linear head."""
        super().__init__()
        self.stem = ConvBlock(in_channels, 64)
        self.blocks = nn.Sequential(*(ConvBlock(64, 64) for _ in range(extra_blocks)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


# ---------------------------------------------------------------------------
# SqueezeNet 1.0 (as torchvision.models.squeezenet1_0)
# ---------------------------------------------------------------------------


class Fire(nn.Module):
    """SqueezeNet's Fire module: a 1x1 squeeze, then parallel 1x1 and 3x3 expands."""

    def __init__(
        self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int
    ) -> None:
        """Build the squeeze and the two expand convolutions."""
        super().__init__()
        self.inplanes = inplanes
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Squeeze, expand both ways and concatenate along channels."""
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [
                self.expand1x1_activation(self.expand1x1(x)),
                self.expand3x3_activation(self.expand3x3(x)),
            ],
            1,
        )


class SqueezeNet(nn.Module):
    """SqueezeNet 1.0 exactly as torchvision defines it, with configurable input channels."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, dropout: float = 0.5) -> None:
        """Build the features and classifier and apply torchvision's initialisation."""
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=7, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(96, 16, 64, 64),
            Fire(128, 16, 64, 64),
            Fire(128, 32, 128, 128),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(256, 32, 128, 128),
            Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(512, 64, 256, 256),
        )
        final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            final_conv,
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 1)),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        x = self.features(x)
        x = self.classifier(x)
        return torch.flatten(x, 1)


# ---------------------------------------------------------------------------
# ResNet v1.5 (as torchvision.models.resnet*)
# ---------------------------------------------------------------------------


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """ResNet's two-3x3-conv residual block (ResNet-18/34)."""

    expansion: int = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        """Build the block; ``downsample`` adapts the identity when shapes change."""
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the residual block."""
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """ResNet's 1x1-3x3-1x1 bottleneck block, stride on the 3x3 conv (v1.5)."""

    expansion: int = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        """Build the block; ``downsample`` adapts the identity when shapes change."""
        super().__init__()
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the residual block."""
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ResNet with configurable input channels and torchvision's init."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        in_channels: int = 3,
        num_classes: int = 1000,
    ) -> None:
        """Build the stem, the four stages and the head.

        Args:
            block: ``BasicBlock`` or ``Bottleneck``.
            layers: Number of blocks in each of the four stages.
            in_channels: Channels of the input images.
            num_classes: Number of output logits.
        """
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
    ) -> nn.Sequential:
        """Build one stage of ``blocks`` blocks, the first one striding."""
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------
# Input-size validation
# ---------------------------------------------------------------------------

# A spatial op as (kernel, stride, padding, ceil_mode); only ops that change H/W.
_Op = tuple[int, int, int, bool]

_SPATIAL_OPS: dict[str, tuple[_Op, ...]] = {
    "tiny": (),
    "logreg": (),
    "mlp": (),
    "cnn_blocks": (),
    "smallnet": ((5, 1, 0, False), (2, 2, 0, False), (5, 1, 0, False), (2, 2, 0, False)),
    "fedprox_cnn": ((5, 1, 2, False), (2, 2, 0, False), (5, 1, 2, False), (2, 2, 0, False)),
    "lenet5": ((5, 1, 2, False), (2, 2, 0, False), (5, 1, 0, False), (2, 2, 0, False)),
    "squeezenet1_0": ((7, 2, 0, False), (3, 2, 0, True), (3, 2, 0, True), (3, 2, 0, True)),
    # Stem conv and max pool, then the stride-2 3x3 conv opening layers 2-4.
    "resnet18": ((7, 2, 3, False), (3, 2, 1, False)) + ((3, 2, 1, False),) * 3,
}
for _name in ("resnet50", "resnet152"):
    _SPATIAL_OPS[_name] = _SPATIAL_OPS["resnet18"]


def _output_side(side: int, ops: Sequence[_Op]) -> int:
    """Trace one spatial side through ``ops`` with torch's output-size rules.

    Returns the final side, or 0 as soon as any op would produce an empty map.
    """
    for kernel, stride, padding, ceil_mode in ops:
        numer = side + 2 * padding - kernel + (stride - 1 if ceil_mode else 0)
        out = numer // stride + 1
        if ceil_mode and (out - 1) * stride >= side + padding:
            out -= 1  # torch drops a last window that starts in the right padding
        if out < 1:
            return 0
        side = out
    return side


def _min_image_size(name: str) -> int:
    """Return the smallest square input side the architecture accepts."""
    ops = _SPATIAL_OPS[name]
    side = 1
    while _output_side(side, ops) < 1:
        side += 1
    return side


def _check_spec(spec: ModelSpec) -> None:
    """Raise ConfigError for a bad field or an input too small for the architecture."""
    if spec.name not in _BUILDERS:
        raise unknown_name("model", spec.name, model_names())
    for field in ("in_channels", "image_size", "num_classes"):
        value = getattr(spec, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"model {spec.name!r}: {field} must be a positive integer, got {value!r}"
            )
    extra = spec.extra_blocks
    if isinstance(extra, bool) or not isinstance(extra, int) or extra < 0:
        raise ConfigError(
            f"model {spec.name!r}: extra_blocks must be a non-negative integer, got {extra!r}"
        )
    minimum = _min_image_size(spec.name)
    if spec.image_size < minimum:
        size = spec.image_size
        raise ConfigError(
            f"model {spec.name!r} cannot take {spec.in_channels}x{size}x{size} (CxHxW) inputs: "
            f"it needs images of at least the minimum size {minimum}x{minimum}"
        )


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


def _build_tiny(spec: ModelSpec) -> nn.Module:
    return TinyNet()


def _build_smallnet(spec: ModelSpec) -> nn.Module:
    return SmallNet(spec.in_channels, spec.image_size, spec.num_classes)


def _build_fedprox_cnn(spec: ModelSpec) -> nn.Module:
    return FedProxCNN(spec.in_channels, spec.image_size, spec.num_classes)


def _build_logreg(spec: ModelSpec) -> nn.Module:
    return LogReg(spec.in_channels, spec.image_size, spec.num_classes)


def _build_mlp(spec: ModelSpec) -> nn.Module:
    return MLP(spec.in_channels, spec.image_size, spec.num_classes)


def _build_lenet5(spec: ModelSpec) -> nn.Module:
    return LeNet5(spec.in_channels, spec.image_size, spec.num_classes)


def _build_cnn_blocks(spec: ModelSpec) -> nn.Module:
    return CNNBlocks(spec.in_channels, spec.num_classes, spec.extra_blocks)


def _build_squeezenet1_0(spec: ModelSpec) -> nn.Module:
    return SqueezeNet(spec.in_channels, spec.num_classes)


def _build_resnet18(spec: ModelSpec) -> nn.Module:
    return ResNet(BasicBlock, [2, 2, 2, 2], spec.in_channels, spec.num_classes)


def _build_resnet50(spec: ModelSpec) -> nn.Module:
    return ResNet(Bottleneck, [3, 4, 6, 3], spec.in_channels, spec.num_classes)


def _build_resnet152(spec: ModelSpec) -> nn.Module:
    return ResNet(Bottleneck, [3, 8, 36, 3], spec.in_channels, spec.num_classes)


_BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "tiny": _build_tiny,
    "smallnet": _build_smallnet,
    "fedprox_cnn": _build_fedprox_cnn,
    "logreg": _build_logreg,
    "mlp": _build_mlp,
    "lenet5": _build_lenet5,
    "cnn_blocks": _build_cnn_blocks,
    "squeezenet1_0": _build_squeezenet1_0,
    "resnet18": _build_resnet18,
    "resnet50": _build_resnet50,
    "resnet152": _build_resnet152,
}

if set(_BUILDERS) != set(REFERENCE_SPECS):  # one list of names, kept torch-free in core.model_spec
    raise RuntimeError("model builders and reference specs disagree")


def reference_spec(name: str) -> ModelSpec:
    """Return the input shape and classes of the published reference architecture.

    Raises:
        ConfigError: ``name`` is not a registered model.
    """
    try:
        return REFERENCE_SPECS[name]
    except KeyError:
        raise unknown_name("model", name, model_names()) from None


# Building draws from torch's global generator: one build at a time per process, so that a
# seeded build is not interleaved with another thread's (thread-backend slots build theirs).
_BUILD_LOCK = threading.RLock()


def build_model(spec: ModelSpec) -> nn.Module:
    """Build a freshly initialised model; deterministic under ``torch.manual_seed``.

    Raises:
        ConfigError: unknown name, a non-positive field, or an input smaller than
            the architecture's minimum size.
    """
    _check_spec(spec)
    with _BUILD_LOCK:
        return _BUILDERS[spec.name](spec)


def seeded_model(spec: ModelSpec, seed: int) -> nn.Module:
    """Build ``spec`` from ``seed``, the same weights whatever other threads build meanwhile."""
    with _BUILD_LOCK:
        torch.manual_seed(seed)
        return build_model(spec)


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters (sum of ``numel`` over parameters)."""
    return sum(p.numel() for p in model.parameters())


def check_trainable(spec: ModelSpec) -> None:
    """Raise ConfigError when the model cannot be trained (``tiny`` cannot classify).

    Raises:
        ConfigError: unknown name, or ``tiny``, a debug-only model for ``--train none``.
    """
    if spec.name not in _BUILDERS:
        raise unknown_name("model", spec.name, model_names())
    if spec.name == "tiny":
        raise ConfigError(
            "model 'tiny' is a debug-only model for '--train none' (no-training scaling runs); "
            "it cannot classify, pick a trainable model such as 'smallnet' or 'resnet18'"
        )
