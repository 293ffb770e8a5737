"""Local training and evaluation in torch (imported lazily, on workers that train).

Models are built once per process and reused across rounds; each task loads the
round's global weights into the cached model, trains on the worker's own shard and
returns fresh flat weights.

Training runs on the slot's device (:func:`slot_device`): a GPU when torch sees one, else
another accelerator torch knows (``torch.accelerator``), else the CPU. A site's
``available_accelerators`` makes Parsl pin one device per worker (``CUDA_VISIBLE_DEVICES``, and
ROCm's and oneAPI's variables), so a slot's GPU is its own ``cuda:0``. Weights travel as CPU
float32 buffers either way: they move to the device when loaded into the model and back when packed.

A client's training is the textbook loop with ``torch.optim.SGD`` (:func:`train_local_reference`,
kept as the specification), run by :func:`train_local` through a per-thread :class:`_Trainer` that
drops its per-client and per-step overheads and computes the same numbers, bit for bit (the
tests compare the two paths' weights, loss and accuracy exactly):

- the global weights go into the model with one ``copy_`` per state-dict entry from the flat
  buffer (no ``state_dict``, no ``load_state_dict``), and the trained weights come out the same
  way into one new buffer under the incoming layout (no new :class:`Layout` per client);
- no ``torch.optim.SGD`` per client: each step calls torch's functional SGD
  (``torch.optim.sgd.sgd``, what ``SGD.step`` calls, with the same arguments and momentum
  buffers) without the optimizer object's bookkeeping and profiler hooks, and
  ``zero_grad(set_to_none=True)`` is clearing ``.grad``; an optimizer's first step imports
  ``torch._dynamo`` (some 1.3 s of CPU), which no slot training through this path does;
- the model, its parameter list and its state-dict tensors are looked up once per thread.

For a model of a few ten thousand weights trained on a few dozen samples (digits mlp: 4 steps
of batch 16) these overheads were about a third of a client's CPU time.
"""

from __future__ import annotations

import math
import threading
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.sgd import sgd

from flight_parsl.data.shards import load_shard
from flight_parsl.core.model_spec import ModelSpec
from flight_parsl.models import build_model
from flight_parsl.core.types import LocalSettings, Workload
from flight_parsl.core.weights import FlatWeights, Layout
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


