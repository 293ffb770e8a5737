"""The strategy registry: names accepted by ``--strategy`` and which engine mode runs them."""

from __future__ import annotations

import inspect
from typing import Any, Literal, overload

from flight_parsl.core.errors import ConfigError, unknown_name
from flight_parsl.fl.protocols import AsyncStrategy, PeerStrategy, Strategy, SyncStrategy
from flight_parsl.fl.strategies.fedasync import FedAsync, FedBuff
from flight_parsl.fl.strategies.fedavg import FedAvg, FedMedian, FedProx, FedSGD
from flight_parsl.fl.strategies.proxyfl import PEER_STRATEGIES

SYNC_STRATEGIES: dict[str, type[SyncStrategy]] = {cls.name: cls for cls in (FedAvg, FedSGD, FedProx, FedMedian)}
ASYNC_STRATEGIES: dict[str, type[AsyncStrategy]] = {cls.name: cls for cls in (FedAsync, FedBuff)}
STRATEGIES: dict[str, type[SyncStrategy] | type[AsyncStrategy]] = {**SYNC_STRATEGIES, **ASYNC_STRATEGIES}


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


@overload
def make_strategy(name: str, mode: Literal["sync"], **params: Any) -> SyncStrategy: ...
@overload
def make_strategy(name: str, mode: Literal["async"], **params: Any) -> AsyncStrategy: ...
@overload
def make_strategy(name: str, mode: Literal["decentralized"], **params: Any) -> PeerStrategy: ...
@overload
def make_strategy(name: str, mode: str = "", **params: Any) -> Strategy: ...
def make_strategy(name: str, mode: str = "", **params: Any) -> Strategy:
    """Build a strategy by name; parameters it does not take are ignored.

    ``mode`` (``sync``, ``async``, ``decentralized``; empty: the name's own mode) says which
    protocol the result implements: a name that no strategy of that mode has is a ConfigError.
    """
    if mode == "decentralized" and name in PEER_STRATEGIES:
        return PEER_STRATEGIES[name]()
    if name not in STRATEGIES:
        raise unknown_name("strategy", name, strategy_names())
    cls = STRATEGIES[name]
    if mode and cls.mode != mode:
        raise ConfigError(f"strategy {name!r} runs in mode {cls.mode!r}, not {mode!r}")
    accepted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in params.items() if k in accepted})


__all__ = [
    "ASYNC_STRATEGIES", "AsyncStrategy", "PEER_STRATEGIES", "PeerStrategy", "Strategy", "SyncStrategy",
    "strategy_modes", "FedAsync", "FedAvg", "FedBuff", "FedMedian", "FedProx", "FedSGD",
    "STRATEGIES", "SYNC_STRATEGIES", "make_strategy", "strategy_mode", "strategy_names",
]
