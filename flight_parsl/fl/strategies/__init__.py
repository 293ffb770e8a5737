"""The strategy registry: names accepted by ``--strategy`` and which engine mode runs them."""

from __future__ import annotations

import inspect
from typing import Any

from flight_parsl.core.errors import unknown_name
from flight_parsl.fl.strategies.fedasync import FedAsync, FedBuff
from flight_parsl.fl.strategies.fedavg import FedAvg, FedMedian, FedProx, FedSGD
from flight_parsl.fl.strategies.proxyfl import PEER_STRATEGIES

SYNC_STRATEGIES: dict[str, type] = {cls.name: cls for cls in (FedAvg, FedSGD, FedProx, FedMedian)}
ASYNC_STRATEGIES: dict[str, type] = {cls.name: cls for cls in (FedAsync, FedBuff)}
STRATEGIES: dict[str, type] = {**SYNC_STRATEGIES, **ASYNC_STRATEGIES}


def strategy_names() -> list[str]:
    """Names accepted by ``--strategy``."""
    return sorted(set(STRATEGIES) | set(PEER_STRATEGIES))


def strategy_mode(name: str) -> str:
    """``sync``, ``async`` or ``decentralized``: the engine mode that runs strategy ``name``
    (``fedavg`` also runs in decentralized mode, see :func:`strategy_modes`)."""
    if name in ASYNC_STRATEGIES:
        return "async"
    return "decentralized" if name in PEER_STRATEGIES and name not in STRATEGIES else "sync"


def strategy_modes(name: str) -> tuple[str, ...]:
    """Every engine mode that runs strategy ``name``."""
    modes = (strategy_mode(name),)
    return modes + ("decentralized",) if name in PEER_STRATEGIES and "decentralized" not in modes else modes


def make_strategy(name: str, mode: str = "", **params: Any) -> Any:
    """Build a strategy by name (``mode="decentralized"``: a peer method); parameters it does not
    take are ignored."""
    if mode == "decentralized" and name in PEER_STRATEGIES:
        return PEER_STRATEGIES[name]()
    if name not in STRATEGIES:
        raise unknown_name("strategy", name, strategy_names())
    cls = STRATEGIES[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in params.items() if k in accepted})


__all__ = [
    "ASYNC_STRATEGIES", "PEER_STRATEGIES", "strategy_modes", "FedAsync", "FedAvg", "FedBuff", "FedMedian", "FedProx", "FedSGD",
    "STRATEGIES", "SYNC_STRATEGIES", "make_strategy", "strategy_mode", "strategy_names",
]
