"""A client's fast training path (:func:`flight_parsl.worker.training.train_local`) computes
what the textbook loop with ``torch.optim.SGD`` (:func:`train_local_reference`) does, bit for
bit: weights, shard size, loss and accuracy, and the momentum a client keeps."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from flight_parsl.core.model_spec import ModelSpec
from flight_parsl.core.types import LocalSettings, Workload
from flight_parsl.core.weights import FlatWeights, Layout
from flight_parsl.data import PartitionSpec

torch = pytest.importorskip("torch")

from flight_parsl.models import build_model  # noqa: E402
from flight_parsl.transfer.state import open_state  # noqa: E402
from flight_parsl.worker import training  # noqa: E402
from flight_parsl.worker.training import train_local, train_local_reference  # noqa: E402

BASE = LocalSettings(epochs=2, batch_size=16, lr=0.05, momentum=0.9)  # the digits-mlp benchmark's
SETTINGS = {
    "benchmark": BASE,
    "plain SGD": replace(BASE, momentum=0.0),
    "weight decay": replace(BASE, weight_decay=0.01),
    "fedprox": replace(BASE, prox_mu=0.3),
    "max steps": replace(BASE, max_steps=3),
    "full batch": replace(BASE, full_batch=True, epochs=3),
    "no momentum, decay": replace(BASE, momentum=0.0, weight_decay=0.1, lr=0.2),
}


def _setup(model: str, clients: int = 16) -> tuple[Workload, FlatWeights]:
    spec = ModelSpec(model, 1, 8, 10)
    wl = Workload("local", spec, "digits", None, PartitionSpec(kind="iid"), clients, 0)
    torch.manual_seed(0)
    return wl, FlatWeights.from_model(build_model(spec))


def _same(a: tuple, b: tuple) -> bool:
    """Two train results alike to the bit (weights, layout, samples, loss, accuracy)."""
    (wa, *ra), (wb, *rb) = a, b
    return wa.buffer.tobytes() == wb.buffer.tobytes() and wa.layout == wb.layout and ra[:3] == rb[:3]


@pytest.mark.parametrize("name", list(SETTINGS))
def test_the_fast_path_trains_an_mlp_client_as_torch_sgd_does_to_the_bit(name: str) -> None:
    wl, w0 = _setup("mlp")
    settings = SETTINGS[name]
    for client, round_idx in ((0, 0), (5, 3)):
        fast = train_local(w0, wl, settings, client, round_idx)
        ref = train_local_reference(w0, wl, settings, client, round_idx)
        assert _same(fast, ref), f"{name}: client {client} round {round_idx + 1} differs"
        assert fast[0].buffer.tobytes() != w0.buffer.tobytes()  # it trained
    # and the comparison can fail: another learning rate is another result
    other = train_local_reference(w0, wl, replace(settings, lr=settings.lr * 1.01), 5, 3)
    assert not _same(train_local(w0, wl, settings, 5, 3), other)


def test_one_slot_s_clients_one_after_another_and_across_rounds_match_the_reference() -> None:
    """The reused model, parameter list and layout carry nothing from a client to the next."""
    wl, w0 = _setup("mlp")
    fast_w = ref_w = w0
    for round_idx in range(2):
        for client in range(4):
            fast = train_local(fast_w, wl, BASE, client, round_idx)
            ref = train_local_reference(ref_w, wl, BASE, client, round_idx)
            assert _same(fast, ref)
        fast_w, ref_w = fast[0], ref[0]  # the next round starts from the last client's weights


def test_a_batchnorm_model_s_buffers_train_and_pack_as_the_reference_does() -> None:
    wl, w0 = _setup("cnn_blocks")
    assert any(e.dtype == "int64" for e in w0.layout.entries)  # num_batches_tracked
    settings = replace(BASE, epochs=1)
    assert _same(train_local(w0, wl, settings, 2, 1), train_local_reference(w0, wl, settings, 2, 1))


def test_kept_momentum_carries_across_rounds_as_the_reference_keeps_it(tmp_path) -> None:
    wl, w0 = _setup("mlp")
    keep = replace(BASE, keep_momentum=True)
    with open_state(directory=str(tmp_path / "fast")) as fast_state, open_state(
        directory=str(tmp_path / "ref")
    ) as ref_state:
        fast_w = ref_w = w0
        for round_idx in range(3):
            fast = train_local(fast_w, wl, keep, 1, round_idx, fast_state)
            ref = train_local_reference(ref_w, wl, keep, 1, round_idx, ref_state)
            assert _same(fast, ref)
            assert fast_state.get(1) == ref_state.get(1) is not None
            fast_w, ref_w = fast[0], ref[0]


def test_weights_of_another_layout_fail_as_load_state_dict_does() -> None:
    wl, w0 = _setup("mlp")
    train_local(w0, wl, BASE, 0, 0)  # this thread's trainer knows the model's layout
    entries = list(w0.layout.entries)
    wrong = Layout.from_shapes([(e.name, e.shape[::-1], e.dtype) for e in entries])  # transposed shapes
    with pytest.raises(RuntimeError, match="size mismatch"):
        train_local(FlatWeights(w0.buffer, wrong), wl, BASE, 0, 0)
    renamed = Layout.from_shapes([("x" + e.name, e.shape, e.dtype) for e in entries])
    with pytest.raises(RuntimeError, match="Missing key"):
        train_local(FlatWeights(w0.buffer, renamed), wl, BASE, 0, 0)
    assert _same(train_local(w0, wl, BASE, 0, 0), train_local_reference(w0, wl, BASE, 0, 0))


def test_each_thread_trains_its_own_model() -> None:
    wl, _ = _setup("mlp")
    trainers = []

    def grab() -> None:
        trainers.append(training._trainer(wl.model))

    threads = [threading.Thread(target=grab) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert trainers[0] is not trainers[1] and trainers[0].model is not trainers[1].model
    assert training._trainer(wl.model).model is training.cached_model(wl.model)
