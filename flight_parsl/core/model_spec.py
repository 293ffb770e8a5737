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


#: Every model of the zoo (flight_parsl.models) at its reference (published) size.
REFERENCE_SPECS: dict[str, ModelSpec] = {
    "tiny": ModelSpec("tiny", 1, 1, 1),
    "smallnet": ModelSpec("smallnet", 3, 32, 10),
    "fedprox_cnn": ModelSpec("fedprox_cnn", 1, 28, 10),
    "logreg": ModelSpec("logreg", 1, 28, 10),
    "mlp": ModelSpec("mlp", 1, 28, 10),
    "lenet5": ModelSpec("lenet5", 1, 28, 10),
    "cnn_blocks": ModelSpec("cnn_blocks", 1, 28, 10, extra_blocks=1),
    "squeezenet1_0": ModelSpec("squeezenet1_0", 3, 224, 1000),
    "resnet18": ModelSpec("resnet18", 3, 224, 1000),
    "resnet50": ModelSpec("resnet50", 3, 224, 1000),
    "resnet152": ModelSpec("resnet152", 3, 224, 1000),
}


def model_names() -> list[str]:
    """The model names ``--model`` accepts, sorted (checked without importing torch)."""
    return sorted(REFERENCE_SPECS)
