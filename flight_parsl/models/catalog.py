"""What the zoo offers, answered without torch: reference sizes, and which models can train.

This module owns :func:`reference_spec` (the published input shape and classes
of each architecture, for no-training scaling runs whose model sizes must match
the published ones) and :func:`check_trainable`. The names themselves and the
reference specs live in :mod:`flight_parsl.core.model_spec`; the builders live in
:mod:`flight_parsl.models.registry`.
"""

from __future__ import annotations

from flight_parsl.core.errors import ConfigError, unknown_name
from flight_parsl.core.model_spec import REFERENCE_SPECS, ModelSpec, model_names


def reference_spec(name: str) -> ModelSpec:
    """Return the input shape and classes of the published reference architecture.

    Args:
        name: A model name from :func:`~flight_parsl.core.model_spec.model_names`.

    Raises:
        ConfigError: ``name`` is not a registered model.
    """
    try:
        return REFERENCE_SPECS[name]
    except KeyError:
        raise unknown_name("model", name, model_names()) from None


def check_trainable(spec: ModelSpec) -> None:
    """Raise ConfigError when the model cannot be trained (``tiny`` cannot classify).

    Raises:
        ConfigError: unknown name, or ``tiny``, a debug-only model for ``--train none``.
    """
    if spec.name not in REFERENCE_SPECS:
        raise unknown_name("model", spec.name, model_names())
    if spec.name == "tiny":
        raise ConfigError(
            "model 'tiny' is a debug-only model for '--train none' (no-training scaling runs); "
            "it cannot classify, pick a trainable model such as 'smallnet' or 'resnet18'"
        )
