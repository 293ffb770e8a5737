"""The small convolutional models: ``smallnet``, ``lenet5``, ``fedprox_cnn``, ``cnn_blocks``.

This module owns the plain CNNs of the zoo: the PyTorch blitz CNN, LeNet-5, the
two-conv CNN of the FedAvg/FedProx papers, and the model-size-sweep CNN whose
parameter count grows linearly with ``extra_blocks``. Each ``build_*`` function
builds one from a :class:`~flight_parsl.core.model_spec.ModelSpec`.
"""

from __future__ import annotations

import torch
from torch import nn

from flight_parsl.core.model_spec import ModelSpec


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


def build_smallnet(spec: ModelSpec) -> nn.Module:
    """Build ``smallnet`` for ``spec``'s input shape and classes."""
    return SmallNet(spec.in_channels, spec.image_size, spec.num_classes)


def build_fedprox_cnn(spec: ModelSpec) -> nn.Module:
    """Build ``fedprox_cnn`` for ``spec``'s input shape and classes."""
    return FedProxCNN(spec.in_channels, spec.image_size, spec.num_classes)


def build_lenet5(spec: ModelSpec) -> nn.Module:
    """Build ``lenet5`` for ``spec``'s input shape and classes."""
    return LeNet5(spec.in_channels, spec.image_size, spec.num_classes)


def build_cnn_blocks(spec: ModelSpec) -> nn.Module:
    """Build ``cnn_blocks`` with ``spec.extra_blocks`` blocks after the stem."""
    return CNNBlocks(spec.in_channels, spec.num_classes, spec.extra_blocks)
