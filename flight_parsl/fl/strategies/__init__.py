"""The strategy registry: names accepted by ``--strategy`` and which engine mode runs them."""

from __future__ import annotations

import inspect
from typing import Any

from flight_parsl.core.errors import unknown_name
from flight_parsl.fl.strategies.fedasync import FedAsync, FedBuff
from flight_parsl.fl.strategies.fedavg import FedAvg, FedMedian, FedProx, FedSGD

SYNC_STRATEGIES: dict[str, type] = {cls.name: cls for cls in (FedAvg, FedSGD, FedProx, FedMedian)}
ASYNC_STRATEGIES: dict[str, type] = {cls.name: cls for cls in (FedAsync, FedBuff)}
STRATEGIES: dict[str, type] = {**SYNC_STRATEGIES, **ASYNC_STRATEGIES}


def strategy_names() -> list[str]:
    """Names accepted by ``--strategy``."""
    return sorted(STRATEGIES)


def strategy_mode(name: str) -> str:
    """``sync`` or ``async``: the engine mode that runs strategy ``name``."""
    return "async" if name in ASYNC_STRATEGIES else "sync"


def make_strategy(name: str, **params: Any) -> Any:
    """Build a strategy by name; parameters it does not take are ignored."""
    if name not in STRATEGIES:
        raise unknown_name("strategy", name, strategy_names())
    cls = STRATEGIES[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in params.items() if k in accepted})


__all__ = [
    "ASYNC_STRATEGIES", "FedAsync", "FedAvg", "FedBuff", "FedMedian", "FedProx", "FedSGD",
    "STRATEGIES", "SYNC_STRATEGIES", "make_strategy", "strategy_mode", "strategy_names",
]
