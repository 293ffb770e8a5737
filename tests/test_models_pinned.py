"""Pins of the model zoo: its public names, its import cost, and what a seeded build produces.

For every zoo model at a small size, the values below were computed with the
single-module ``flight_parsl/models/__init__.py`` (before it became a package)
under torch 2.13.0 on x86_64: the parameter count, the number of state-dict
entries, a SHA-256 of the seeded state dict (keys, shapes, dtypes and bytes, in
order) and a float64 fingerprint of the values. A refactor that reorders layers,
renames a key or draws from the generator in another order changes them.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

import flight_parsl.models
from flight_parsl.models import ModelSpec, count_parameters, model_names, seeded_model

# Every public name of the single-module flight_parsl.models, importable from the package.
PUBLIC_NAMES = [
    "BasicBlock", "Bottleneck", "CNNBlocks", "ConvBlock", "FedProxCNN", "Fire", "LeNet5",
    "LogReg", "MLP", "ModelSpec", "REFERENCE_SPECS", "ResNet", "SmallNet", "SqueezeNet",
    "TinyNet", "build_model", "check_trainable", "conv1x1", "conv3x3", "count_parameters",
    "model_names", "reference_spec", "seeded_model",
]  # fmt: skip

SEED = 7

# Small sizes: each at (or near) its minimum input side, 3 classes.
SPECS = {
    "tiny": ModelSpec("tiny", 1, 1, 1),
    "smallnet": ModelSpec("smallnet", 2, 16, 3),
    "fedprox_cnn": ModelSpec("fedprox_cnn", 2, 8, 3),
    "logreg": ModelSpec("logreg", 2, 8, 3),
    "mlp": ModelSpec("mlp", 2, 8, 3),
    "lenet5": ModelSpec("lenet5", 1, 12, 3),
    "cnn_blocks": ModelSpec("cnn_blocks", 2, 8, 3, extra_blocks=2),
    "squeezenet1_0": ModelSpec("squeezenet1_0", 2, 21, 3),
    "resnet18": ModelSpec("resnet18", 2, 8, 3),
    "resnet50": ModelSpec("resnet50", 2, 8, 3),
    "resnet152": ModelSpec("resnet152", 2, 8, 3),
}

# name: (parameters, state-dict entries, sha256 of the seeded state dict, fingerprint)
PINNED = {
    "tiny": (2, 2, "d9dd7629ac4db32ab27a8b38e3b65fe60183e462b557eb6d29512916ce12abee", 3.404826521873474),
    "smallnet": (15_181, 10, "4fc87d78f9cfee09fd4b018e5b6c15836f5a85340222c234f302cbcd55f605b1", 177.26600551241063),
    "fedprox_cnn": (186_019, 8, "9a4d9daf877924698b6aae13b9a30638ede4cccb8524ddb426a72f64a3077871", 14.275329783132818),
    "logreg": (387, 2, "fd0e628055c10f980ffed4ad5238f93fd8c2e61c34c27b140591b5e48251c92c", -1.355438598053297),
    "mlp": (66_603, 6, "96caa575491f84d157cfab5456ccdb6a453791447c57f3155c8b0901f9444e73", -21.508370751866153),
    "lenet5": (15_031, 10, "30ec265bc6f72a154b0f0b2458a701359497b99255713cdcb67252183c9cd42c", -89.51329021976744),
    "cnn_blocks": (75_651, 23, "8f0a99dafa3d21e7b1a079d84f4ef2653109d175fe2420ea9e64cf22f011b976", 45.2221217885714),
    "squeezenet1_0": (732_259, 52, "a71415242de3ba9172891c120c80e7a15345e8311124bb631b1a3dce594b120a", -2011.4363712793643),
    "resnet18": (11_174_915, 122, "5da6e93dbf4f891dfc11dd8c812660771d4b44a3bc142f5a8152459e01fc3656", -18217.71520880187),
    "resnet50": (23_511_043, 320, "afe73dac8a6c9c8f1a2c37d13679b0aba8c93df9fb73e36ff6ad1fccd4d7cb2d", -124127.26225838395),
    "resnet152": (58_146_819, 932, "46a19e73d0d0088e8fcef3546ba80c10e391f5343ecf4a427edfb218b9329af3", -373078.137107447),
}

# The exact digests hold for the torch release they were computed with; another
# release may change its generator or init kernels (the fingerprint still applies).
PINNED_TORCH = "2.13."


def _fingerprint(model: torch.nn.Module) -> tuple[str, float]:
    """SHA-256 of the state dict (keys, shapes, dtypes, bytes) and a float64 fingerprint.

    The fingerprint weights each entry's values by a zero-mean ramp (so constant
    BatchNorm entries barely count) and each entry by its 1-based position.
    """
    digest = hashlib.sha256()
    fingerprint = 0.0
    for i, (key, value) in enumerate(model.state_dict().items()):
        tensor = value.detach().contiguous()
        digest.update(f"{key}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.numpy().tobytes())
        flat = tensor.to(torch.float64).flatten()
        ramp = (torch.arange(flat.numel(), dtype=torch.float64) % 7) - 3
        fingerprint += (i + 1) * float((flat * ramp).sum())
    return digest.hexdigest(), fingerprint


def test_every_zoo_model_is_pinned() -> None:
    assert sorted(SPECS) == sorted(PINNED) == model_names()


@pytest.mark.parametrize("name", sorted(PINNED))
def test_seeded_build_matches_the_pin(name: str) -> None:
    params, entries, sha, pinned_fingerprint = PINNED[name]
    model = seeded_model(SPECS[name], SEED)
    assert count_parameters(model) == params
    assert len(model.state_dict()) == entries
    digest, fingerprint = _fingerprint(model)
    assert fingerprint == pytest.approx(pinned_fingerprint, rel=1e-9, abs=1e-9)
    if torch.__version__.startswith(PINNED_TORCH):
        assert digest == sha


def test_public_names_stay_importable_from_the_package() -> None:
    assert sorted(flight_parsl.models.__all__) == sorted(PUBLIC_NAMES)
    namespace: dict[str, object] = {}
    exec("from flight_parsl.models import *", namespace)
    assert set(PUBLIC_NAMES) <= set(namespace)
    assert namespace["SmallNet"].__module__ == "flight_parsl.models.cnn"
    assert set(PUBLIC_NAMES) <= set(dir(flight_parsl.models))
    with pytest.raises(AttributeError, match="no_such_model"):
        flight_parsl.models.no_such_model  # noqa: B018


def test_the_package_and_its_torch_free_names_do_not_import_torch() -> None:
    code = """
import sys
import flight_parsl.models
from flight_parsl.models import ModelSpec, REFERENCE_SPECS, check_trainable, model_names, reference_spec
from flight_parsl.models.validation import check_spec, min_image_size
check_trainable(reference_spec("mlp"))
check_spec(ModelSpec("smallnet", 1, 16, 10))
print("torch" in sys.modules, min_image_size("smallnet"), len(model_names()))
from flight_parsl.models import build_model
print("torch" in sys.modules, type(build_model(reference_spec("lenet5"))).__name__)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "16", "11", "True", "LeNet5"]
