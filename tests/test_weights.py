"""Flat weights: packing a state_dict, zero-copy views, pickling."""

import pickle

import numpy as np
import pytest
import torch

from flight_parsl.core.weights import FlatWeights, Layout


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2))


def test_round_trip_through_state_dict_keeps_every_entry_and_dtype() -> None:
    model = _model()
    model(torch.randn(2, 1, 3, 3))  # moves BatchNorm statistics and num_batches_tracked
    flat = FlatWeights.from_model(model)
    state = model.state_dict()
    assert flat.layout.size == sum(t.numel() for t in state.values())
    assert flat.buffer.dtype == np.float32 and flat.buffer.ndim == 1
    back = flat.to_state_dict()
    assert list(back) == list(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype, name
        assert torch.equal(back[name], tensor), name
    assert int(back["1.num_batches_tracked"]) == 1


def test_float_entries_are_views_of_the_buffer() -> None:
    flat = FlatWeights.from_model(_model())
    state = flat.to_state_dict()
    flat.buffer[:] = 7.0
    assert float(state["0.weight"].flatten()[0]) == 7.0
    assert flat.view("3.bias").shape == (2,)


def test_load_into_copies_weights_into_another_model() -> None:
    src, dst = _model(), _model()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    FlatWeights.from_model(src).load_into(dst)
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)


def test_bytes_round_trip_and_size() -> None:
    flat = FlatWeights.from_model(_model())
    data = flat.to_bytes()
    back = FlatWeights.from_bytes(data)
    assert np.array_equal(back.buffer, flat.buffer)
    assert back.layout == flat.layout
    assert flat.nbytes <= len(data) < flat.nbytes + 2048
    with pytest.raises(TypeError):
        FlatWeights.from_bytes(pickle.dumps([1, 2]))
    buffer = flat.to_buffer()  # the same bytes, in a buffer numpy allocated (what a store's put sends)
    assert isinstance(buffer, memoryview) and buffer.format == "B" and bytes(buffer) == data
    assert np.array_equal(FlatWeights.from_bytes(buffer).buffer, flat.buffer)


def test_buffer_must_match_layout() -> None:
    layout = Layout.from_shapes([("a", (2, 3), "float32"), ("b", (4,), "float32")])
    assert layout.size == 10 and layout.entries[1].offset == 6
    with pytest.raises(ValueError, match="needs 10"):
        FlatWeights(np.zeros(9, dtype=np.float32), layout)
    with pytest.raises(ValueError, match="float32"):
        FlatWeights(np.zeros(10, dtype=np.float64), layout)
