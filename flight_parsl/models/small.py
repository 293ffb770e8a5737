"""The fully connected models: ``tiny``, ``logreg`` and ``mlp``.

This module owns the networks that flatten their input and use only linear
layers: Flight's 2-parameter TinyNet (for no-training scaling runs), multinomial
logistic regression, and McMahan et al.'s 2NN. Each ``build_*`` function builds
one from a :class:`~flight_parsl.core.model_spec.ModelSpec`.
"""

from __future__ import annotations

import torch
from torch import nn

from flight_parsl.core.model_spec import ModelSpec


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


def build_tiny(spec: ModelSpec) -> nn.Module:
    """Build ``tiny``; its size ignores ``spec``."""
    return TinyNet()


def build_logreg(spec: ModelSpec) -> nn.Module:
    """Build ``logreg`` for ``spec``'s input shape and classes."""
    return LogReg(spec.in_channels, spec.image_size, spec.num_classes)


def build_mlp(spec: ModelSpec) -> nn.Module:
    """Build ``mlp`` for ``spec``'s input shape and classes."""
    return MLP(spec.in_channels, spec.image_size, spec.num_classes)
