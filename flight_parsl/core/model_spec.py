"""The description of a model to build: plain data, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """A model by name and the input shape and classes it is built for.

    Attributes:
        name: a name from ``flight_parsl.models.model_names()``.
        in_channels: input channels.
        image_size: input height and width (square images).
        num_classes: output classes.
        extra_blocks: extra conv blocks (only ``cnn_blocks``).
    """

    name: str
    in_channels: int
    image_size: int
    num_classes: int
    extra_blocks: int = 0
