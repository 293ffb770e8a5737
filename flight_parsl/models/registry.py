"""The builders: model name to ``torch.nn`` module, and seeded, thread-safe construction.

This module owns the name-to-builder map (:data:`BUILDERS`, one ``build_*``
function per zoo model, each defined next to its network), :func:`build_model`,
:func:`seeded_model` and :func:`count_parameters`. Importing it imports torch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn

from flight_parsl.core.model_spec import REFERENCE_SPECS, ModelSpec
from flight_parsl.models.cnn import build_cnn_blocks, build_fedprox_cnn, build_lenet5, build_smallnet
from flight_parsl.models.resnet import build_resnet18, build_resnet50, build_resnet152
from flight_parsl.models.small import build_logreg, build_mlp, build_tiny
from flight_parsl.models.squeezenet import build_squeezenet1_0
from flight_parsl.models.validation import check_spec

#: One builder per model name; each builds a freshly initialised model from a spec.
BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "tiny": build_tiny,
    "smallnet": build_smallnet,
    "fedprox_cnn": build_fedprox_cnn,
    "logreg": build_logreg,
    "mlp": build_mlp,
    "lenet5": build_lenet5,
    "cnn_blocks": build_cnn_blocks,
    "squeezenet1_0": build_squeezenet1_0,
    "resnet18": build_resnet18,
    "resnet50": build_resnet50,
    "resnet152": build_resnet152,
}

if set(BUILDERS) != set(REFERENCE_SPECS):  # one list of names, kept torch-free in core.model_spec
    raise RuntimeError("model builders and reference specs disagree")

# Building draws from torch's global generator: one build at a time per process, so that a
# seeded build is not interleaved with another thread's (thread-backend slots build theirs).
_BUILD_LOCK = threading.RLock()


def build_model(spec: ModelSpec) -> nn.Module:
    """Build a freshly initialised model; deterministic under ``torch.manual_seed``.

    Raises:
        ConfigError: unknown name, a non-positive field, or an input smaller than
            the architecture's minimum size.
    """
    check_spec(spec)
    with _BUILD_LOCK:
        return BUILDERS[spec.name](spec)


def seeded_model(spec: ModelSpec, seed: int) -> nn.Module:
    """Build ``spec`` from ``seed``, the same weights whatever other threads build meanwhile.

    Raises:
        ConfigError: as :func:`build_model`.
    """
    with _BUILD_LOCK:
        torch.manual_seed(seed)
        return build_model(spec)


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters (sum of ``numel`` over parameters)."""
    return sum(p.numel() for p in model.parameters())
