"""Differential privacy on a slot: DP-SGD gradients and a Renyi-DP accountant.

:func:`private_gradients` is DP-SGD's gradient (Abadi et al. 2016): per-example
gradients (``torch.func``: ``vmap`` over ``grad``), each clipped to L2 norm
``clip``, summed, plus Gaussian noise of standard deviation ``noise * clip``,
divided by the expected batch size. Batches are Poisson samples (each example in
with probability ``q``), which is what the accountant assumes.

The accountant is the RDP analysis of the sampled Gaussian mechanism (Mironov,
Talwar and Zhang 2019): :func:`compute_rdp` per order, then the conversion to
(epsilon, delta) of Balle et al. 2020 (:func:`epsilon`, the one Opacus uses) or
the classic ``rdp - log(delta) / (alpha - 1)`` (``improved=False``). When Opacus
(the ``[dp]`` extra) is installed, :func:`epsilon` uses its RDP analysis and the
built-in one otherwise (one step's RDP, cached per process, times the steps); a test checks that they agree and that the
built-in one reproduces values published with TF-Privacy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch loads where training runs, never on import
    import torch

#: Opacus's default RDP orders.
DEFAULT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


# --- accountant -------------------------------------------------------------------


def _log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b))."""
    lo, hi = min(a, b), max(a, b)
    if lo == -math.inf:
        return hi
    return hi + math.log1p(math.exp(lo - hi))


def _log_sub(a: float, b: float) -> float:
    """log(exp(a) - exp(b)), for a >= b."""
    if b == -math.inf:
        return a
    if a < b:
        raise ValueError("the result of the subtraction is negative")
    if a == b:
        return -math.inf
    return a + math.log1p(-math.exp(b - a))


def _log_erfc(x: float) -> float:
    """log(erfc(x)), stable for large x."""
    from scipy.special import log_ndtr

    return math.log(2.0) + float(log_ndtr(-x * math.sqrt(2.0)))


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    """log(A_alpha) for an integer order: a binomial expansion."""
    log_a = -math.inf
    for i in range(alpha + 1):
        coef = math.log(math.comb(alpha, i)) + i * math.log(q) + (alpha - i) * math.log(1 - q)
        log_a = _log_add(log_a, coef + (i * i - i) / (2 * sigma**2))
    return log_a


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    """log(A_alpha) for a fractional order: two converging series."""
    from scipy.special import binom

    log_a0 = log_a1 = -math.inf
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    i = 0
    while True:
        coef = float(binom(alpha, i))
        log_coef = math.log(abs(coef))
        j = alpha - i
        log_t0 = log_coef + i * math.log(q) + j * math.log(1 - q)
        log_t1 = log_coef + j * math.log(q) + i * math.log(1 - q)
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma**2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma**2) + log_e1
        if coef > 0:
            log_a0, log_a1 = _log_add(log_a0, log_s0), _log_add(log_a1, log_s1)
        else:
            log_a0, log_a1 = _log_sub(log_a0, log_s0), _log_sub(log_a1, log_s1)
        i += 1
        if max(log_s0, log_s1) < -30:
            return _log_add(log_a0, log_a1)


def _rdp_one(q: float, sigma: float, alpha: float) -> float:
    if q == 0:
        return 0.0
    if sigma == 0 or math.isinf(alpha):
        return math.inf
    if q == 1.0:
        return alpha / (2 * sigma**2)
    log_a = _log_a_int(q, sigma, int(alpha)) if float(alpha).is_integer() else _log_a_frac(q, sigma, alpha)
    return log_a / (alpha - 1)


def compute_rdp(q: float, sigma: float, steps: int, orders: Sequence[float] | float) -> np.ndarray | float:
    """RDP of ``steps`` compositions of the sampled Gaussian mechanism, at each order.

    Args:
        q: the sampling rate (expected batch / dataset size).
        sigma: the noise multiplier (noise std over the clipping norm).
        steps: how many noisy steps.
        orders: Renyi orders alpha > 1 (a scalar gives a scalar).
    """
    if np.isscalar(orders):
        return _rdp_one(q, sigma, float(orders)) * steps  # type: ignore[arg-type]
    return np.array([_rdp_one(q, sigma, float(a)) for a in orders]) * steps  # type: ignore[union-attr]


