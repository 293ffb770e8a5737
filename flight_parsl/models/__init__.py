"""The model zoo: every network flight_parsl can train or broadcast, by name.

All models are plain ``torch.nn`` modules defined at module level (so they
pickle for remote workers); torchvision is not used. SqueezeNet 1.0 and the
ResNets reproduce torchvision's definitions, parameter counts, initialisation
and state-dict key names, with a configurable number of input channels.
Inputs are ``(B, C, H, W)`` float tensors; outputs are logits
``(B, num_classes)``.

This package's root only re-exports; each submodule owns one concern:

- ``catalog``: :func:`reference_spec` and :func:`check_trainable` (torch-free).
- ``validation``: the smallest input of each architecture and spec checks (torch-free).
- ``registry``: name to builder, :func:`build_model`, :func:`seeded_model`,
  :func:`count_parameters`.
- ``small`` (``tiny``, ``logreg``, ``mlp``), ``cnn`` (``smallnet``, ``lenet5``,
  ``fedprox_cnn``, ``cnn_blocks``), ``squeezenet`` (``squeezenet1_0``) and
  ``resnet`` (``resnet18``, ``resnet50``, ``resnet152``): the networks.

``ModelSpec``, ``REFERENCE_SPECS`` and ``model_names`` live in the torch-free
:mod:`flight_parsl.core.model_spec` and are re-exported here. Importing this
package does not import torch: the names that need it (the builders and the
network classes) load their submodule on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flight_parsl.core.model_spec import REFERENCE_SPECS, ModelSpec, model_names
from flight_parsl.models.catalog import check_trainable, reference_spec

if TYPE_CHECKING:
    from flight_parsl.models.cnn import CNNBlocks, ConvBlock, FedProxCNN, LeNet5, SmallNet
    from flight_parsl.models.registry import build_model, count_parameters, seeded_model
    from flight_parsl.models.resnet import BasicBlock, Bottleneck, ResNet, conv1x1, conv3x3
    from flight_parsl.models.small import MLP, LogReg, TinyNet
    from flight_parsl.models.squeezenet import Fire, SqueezeNet

__all__ = [
    "REFERENCE_SPECS",
    "BasicBlock",
    "Bottleneck",
    "CNNBlocks",
    "ConvBlock",
    "FedProxCNN",
    "Fire",
    "LeNet5",
    "LogReg",
    "MLP",
    "ModelSpec",
    "ResNet",
    "SmallNet",
    "SqueezeNet",
    "TinyNet",
    "build_model",
    "check_trainable",
    "conv1x1",
    "conv3x3",
    "count_parameters",
    "model_names",
    "reference_spec",
    "seeded_model",
]

# The names that need torch, and the submodule that defines each.
_LAZY: dict[str, str] = {
    "build_model": "registry",
    "count_parameters": "registry",
    "seeded_model": "registry",
    "TinyNet": "small",
    "LogReg": "small",
    "MLP": "small",
    "SmallNet": "cnn",
    "FedProxCNN": "cnn",
    "LeNet5": "cnn",
    "ConvBlock": "cnn",
    "CNNBlocks": "cnn",
    "Fire": "squeezenet",
    "SqueezeNet": "squeezenet",
    "conv3x3": "resnet",
    "conv1x1": "resnet",
    "BasicBlock": "resnet",
    "Bottleneck": "resnet",
    "ResNet": "resnet",
}


def __getattr__(name: str) -> Any:
    """Load a torch-side name from its submodule on first access (PEP 562).

    Raises:
        AttributeError: ``name`` is not a name of this package.
    """
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the loaded and the not yet loaded names."""
    return sorted({*globals(), *_LAZY})