def train_local_reference(
    weights: FlatWeights,
    workload: Workload,
    settings: LocalSettings,
    client: int,
    round_idx: int,
    state: ClientState | None = None,
) -> tuple[FlatWeights, int, float, float, float]:
    """Train from ``weights`` on ``client``'s shard: the textbook loop with ``torch.optim.SGD``,
    the specification :func:`train_local` computes bit for bit (tests compare them); runs
    train nothing through it.

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


class _Trainer:
    """One thread's model of one spec, with what a client's training looks up in it: the
    parameters (in ``model.parameters()`` order, the optimizer's) and the state-dict tensors
    in state-dict order (a :class:`FlatWeights` layout's), checked against a layout once."""

    def __init__(self, spec: ModelSpec) -> None:
        self.model = cached_model(spec)
        self.params = list(self.model.parameters())
        self.param_names = [name for name, _ in self.model.named_parameters()]
        state = self.model.state_dict(keep_vars=True)
        self.tensors = [t.detach() for t in state.values()]  # the same storage, outside autograd
        self.signature = tuple(
            (name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in state.items()
        )
        self.layout: Layout | None = None  # the last layout found to match
        self.parts: list[tuple[torch.Tensor, int, int, tuple[int, ...]]] = []  # its (tensor, start, stop, shape)

    def matches(self, layout: Layout) -> bool:
        """Whether ``layout`` names this model's state-dict entries, shapes and dtypes in order."""
        if layout is self.layout or layout == self.layout:
            return True
        if tuple((e.name, e.shape, e.dtype) for e in layout.entries) != self.signature:
            return False
        self.layout = layout
        self.parts = [(t, e.offset, e.offset + e.size, e.shape) for t, e in zip(self.tensors, layout.entries)]
        return True

    @torch.no_grad()
    def load(self, weights: FlatWeights) -> None:
        """Copy ``weights`` into the model: one ``copy_`` per entry from the flat buffer (what
        ``load_state_dict`` does, without its walk of the module tree); a layout of another
        shape goes through ``load_state_dict`` (and fails there as it would)."""
        if not self.matches(weights.layout):
            weights.load_into(self.model)
            return
        with warnings.catch_warnings():  # a read-only payload's view: nothing writes to it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            flat = torch.from_numpy(weights.buffer)
        for tensor, start, stop, shape in self.parts:
            tensor.copy_(flat[start:stop].view(shape))

    @torch.no_grad()
    def pack(self, layout: Layout) -> FlatWeights:
        """The model's weights in a new buffer under ``layout`` (it :meth:`matches`): one
        ``copy_`` per entry, the values :meth:`FlatWeights.from_model` gives."""
        if not self.matches(layout):
            return FlatWeights.from_model(self.model)
        out = np.empty(self.parts[-1][2] if self.parts else 0, dtype=np.float32)
        flat = torch.from_numpy(out)
        for tensor, start, stop, shape in self.parts:
            flat[start:stop].view(shape).copy_(tensor)
        return FlatWeights(out, layout)


def _trainer(spec: ModelSpec) -> _Trainer:
    """This thread's :class:`_Trainer` for ``spec`` (on :func:`cached_model`'s model)."""
    trainers: dict[ModelSpec, _Trainer] = _LOCAL.__dict__.setdefault("trainers", {})
    trainer = trainers.get(spec)
    if trainer is None:
        trainer = trainers[spec] = _Trainer(spec)
    return trainer


@torch.no_grad()
def _sgd_step(
    params: list[torch.nn.Parameter], buffers: list[torch.Tensor | None], lr: float, momentum: float,
    weight_decay: float,
) -> None:
    """One step of ``torch.optim.SGD(params, lr, momentum, weight_decay)`` with ``buffers`` its
    momentum buffers (None before the first step, set by the step): what ``SGD.step`` does,
    parameters without a gradient left out, through torch's functional SGD with the same
    arguments (``foreach`` and ``fused`` chosen by torch as the optimizer has them chosen: the
    single-tensor update on the CPU, a GPU's foreach kernels), so the result is the same to
    the bit, without the optimizer's bookkeeping, profiler hooks and ``torch._dynamo`` import."""
    index: list[int] = []
    live: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    for i, param in enumerate(params):
        if param.grad is not None:
            index.append(i)
            live.append(param)
            grads.append(param.grad)
    momentum_buffers = [buffers[i] for i in index]
    sgd(
        live,
        grads,
        momentum_buffers,
        weight_decay=weight_decay,
        momentum=momentum,
        lr=lr,
        dampening=0,
        nesterov=False,
        maximize=False,
    )
    if momentum != 0:
        for i, buf in zip(index, momentum_buffers):
            buffers[i] = buf


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

    :func:`train_local_reference`'s loop, bit for bit, without its per-client and per-step
    overheads (see the module docstring).

    Returns:
        The new weights, the shard size, mean loss and accuracy over the batches of
        the last epoch (measured before each step), and the CPU seconds of the
        optimization loop alone (no data loading or model building).
    """
    if torch.get_num_threads() != workload.threads:
        torch.set_num_threads(workload.threads)
    x, y = load_shard(
        workload.dataset, workload.data_root, workload.partition, workload.num_clients, client, workload.seed
    )
    xt, yt = _tensor(x), _tensor(y)
    trainer = _trainer(workload.model)
    model, params = trainer.model, trainer.params
    trainer.load(weights)
    model.train()
    lr, momentum, weight_decay = settings.lr, settings.momentum, settings.weight_decay
    buffers: list[torch.Tensor | None] = [None] * len(params)
    keep = settings.keep_momentum and momentum > 0
    if keep:
        if state is None:
            raise ValueError("keep_momentum needs the run's client state")
        saved = state.get(client)
        if saved is not None:
            buffers = _momentum_buffers(trainer, saved)
    anchor = [p.detach().clone() for p in params] if settings.prox_mu > 0 else None
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
            for p in params:  # zero_grad(set_to_none=True)
                p.grad = None
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            if anchor is not None:
                add_proximal_gradient(model, anchor, settings.prox_mu)
            _sgd_step(params, buffers, lr, momentum, weight_decay)
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
        state.put(client, _momentum_blob(trainer, buffers))  # type: ignore[union-attr]
    loss_mean = loss_sum / seen if seen else math.nan
    acc = correct / seen if seen else math.nan
    return trainer.pack(weights.layout), n, loss_mean, acc, cpu_s


def _momentum_buffers(trainer: _Trainer, data: bytes) -> list[torch.Tensor | None]:
    """A client's saved momentum buffers, one per parameter (what :func:`load_momentum` sets)."""
    saved = FlatWeights.from_bytes(data)
    return [
        torch.from_numpy(saved.view(name).copy()).to(p.device) for name, p in zip(trainer.param_names, trainer.params)
    ]


def _momentum_blob(trainer: _Trainer, buffers: list[torch.Tensor | None]) -> bytes:
    """The momentum buffers (zeros where none yet) as a client's state blob (what
    :func:`save_momentum` writes)."""
    named = {
        name: torch.zeros_like(p) if buf is None else buf
        for name, p, buf in zip(trainer.param_names, trainer.params, buffers)
    }
    return FlatWeights.from_state_dict(named).to_bytes()


def warm_up(workload: Workload) -> None:
    """Load the data and build this thread's model, then take one throwaway training step
    on two samples through :func:`train_local`'s path, so that a client's first round pays
    none of these one-time costs. It uses no ``torch.optim`` optimizer, so it does not import
    ``torch._dynamo`` (an optimizer's first step does: some 1.3 s of CPU) and neither does a
    round: nothing a slot's synchronous or asynchronous training runs needs it."""
    if torch.get_num_threads() != workload.threads:
        torch.set_num_threads(workload.threads)
    x, y = load_shard(workload.dataset, workload.data_root, workload.partition, workload.num_clients, 0, workload.seed)
    trainer = _trainer(workload.model)
    model, params = trainer.model, trainer.params
    weights = FlatWeights.from_model(model)
    trainer.load(weights)  # the layout's first check
    model.train()
    for p in params:
        p.grad = None
    F.cross_entropy(model(_tensor(x[:2])), _tensor(y[:2])).backward()
    _sgd_step(params, [None] * len(params), 0.0, 0.9, 0.0)
    trainer.load(weights)
    trainer.pack(weights.layout)
    for p in params:
        p.grad = None


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