def privacy_spent(
    orders: Sequence[float], rdp: Sequence[float], delta: float, improved: bool = True
) -> tuple[float, float]:
    """(epsilon, best order) for ``delta`` from RDP values at ``orders``.

    ``improved``: Balle et al. 2020's conversion (Opacus), else the classic one.
    """
    a, r = np.asarray(orders, dtype=float), np.asarray(rdp, dtype=float)
    if improved:
        eps = r - (math.log(delta) + np.log(a)) / (a - 1) + np.log((a - 1) / a)
    else:
        eps = r - math.log(delta) / (a - 1)
    if np.isnan(eps).all():
        return math.inf, math.nan
    best = int(np.nanargmin(eps))
    return float(eps[best]), float(a[best])


def builtin_epsilon(q: float, sigma: float, steps: int, delta: float, orders: Sequence[float] = DEFAULT_ORDERS) -> float:
    """Epsilon after ``steps`` DP-SGD steps, from the built-in analysis."""
    if steps == 0:
        return 0.0
    return privacy_spent(orders, compute_rdp(q, sigma, steps, orders), delta)[0]  # type: ignore[arg-type]


def opacus_epsilon(q: float, sigma: float, steps: int, delta: float) -> float | None:
    """Epsilon from Opacus's RDP accountant, or None when Opacus is not installed."""
    try:
        from opacus.accountants import RDPAccountant
    except ImportError:
        return None
    if steps == 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]
    return float(accountant.get_epsilon(delta))


@lru_cache(maxsize=64)
def rdp_per_step(q: float, sigma: float) -> tuple[float, ...]:
    """RDP of one step at :data:`DEFAULT_ORDERS`, from Opacus when installed, else built in.

    Cached per process: RDP composes linearly, so ``steps`` steps cost ``steps`` times this,
    and a slot's clients share one computation (a fractional order's series is slow).
    """
    try:
        from opacus.accountants.analysis.rdp import compute_rdp as opacus_rdp
    except ImportError:
        return tuple(compute_rdp(q, sigma, 1, DEFAULT_ORDERS))  # type: ignore[arg-type]
    return tuple(float(v) for v in opacus_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(DEFAULT_ORDERS)))


def epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """Epsilon after ``steps`` DP-SGD steps at rate ``q``, noise ``sigma``: Opacus's RDP analysis
    when installed, the built-in one (same orders, same conversion) otherwise."""
    if steps == 0:
        return 0.0
    return privacy_spent(DEFAULT_ORDERS, [steps * r for r in rdp_per_step(q, sigma)], delta)[0]


# --- DP-SGD -----------------------------------------------------------------------


def poisson_batches(n: int, q: float, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``steps`` Poisson samples of ``range(n)``: each index in each batch with probability ``q``."""
    return [np.flatnonzero(rng.random(n) < q) for _ in range(steps)]


def private_gradients(
    model: "torch.nn.Module",
    loss: Callable[..., "torch.Tensor"],
    inputs: Sequence["torch.Tensor"],
    clip: float,
    noise: float,
    expected_batch: float,
    generator: "torch.Generator | None" = None,
) -> float:
    """Set ``p.grad`` of every parameter to DP-SGD's noisy clipped mean gradient.

    Args:
        model: the model; its parameters receive ``.grad``.
        loss: ``loss(logits, *per_example_inputs[1:])`` for a batch of one example.
        inputs: batched tensors; ``inputs[0]`` goes into the model, the others
            (labels, teacher probabilities, ...) into ``loss``.
        clip: the per-example L2 norm bound C.
        noise: the noise multiplier (std = noise * C).
        expected_batch: the divisor, ``q * n`` for a Poisson batch.
        generator: where the noise comes from (seeded for reproducible runs).

    Returns:
        The fraction of examples whose gradient was clipped.
    """
    import torch
    from torch.func import functional_call, grad, vmap

    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def one(p: dict[str, torch.Tensor], x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return loss(logits, *(r.unsqueeze(0) for r in rest))

    batch = len(inputs[0])
    if batch:
        in_dims = (None,) + (0,) * len(inputs)
        per = vmap(grad(one), in_dims=in_dims, randomness="different")(params, *inputs)
        norms = torch.sqrt(sum(per[n].reshape(batch, -1).pow(2).sum(1) for n in names))
        factor = (clip / (norms + 1e-6)).clamp(max=1.0)
        clipped = float((norms > clip).float().mean())
    else:
        per, factor, clipped = {}, None, 0.0
    for n, p in model.named_parameters():
        total = torch.einsum("b,b...->...", factor, per[n]) if batch else torch.zeros_like(p)
        total = total + torch.normal(0.0, noise * clip, size=p.shape, generator=generator)
        p.grad = (total / expected_batch).to(p.dtype)
    return clipped
