"""Decentralized-mode methods: ProxyFL and the baselines of its paper, one harness.

Each method says which models a client holds and what happens to the shared one
after a round (see :class:`~flight_parsl.core.peer.PeerSettings`):

| method | private model | shared model | exchange |
|---|---|---|---|
| ``regular`` | trained on local data only | none | none |
| ``joint`` | one model on every client's data pooled (an upper bound) | none | none |
| ``fedavg`` | none | trained locally (DP) | the coordinator averages, everyone receives the mean |
| ``avgpush`` | none | trained locally (DP) | sent to the next peer of the exponential graph, the receiver averages it with its own |
| ``fml`` | DML with the shared model | DML, DP | the coordinator averages (federated mutual learning) |
| ``proxyfl`` | DML with the proxy | the proxy: DML, DP | sent to the next peer, the receiver replaces its proxy |

ProxyFL and AvgPush never build a central model: the coordinator only routes
references along :func:`~flight_parsl.topology.peers.exponential_routes`, the
exponential graph over the clients that are members now (a client that missed more
than ``round.max_missed`` rounds in a row is out of it until re-admitted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

from flight_parsl.core.peer import PeerSettings
from flight_parsl.fl.protocols import PeerStrategy
from flight_parsl.topology.peers import exponential_routes


class PeerMethod(PeerStrategy):
    """A decentralized-mode method (the :class:`~flight_parsl.fl.protocols.PeerStrategy` protocol)."""

    name = ""
    mode = "decentralized"
    private: ClassVar[bool] = True
    shared: ClassVar[bool] = True
    mutual: ClassVar[bool] = False
    exchange = "none"
    pooled: ClassVar[bool] = False

    def __init__(self, **_: Any) -> None:
        return None

    @property
    def central(self) -> bool:
        """Whether the coordinator averages the shared models (FedAvg, FML)."""
        return self.exchange == "average"

    def participants(self, members: Sequence[int]) -> list[int]:
        """The members that train this round (one for Joint, which pools everyone's data)."""
        return list(members[:1]) if self.pooled else list(members)

    def routes(self, round_idx: int, members: Sequence[int]) -> dict[int, int]:
        """Sender -> receiver of round ``round_idx``: the exponential graph over the current
        ``members`` (empty when nothing travels between peers)."""
        return exponential_routes(round_idx, members) if self.exchange in ("replace", "push") else {}

    def configure(self, client: int, base: PeerSettings) -> PeerSettings:
        """``client``'s settings: the run's, with this method's models, losses and exchange."""
        return replace(
            base,
            method=self.name,
            private_model=base.private_model if self.private else None,
            shared_model=base.shared_model if self.shared else None,
            mutual=self.mutual,
            exchange=self.exchange,
            pooled=self.pooled,
            dp=base.dp and self.shared,
        )


class Regular(PeerMethod):
    """Local training only."""

    name = "regular"
    shared = False


class Joint(PeerMethod):
    """One model trained on the pooled data of all clients."""

    name = "joint"
    shared = False
    pooled = True


class PeerFedAvg(PeerMethod):
    """FedAvg with Adam and DP-SGD on each client, the mean made by the coordinator."""

    name = "fedavg"
    private = False
    exchange = "average"


class AvgPush(PeerMethod):
    """Push-style gossip averaging over the directed exponential graph."""

    name = "avgpush"
    private = False
    exchange = "push"


class FML(PeerMethod):
    """Federated mutual learning: DML between a private model and a centrally averaged one."""

    name = "fml"
    mutual = True
    exchange = "average"


class ProxyFL(PeerMethod):
    """ProxyFL: private and proxy models, DML, DP proxies exchanged over the exponential graph."""

    name = "proxyfl"
    mutual = True
    exchange = "replace"


PEER_STRATEGIES: dict[str, type[PeerMethod]] = {
    cls.name: cls for cls in (Regular, Joint, PeerFedAvg, AvgPush, FML, ProxyFL)
}
