"""Tests of flight_parsl.models: sizes, shapes, determinism, validation and naming."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from flight_parsl.core.errors import ConfigError
from flight_parsl.models import (
    ModelSpec,
    build_model,
    check_trainable,
    count_parameters,
    model_names,
    reference_spec,
)

ALL_MODELS = [
    "cnn_blocks",
    "fedprox_cnn",
    "lenet5",
    "logreg",
    "mlp",
    "resnet152",
    "resnet18",
    "resnet50",
    "smallnet",
    "squeezenet1_0",
    "tiny",
]

# Published sizes: torchvision for squeezenet/resnets, the PyTorch blitz for smallnet,
# McMahan et al. / FedProx for the MNIST models.
REFERENCE_PARAMS = {
    "tiny": 2,
    "smallnet": 62_006,
    "fedprox_cnn": 1_663_370,
    "logreg": 7_850,
    "mlp": 199_210,
    "lenet5": 61_706,
    "squeezenet1_0": 1_248_424,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "resnet152": 60_192_808,
}

TRAINABLE = [name for name in ALL_MODELS if name != "tiny"]

# Small inputs (channels, side) that keep each forward pass fast.
SMALL_INPUT = {
    "smallnet": (3, 32),
    "fedprox_cnn": (1, 28),
    "logreg": (1, 28),
    "mlp": (1, 28),
    "lenet5": (1, 28),
    "cnn_blocks": (1, 28),
    "squeezenet1_0": (3, 64),
    "resnet18": (1, 32),
    "resnet50": (1, 32),
    "resnet152": (1, 32),
}


def _forward(spec: ModelSpec, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.randn(batch, spec.in_channels, spec.image_size, spec.image_size)
    with torch.no_grad():
        return model(x)


def test_model_names_sorted_and_complete() -> None:
    assert model_names() == ALL_MODELS


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_reference_parameter_counts(name: str) -> None:
    spec = reference_spec(name)
    assert spec.name == name
    assert count_parameters(build_model(spec)) == REFERENCE_PARAMS[name]


def test_reference_specs_shapes() -> None:
    assert reference_spec("tiny") == ModelSpec("tiny", 1, 1, 1)
    assert reference_spec("smallnet") == ModelSpec("smallnet", 3, 32, 10)
    assert reference_spec("cnn_blocks") == ModelSpec("cnn_blocks", 1, 28, 10, extra_blocks=1)
    for name in ("squeezenet1_0", "resnet18", "resnet50", "resnet152"):
        assert reference_spec(name) == ModelSpec(name, 3, 224, 1000)


def test_cnn_blocks_grows_linearly() -> None:
    counts = [
        count_parameters(build_model(ModelSpec("cnn_blocks", 1, 28, 10, extra_blocks=k)))
        for k in range(5)
    ]
    per_block = 64 * 64 * 9 + 64 + 2 * 64  # conv weight + bias, BN weight + bias
    assert [b - a for a, b in zip(counts, counts[1:])] == [per_block] * 4
    stem = 1 * 64 * 9 + 64 + 2 * 64
    head = 64 * 10 + 10
    assert counts[0] == stem + head


def test_smallnet_flatten_follows_input() -> None:
    model = build_model(ModelSpec("smallnet", 1, 28, 10))
    assert model.fc1.in_features == 16 * 4 * 4
    # 1-channel 28x28 differs from the 3x32x32 reference only in conv1 and fc1.
    assert count_parameters(model) == 62_006 - 2 * 150 - 16 * 9 * 120


@pytest.mark.parametrize("name", TRAINABLE)
def test_forward_shape_small_input(name: str) -> None:
    channels, side = SMALL_INPUT[name]
    out = _forward(ModelSpec(name, channels, side, 7, extra_blocks=2))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["smallnet", "mlp", "logreg", "fedprox_cnn", "lenet5"])
def test_forward_shape_mnist(name: str) -> None:
    assert _forward(ModelSpec(name, 1, 28, 10), batch=3).shape == (3, 10)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet152"])
@pytest.mark.parametrize("side", [28, 8])
def test_resnets_run_on_tiny_images(name: str, side: int) -> None:
    assert _forward(ModelSpec(name, 1, side, 10)).shape == (2, 10)


def test_resnet_trains_one_step_on_8x8() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet18", 1, 8, 10)).train()
    loss = torch.nn.functional.cross_entropy(
        model(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])
    )
    loss.backward()
    assert model.conv1.weight.grad is not None


def test_tiny_forward() -> None:
    out = _forward(reference_spec("tiny"), batch=5)
    assert out.shape == (5, 1)
    # Any input size works: only the first feature is read.
    assert _forward(ModelSpec("tiny", 3, 32, 10), batch=2).shape == (2, 1)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_build_is_deterministic(name: str) -> None:
    if name in ("resnet50", "resnet152"):
        spec = ModelSpec(name, 1, 32, 10)  # same code path as the reference, cheaper
    else:
        spec = reference_spec(name)
    torch.manual_seed(123)
    first = build_model(spec).state_dict()
    torch.manual_seed(123)
    second = build_model(spec).state_dict()
    torch.manual_seed(124)
    third = build_model(spec).state_dict()
    assert list(first) == list(second)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], third[k]) for k in first)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        build_model(ModelSpec("resnet9000", 3, 32, 10))
    message = str(info.value)
    assert "resnet9000" in message
    assert all(name in message for name in ALL_MODELS)
    with pytest.raises(ConfigError, match="resnet9000"):
        reference_spec("resnet9000")
    with pytest.raises(ConfigError, match="resnet9000"):
        check_trainable(ModelSpec("resnet9000", 3, 32, 10))


def test_smallnet_too_small_names_minimum() -> None:
    with pytest.raises(ConfigError) as info:
        build_model(ModelSpec("smallnet", 1, 8, 10))
    message = str(info.value)
    assert "smallnet" in message
    assert "1x8x8" in message
    assert "minimum" in message and "16x16" in message


@pytest.mark.parametrize(
    ("name", "minimum"),
    [("smallnet", 16), ("lenet5", 12), ("fedprox_cnn", 4), ("squeezenet1_0", 21)],
)
def test_minimum_size_is_exact(name: str, minimum: int) -> None:
    # The analytic minimum must agree with torch: it runs at the minimum ...
    assert _forward(ModelSpec(name, 1, minimum, 10)).shape == (2, 10)
    # ... and one pixel less is refused with a ConfigError, not a torch error.
    with pytest.raises(ConfigError, match=f"{minimum}x{minimum}"):
        build_model(ModelSpec(name, 1, minimum - 1, 10))


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec("mlp", 0, 28, 10),
        ModelSpec("mlp", 1, 0, 10),
        ModelSpec("mlp", 1, 28, 0),
        ModelSpec("cnn_blocks", 1, 28, 10, extra_blocks=-1),
    ],
)
def test_bad_fields_raise(spec: ModelSpec) -> None:
    with pytest.raises(ConfigError, match="mlp|cnn_blocks"):
        build_model(spec)


def test_check_trainable() -> None:
    with pytest.raises(ConfigError, match="--train none"):
        check_trainable(reference_spec("tiny"))
    for name in TRAINABLE:
        check_trainable(reference_spec(name))


def test_resnet18_state_dict_matches_torchvision_names() -> None:
    keys = list(build_model(ModelSpec("resnet18", 3, 32, 10)).state_dict())
    assert keys[:6] == [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
    ]
    for key in (
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.bn2.running_var",
        "fc.weight",
        "fc.bias",
    ):
        assert key in keys
    assert "layer1.0.downsample.0.weight" not in keys
    assert len(keys) == 122  # torchvision resnet18 state_dict length


def test_resnet50_and_squeezenet_names() -> None:
    resnet = build_model(ModelSpec("resnet50", 3, 32, 10)).state_dict()
    assert "layer1.0.downsample.0.weight" in resnet
    assert resnet["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert resnet["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # stride on the 3x3
    assert resnet["fc.weight"].shape == (10, 2048)
    squeeze = build_model(ModelSpec("squeezenet1_0", 3, 64, 10)).state_dict()
    assert squeeze["features.0.weight"].shape == (96, 3, 7, 7)
    assert squeeze["features.12.expand3x3.weight"].shape == (256, 64, 3, 3)
    assert squeeze["classifier.1.weight"].shape == (10, 512, 1, 1)


def test_resnet_uses_torchvision_init() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet18", 3, 224, 1000))
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)
    assert torch.all(model.layer4[1].bn2.weight == 1)
    # kaiming_normal_, mode fan_out, relu gain: std = sqrt(2 / (out_channels * k * k)).
    std = model.conv1.weight.std().item()
    assert math.isclose(std, math.sqrt(2 / (64 * 7 * 7)), rel_tol=0.05)
    std = model.layer4[0].conv1.weight.std().item()
    assert math.isclose(std, math.sqrt(2 / (512 * 3 * 3)), rel_tol=0.05)


def test_models_pickle() -> None:
    model = build_model(reference_spec("lenet5"))
    clone = pickle.loads(pickle.dumps(model))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in clone.state_dict().items())


def test_resnet50_strides_on_the_3x3_conv() -> None:
    model = build_model(ModelSpec("resnet50", 1, 32, 10)).eval()
    sizes: dict[str, int] = {}
    block = model.layer2[0]
    for name in ("conv1", "conv2"):
        getattr(block, name).register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, out.shape[-1])
        )
    with torch.no_grad():
        model(torch.randn(1, 1, 32, 32))
    # 32 -> 16 (stem conv) -> 8 (max pool) into layer2; v1.5 keeps 8 through conv1.
    assert sizes == {"conv1": 8, "conv2": 4}


def test_model_spec_is_the_torch_free_class() -> None:
    from flight_parsl.core import model_spec

    assert ModelSpec is model_spec.ModelSpec
    assert reference_spec("mlp") == model_spec.ModelSpec("mlp", 1, 28, 10)
