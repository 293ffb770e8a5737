"""Spec validation before a build: positive fields, and inputs large enough for each architecture.

This module owns the spatial trace of every architecture (its H/W-changing ops),
the smallest square input each one accepts, and :func:`check_spec`, which
:func:`~flight_parsl.models.build_model` calls so that a bad spec fails with a
``ConfigError`` naming the problem instead of a torch shape error. It is
torch-free, so configs can be checked where torch is not installed.
"""

from __future__ import annotations

from collections.abc import Sequence

from flight_parsl.core.errors import ConfigError, unknown_name
from flight_parsl.core.model_spec import REFERENCE_SPECS, ModelSpec, model_names

#: A spatial op as (kernel, stride, padding, ceil_mode); only ops that change H/W.
Op = tuple[int, int, int, bool]

#: Every architecture's H/W-changing ops, in order.
SPATIAL_OPS: dict[str, tuple[Op, ...]] = {
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
    SPATIAL_OPS[_name] = SPATIAL_OPS["resnet18"]

if set(SPATIAL_OPS) != set(REFERENCE_SPECS):  # one list of names, in core.model_spec
    raise RuntimeError("spatial traces and reference specs disagree")


def output_side(side: int, ops: Sequence[Op]) -> int:
    """Trace one spatial side through ``ops`` with torch's output-size rules.

    Args:
        side: The input height (or width).
        ops: The spatial ops, in order.

    Returns:
        The final side, or 0 as soon as any op would produce an empty map.
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


def min_image_size(name: str) -> int:
    """Return the smallest square input side the architecture ``name`` accepts."""
    ops = SPATIAL_OPS[name]
    side = 1
    while output_side(side, ops) < 1:
        side += 1
    return side


def check_spec(spec: ModelSpec) -> None:
    """Check that ``spec`` can be built.

    Raises:
        ConfigError: an unknown name, a non-positive field, a negative
            ``extra_blocks``, or an input smaller than the architecture's minimum.
    """
    if spec.name not in REFERENCE_SPECS:
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
    minimum = min_image_size(spec.name)
    if spec.image_size < minimum:
        size = spec.image_size
        raise ConfigError(
            f"model {spec.name!r} cannot take {spec.in_channels}x{size}x{size} (CxHxW) inputs: "
            f"it needs images of at least the minimum size {minimum}x{minimum}"
        )
