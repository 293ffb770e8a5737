"""The transfer protocol: how model weights travel between coordinator and workers.

The coordinator :meth:`Transfer.publish` es the global model once per round and
hands the same reference to every task. A worker resolves it, and packages its
result with :meth:`Ref.reply`, which uses the same channel. The coordinator then
:meth:`Transfer.collect` s each result and calls :meth:`Transfer.end_round` when
the round no longer needs its references.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, TypeVar

from flight_parsl.core.weights import FlatWeights


class Resolved(NamedTuple):
    """What :meth:`Ref.resolve` returns: the weights, its timings, and the bytes that crossed.

    ``fetched`` counts the payload bytes that reached this process for this call:
    the reference's ``nbytes`` when they came through the channel (or with the task
    itself), 0 when the process's store cache already held them.
    """

    weights: FlatWeights
    get_s: float
    deserialize_s: float
    fetched: int


class Ref(Protocol):
    """A reference to weights that a task carries; pickled to and from workers."""

    @property
    def nbytes(self) -> int:
        """Payload bytes this reference moves through its channel."""

    def resolve(self, cache: bool = True) -> Resolved:
        """Return the weights, the seconds spent getting and deserializing them, and the
        bytes fetched. ``cache=False``: a one-time read the process's store does not keep
        (an aggregator's children), so it holds no model after the caller drops it."""

    def reply(self, weights: FlatWeights, recycle: bool = False) -> tuple[Ref, float, float]:
        """Package ``weights`` for the trip back, through the same channel.

        ``recycle``: the payload is a result that its reader maps once, folds and lets go
        before its key is evicted (a train task's result for the coordinator), so a store may
        reuse its storage for a later result once the key is gone (the ``file`` channel does).
        Never for a model that others cache (a relay's or a peer's), nor for a child of an
        aggregator: a late aggregate task may still read it after its round's keys went.

        Returns the new reference and the seconds spent serializing and putting.
        """


#: The reference type of one channel: a transfer takes back only the references it made.
RefT = TypeVar("RefT", bound=Ref)


class Transfer(Protocol[RefT]):
    """The coordinator's side of a channel (``Transfer[InlineRef]``, ``Transfer[ProxyRef]``;
    a bare ``Transfer`` is any channel)."""

    kind: str

    @property
    def store_name(self) -> str | None:
        """The name under which slots keep this channel's store (None: they keep nothing);
        :mod:`flight_parsl.worker.release` lets go of it when a run ends."""

    def publish(self, weights: FlatWeights, round_idx: int) -> RefT:
        """Make the round's global model available to every task of the round."""

    def collect(self, ref: RefT) -> FlatWeights:
        """Fetch one worker's result (and :meth:`adopt` it)."""

    def adopt(self, ref: RefT) -> None:
        """Take charge of a reference a worker created, so its round's end releases it."""

    def discard(self, ref: RefT) -> None:
        """Release a result now: one folded at the root (nothing reads it again), or one
        that came back after its round closed."""

    def end_round(self, round_idx: int) -> None:
        """Release everything the round stored."""

    def close(self) -> None:
        """Release the channel."""
