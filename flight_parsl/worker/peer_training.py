"""One client's local step in decentralized mode, in torch (imported lazily on slots).

A client's models and Adam states live in the run's per-client store between
rounds (one blob per client: ``torch.save`` of the state dicts and the DP step
count). A step loads them, takes in the model the client received (replace it,
or average with it), trains one local epoch on Poisson batches (deep mutual
learning between the private and the shared model when the method says so;
DP-SGD on the shared model), evaluates on the client's own test set, writes the
blob back and returns the shared model to send on.

Losses follow ProxyFL: private ``(1 - alpha) CE + alpha KL``, shared
``(1 - beta) CE + beta KL``, each KL against the other model's detached
probabilities (torch's ``kl_div(log p_self, p_other)``, as in the paper's code).
"""

from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from flight_parsl.core.model_spec import ModelSpec
from flight_parsl.core.peer import PeerSettings
from flight_parsl.core.types import Workload
from flight_parsl.core.weights import FlatWeights
from flight_parsl.data.local_test import load_local_test
from flight_parsl.data.shards import load_shard
from flight_parsl.models import build_model, seeded_model
from flight_parsl.transfer.state import ClientState
from flight_parsl.worker.dp import epsilon, poisson_batches, private_gradients

_LOCAL = threading.local()


@dataclass
class PeerStep:
    """What one client's step produced."""

    shared: FlatWeights | None
    samples: int
    train_loss: float
    train_acc: float
    metrics: dict[str, float] = field(default_factory=dict)
    cpu_s: float = 0.0


def _model(role: str, spec: ModelSpec) -> torch.nn.Module:
    """This thread's instance of ``spec`` for ``role`` (private and shared never share one)."""
    models: dict[tuple[str, ModelSpec], torch.nn.Module] = _LOCAL.__dict__.setdefault("models", {})
    key = (role, spec)
    if key not in models:
        models[key] = build_model(spec)
    return models[key]


def _init_seed(seed: int, role: str, client: int) -> int:
    """Private models start from per-client seeds; shared ones from the run's seed (all alike)."""
    return seed if role == "shared" else seed * 100_003 + 1 + client


def _data(workload: Workload, settings: PeerSettings, client: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = workload
    clients = range(w.num_clients) if settings.pooled else [client]
    parts = [load_shard(w.dataset, w.data_root, w.partition, w.num_clients, c, w.seed) for c in clients]
    x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))


def _tests(workload: Workload, settings: PeerSettings, client: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    w = workload
    clients = range(w.num_clients) if settings.pooled else [client]
    out = []
    for c in clients:
        x, y = load_local_test(w.dataset, w.data_root, w.partition, w.num_clients, c, w.seed, settings.test_samples)
        out.append((torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))))
    return out


