"""What a decentralized-mode task needs to know about one client's local step.

:class:`PeerSettings` crosses the executor boundary (picklable, torch-free). It
says which models a client holds (a private model that is never shared, a shared
model that travels: ProxyFL's proxy, FML's copy of the global model, FedAvg's and
AvgPush's only model), how they train (deep mutual learning between the two,
DP-SGD on the shared one), what the client does with the model it receives
(``exchange``), and the optimizer (Adam).
"""

from __future__ import annotations

from dataclasses import dataclass

from flight_parsl.core.model_spec import ModelSpec

#: What a client does with the model it receives: nothing (``none``), replace its
#: shared model with it (``replace``: ProxyFL; ``average``: the mean of FedAvg / FML),
#: or average it with its own (``push``: AvgPush).
EXCHANGES = ("none", "replace", "push", "average")


@dataclass(frozen=True)
class PeerParams:
    """A decentralized-mode method's hyperparameters (the config's ``peer`` section adds
    ``private_models``; :class:`PeerSettings` adds what one client holds). Defaults are ProxyFL's.

    Attributes:
        alpha: the private model's distillation weight: (1 - alpha) CE + alpha KL.
        beta: the shared model's distillation weight.
        epochs, batch_size, lr: local epochs, expected batch size and Adam's learning rate.
        dp: DP-SGD on the shared model (per-example clipping to ``clip``, noise
            multiplier ``noise``, Poisson batches); ``delta`` 0 means 1 / n.
        test_samples: samples of the client's own test set (drawn like its training data).
    """

    alpha: float = 0.5
    beta: float = 0.5
    lr: float = 0.001
    batch_size: int = 250
    epochs: int = 1
    dp: bool = True
    clip: float = 1.0
    noise: float = 1.0
    delta: float = 0.0
    test_samples: int = 200


@dataclass(frozen=True, kw_only=True)
class PeerSettings(PeerParams):
    """One client's local step in one round of a decentralized-mode method: the method's
    :class:`PeerParams` and what the client holds.

    Attributes:
        method: the strategy's name (for messages and records).
        private_model: the client's private model, or None when it has none.
        shared_model: the shared model (one architecture for all), or None.
        mutual: deep mutual learning between the private and the shared model.
        exchange: one of :data:`EXCHANGES`.
        pooled: train on every client's data at once (Joint, an upper bound).
    """

    method: str
    private_model: ModelSpec | None
    shared_model: ModelSpec | None
    mutual: bool = False
    exchange: str = "none"
    pooled: bool = False
    dp: bool = False

    @property
    def evaluated(self) -> str:
        """The model whose accuracy counts as the client's: the private one when it has one."""
        return "private" if self.private_model is not None else "shared"
