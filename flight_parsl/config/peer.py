"""The ``peer`` config section: decentralized mode (``--mode decentralized``).

Defaults are ProxyFL's settings: Adam with lr 0.001, expected batch 250, one
local epoch per round, DML weights 0.5, DP-SGD on the shared model with clipping
norm 1.0, noise multiplier 1.0 and delta 1 / n. ``train.*`` keys (SGD) do not
apply in this mode; ``--model`` is the shared (proxy) model and
``peer.private_models`` a comma list of private models, cycled over the clients
(empty: the same as ``--model``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flight_parsl.core.errors import ConfigError


@dataclass
class PeerConfig:
    """Decentralized-mode settings (see the module docstring)."""

    private_models: str = ""
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


def private_model_names(peer: PeerConfig, default: str) -> list[str]:
    """The private models' names, in client order (cycled)."""
    names = [n.strip() for n in peer.private_models.split(",") if n.strip()]
    return names or [default]


def validate_peer(cfg: Any) -> None:
    """Check the ``peer`` section and what decentralized mode needs of the rest of the config."""
    from flight_parsl.core.errors import unknown_name
    from flight_parsl.core.model_spec import model_names

    p = cfg.peer
    for key in ("alpha", "beta"):
        if not 0 <= getattr(p, key) <= 1:
            raise ConfigError(f"config key 'peer.{key}' must be in [0, 1], got {getattr(p, key)!r}")
    for key in ("lr", "batch_size", "epochs", "clip", "test_samples"):
        if not getattr(p, key) > 0:
            raise ConfigError(f"config key 'peer.{key}' must be > 0, got {getattr(p, key)!r}")
    if p.noise < 0:
        raise ConfigError(f"config key 'peer.noise' must be >= 0, got {p.noise!r}")
    if not 0 <= p.delta < 1:
        raise ConfigError(f"config key 'peer.delta' must be in [0, 1) (0: 1 / samples), got {p.delta!r}")
    for name in private_model_names(p, cfg.model.name):
        if name not in model_names():
            raise unknown_name("model", name, model_names())
    if cfg.mode != "decentralized":
        return
    if cfg.topology != "flat":
        raise ConfigError(f"config key 'topology': mode 'decentralized' uses its own peer graph, got {cfg.topology!r}")
    if cfg.train.mode != "local":
        raise ConfigError("config key 'train.mode': mode 'decentralized' trains (train.mode=local)")
    if cfg.workers < 2:
        raise ConfigError(f"config key 'workers': mode 'decentralized' needs at least 2 clients, got {cfg.workers}")