@torch.no_grad()
def _evaluate(model: torch.nn.Module, tests: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Mean over the test sets of the loss and accuracy (one test set: the client's own)."""
    model.eval()
    losses, accs = [], []
    for x, y in tests:
        logits = model(x)
        losses.append(float(F.cross_entropy(logits, y)))
        accs.append(float((logits.argmax(1) == y).float().mean()))
    model.train()
    return float(np.mean(losses)), float(np.mean(accs))


def _distill(logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None, weight: float) -> torch.Tensor:
    """(1 - weight) CE + weight KL(teacher || model); plain CE without a teacher."""
    ce = F.cross_entropy(logits, y)
    if teacher is None or weight == 0:
        return ce
    kl = F.kl_div(F.log_softmax(logits, dim=1), teacher, reduction="batchmean")
    return (1 - weight) * ce + weight * kl


def dump_state(state: dict[str, object]) -> bytes:
    """A client's blob: ``torch.save`` of its models' and optimizers' state dicts."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def load_state(data: bytes) -> dict[str, object]:
    """Inverse of :func:`dump_state`."""
    return torch.load(io.BytesIO(data), weights_only=True)


def train_peer(
    workload: Workload,
    settings: PeerSettings,
    client: int,
    round_idx: int,
    state: ClientState,
    received: FlatWeights | None,
) -> PeerStep:
    """One client's round: load its state, take in ``received``, train, evaluate, save.

    Returns the shared model to send on (None for methods without one), the sample
    count, the evaluated model's training loss and accuracy over the epoch, and
    metrics: ``private_test_acc`` / ``private_test_loss`` (the evaluated model on the
    client's test set), ``proxy_test_acc`` (the shared model, when the client also has a
    private one), ``epsilon`` (DP), ``state_bytes_in`` / ``state_bytes_out``.
    """
    import time

    torch.set_num_threads(workload.threads)
    s = settings
    x, y = _data(workload, s, client)
    n = len(y)
    blob = state.get(client)
    saved = load_state(blob) if blob is not None else {}
    models: dict[str, torch.nn.Module] = {}
    opts: dict[str, torch.optim.Optimizer] = {}
    for role, spec in (("private", s.private_model), ("shared", s.shared_model)):
        if spec is None:
            continue
        model = _model(role, spec)
        if role in saved:
            model.load_state_dict(saved[role])  # type: ignore[arg-type]
        else:
            model.load_state_dict(seeded_model(spec, _init_seed(workload.seed, role, client)).state_dict())
        model.train()
        models[role] = model
        opts[role] = torch.optim.Adam(model.parameters(), lr=s.lr)
        if f"{role}_opt" in saved:
            opts[role].load_state_dict(saved[f"{role}_opt"])  # type: ignore[arg-type]
    shared = models.get("shared")
    if received is not None and shared is not None and s.exchange != "none":
        if s.exchange == "push":
            own = FlatWeights.from_model(shared)
            received = own.like((own.buffer + received.buffer) / 2)
        received.load_into(shared)
    private = models.get("private")
    steps_done = int(saved.get("steps", 0))  # type: ignore[call-overload]
    q = min(1.0, s.batch_size / n)
    per_epoch = max(1, round(n / s.batch_size))
    rng = np.random.default_rng([workload.seed, round_idx, client, 11])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    main = private if private is not None else shared
    assert main is not None
    loss_sum, correct, seen, clipped = 0.0, 0, 0, []
    cpu0 = time.thread_time()
    for idx in poisson_batches(n, q, s.epochs * per_epoch, rng):
        xb, yb = x[idx], y[idx]
        if len(idx):
            logits = {role: m(xb) for role, m in models.items()}
            probs = {role: F.softmax(v.detach(), dim=1) for role, v in logits.items()}
            mut = s.mutual and private is not None and shared is not None
            if private is not None:
                loss = _distill(logits["private"], yb, probs["shared"] if mut else None, s.alpha)
                opts["private"].zero_grad(set_to_none=True)
                loss.backward()
                opts["private"].step()
            if shared is not None and not s.dp:
                loss_s = _distill(logits["shared"], yb, probs["private"] if mut else None, s.beta)
                opts["shared"].zero_grad(set_to_none=True)
                loss_s.backward()
                opts["shared"].step()
            main_logits = logits["private" if private is not None else "shared"].detach()
            loss_sum += float(F.cross_entropy(main_logits, yb, reduction="sum"))
            correct += int((main_logits.argmax(1) == yb).sum())
            seen += len(idx)
        if shared is not None and s.dp:  # an empty Poisson batch is still a noisy step
            teacher = probs["private"] if len(idx) and s.mutual and private is not None else None
            inputs = [xb, yb] if teacher is None else [xb, yb, teacher]
            beta = s.beta

            def objective(lg: torch.Tensor, yy: torch.Tensor, *t: torch.Tensor) -> torch.Tensor:
                return _distill(lg, yy, t[0] if t else None, beta)

            opts["shared"].zero_grad(set_to_none=True)
            clipped.append(private_gradients(shared, objective, inputs, s.clip, s.noise, q * n, gen))
            opts["shared"].step()
            steps_done += 1
    cpu_s = time.thread_time() - cpu0
    tests = _tests(workload, s, client)
    metrics: dict[str, float] = {}
    metrics["private_test_loss"], metrics["private_test_acc"] = _evaluate(main, tests)
    if private is not None and shared is not None:
        metrics["proxy_test_loss"], metrics["proxy_test_acc"] = _evaluate(shared, tests)
    if s.dp and shared is not None:
        metrics["epsilon"] = epsilon(q, s.noise, steps_done, s.delta or 1.0 / n)
        metrics["clipped_fraction"] = float(np.mean(clipped)) if clipped else 0.0
    out_state: dict[str, object] = {"steps": steps_done}
    for role, model in models.items():
        out_state[role] = model.state_dict()
        out_state[f"{role}_opt"] = opts[role].state_dict()
    data = dump_state(out_state)
    state.put(client, data)
    metrics["state_bytes_in"] = float(len(blob) if blob is not None else 0)
    metrics["state_bytes_out"] = float(len(data))
    out = FlatWeights.from_model(shared) if shared is not None and s.exchange != "none" else None
    return PeerStep(out, n, loss_sum / seen if seen else math.nan, correct / seen if seen else math.nan, metrics, cpu_s)
