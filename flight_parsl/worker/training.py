"""Local training and evaluation in torch (imported lazily, on workers that train).

Models are built once per process and reused across rounds; each task loads the
round's global weights into the cached model, trains on the worker's own shard and
returns fresh flat weights.

Training runs on the slot's device (:func:`slot_device`): a GPU when torch sees one, else
another accelerator torch knows (``torch.accelerator``), else the CPU. A site's
``available_accelerators`` makes Parsl pin one device per worker (``CUDA_VISIBLE_DEVICES``, and
ROCm's and oneAPI's variables), so a slot's GPU is its own ``cuda:0``. Weights travel as CPU
float32 buffers either way: they move to the device when loaded into the model and back when packed.
"""

from __future__ import annotations

import math
import threading
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from flight_parsl.data.shards import load_shard
from flight_parsl.core.model_spec import ModelSpec
from flight_parsl.models import build_model
from flight_parsl.core.types import LocalSettings, Workload
from flight_parsl.core.weights import FlatWeights
from flight_parsl.transfer.state import ClientState

_LOCAL = threading.local()
_DEVICE: torch.device | None = None


def slot_device() -> torch.device:
    """The device this process trains on: CUDA's current device when torch sees a GPU (the
    slot's own where Parsl pinned one), else the current ``torch.accelerator`` where torch has
    one available (MPS, XPU ...), else the CPU. Decided once per process."""
    global _DEVICE
    if _DEVICE is None:
        if torch.cuda.is_available():
            _DEVICE = torch.device("cuda", torch.cuda.current_device())
        else:
            accelerator = getattr(torch, "accelerator", None)
            found = accelerator.current_accelerator() if accelerator is not None and accelerator.is_available() else None
            _DEVICE = torch.device(found) if found is not None else torch.device("cpu")
    return _DEVICE


def device_name() -> str:
    """:func:`slot_device` as tasks.csv's ``task_device`` writes it (``cpu``, ``cuda:0`` ...)."""
    device = slot_device()
    return device.type if device.type == "cpu" else f"{device.type}:{device.index or 0}"


def cached_model(spec: ModelSpec) -> torch.nn.Module:
    """This thread's instance of the model ``spec`` (built on first use), on :func:`slot_device`.

    Per thread, not per process, so that thread-pool workers never share one.
    """
    models: dict[ModelSpec, torch.nn.Module] = _LOCAL.__dict__.setdefault("models", {})
    model = models.get(spec)
    if model is None:
        model = models[spec] = build_model(spec).to(slot_device())
    return model


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor on the slot's device: on the CPU it shares a (read-only, cached) shard's memory,
    and nothing writes to it; elsewhere it is a copy."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array).to(slot_device())


def proximal_term(model: torch.nn.Module, anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's (mu / 2) * ||w - w_global||^2 over the model's parameters."""
    return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))  # type: ignore[return-value]


@torch.no_grad()
def add_proximal_gradient(model: torch.nn.Module, anchor: list[torch.Tensor], mu: float) -> None:
    """Add the gradient of :func:`proximal_term`, ``mu * (w - w_global)``, to each parameter's
    gradient: the same step as back-propagating the term, without building its graph."""
    for p, a in zip(model.parameters(), anchor):
        if p.grad is None:
            p.grad = mu * (p - a)
        else:
            p.grad.add_(p - a, alpha=mu)


def load_momentum(opt: torch.optim.SGD, model: torch.nn.Module, data: bytes) -> None:
    """Set the optimizer's momentum buffers from a client's saved state."""
    saved = FlatWeights.from_bytes(data)
    for name, p in model.named_parameters():
        opt.state[p]["momentum_buffer"] = torch.from_numpy(saved.view(name).copy()).to(p.device)


def save_momentum(opt: torch.optim.SGD, model: torch.nn.Module) -> bytes:
    """The optimizer's momentum buffers (zeros where none yet), as a client's state blob."""
    buffers = {}
    for name, p in model.named_parameters():
        buf = opt.state.get(p, {}).get("momentum_buffer")
        buffers[name] = torch.zeros_like(p) if buf is None else buf
    return FlatWeights.from_state_dict(buffers).to_bytes()


def train_local(
    weights: FlatWeights,
    workload: Workload,
    settings: LocalSettings,
    client: int,
    round_idx: int,
    state: ClientState | None = None,
) -> tuple[FlatWeights, int, float, float, float]:
    """Train from ``weights`` on ``client``'s shard.

    With ``settings.keep_momentum`` the client's SGD momentum buffer is read from
    ``state`` before training and written back after it, so it persists across
    the rounds the client takes part in.

    Returns:
        The new weights, the shard size, mean loss and accuracy over the batches of
        the last epoch (measured before each step), and the CPU seconds of the
        optimization loop alone (no data loading or model building).
    """
    torch.set_num_threads(workload.threads)
    x, y = load_shard(
        workload.dataset, workload.data_root, workload.partition, workload.num_clients, client, workload.seed
    )
    xt, yt = _tensor(x), _tensor(y)
    model = cached_model(workload.model)
    weights.load_into(model)
    model.train()
    opt = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    keep = settings.keep_momentum and settings.momentum > 0
    if keep:
        if state is None:
            raise ValueError("keep_momentum needs the run's client state")
        saved = state.get(client)
        if saved is not None:
            load_momentum(opt, model, saved)
    anchor = [p.detach().clone() for p in model.parameters()] if settings.prox_mu > 0 else None
    rng = np.random.default_rng([workload.seed, round_idx, client])
    n = len(yt)
    batch = n if settings.full_batch else settings.batch_size
    steps = 0
    loss_sum, correct, seen = 0.0, 0, 0
    cpu0 = time.thread_time()
    for _ in range(settings.epochs):
        loss_sum, correct, seen = 0.0, 0, 0
        order = torch.from_numpy(rng.permutation(n)).to(xt.device)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            xb, yb = xt[idx], yt[idx]
            opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            if anchor is not None:
                add_proximal_gradient(model, anchor, settings.prox_mu)
            opt.step()
            loss_sum += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
            steps += 1
            if settings.max_steps is not None and steps >= settings.max_steps:
                break
        if settings.max_steps is not None and steps >= settings.max_steps:
            break
    cpu_s = time.thread_time() - cpu0
    if keep:
        state.put(client, save_momentum(opt, model))  # type: ignore[union-attr]
    loss_mean = loss_sum / seen if seen else math.nan
    acc = correct / seen if seen else math.nan
    return FlatWeights.from_model(model), n, loss_mean, acc, cpu_s


def warm_up(workload: Workload) -> None:
    """Load the data and build this thread's model, then take one throwaway training step
    on two samples, so that a client's first round pays none of these one-time costs."""
    torch.set_num_threads(workload.threads)
    x, y = load_shard(workload.dataset, workload.data_root, workload.partition, workload.num_clients, 0, workload.seed)
    model = cached_model(workload.model)
    weights = FlatWeights.from_model(model)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    F.cross_entropy(model(_tensor(x[:2])), _tensor(y[:2])).backward()
    opt.step()  # the first step of a process imports more of torch
    weights.load_into(model)


@torch.no_grad()
def evaluate(weights: FlatWeights, spec: ModelSpec, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``weights`` on ``(x, y)``."""
    model = cached_model(spec)
    weights.load_into(model)
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb = _tensor(x[start : start + batch_size])
        yb = _tensor(y[start : start + batch_size])
        logits = model(xb)
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return loss_sum / len(y), correct / len(y)
