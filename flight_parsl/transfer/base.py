"""The transfer protocol: how model weights travel between coordinator and workers.

The coordinator :meth:`Transfer.publish` es the global model once per round and
hands the same reference to every task. A worker resolves it, and packages its
result with :meth:`Ref.reply`, which uses the same channel. The coordinator then
:meth:`Transfer.collect` s each result and calls :meth:`Transfer.end_round` when
the round no longer needs its references.
"""

from __future__ import annotations

from typing import Protocol

from flight_parsl.core.weights import FlatWeights


class Ref(Protocol):
    """A reference to weights that a task carries; pickled to and from workers."""

    @property
    def nbytes(self) -> int:
        """Payload bytes this reference moves through its channel."""

    def resolve(self) -> tuple[FlatWeights, float, float]:
        """Return the weights and the seconds spent getting and deserializing them."""

    def reply(self, weights: FlatWeights) -> tuple[Ref, float, float]:
        """Package ``weights`` for the trip back, through the same channel.

        Returns the new reference and the seconds spent serializing and putting.
        """


class Transfer(Protocol):
    """The coordinator's side of a channel."""

    kind: str

    def publish(self, weights: FlatWeights, round_idx: int) -> Ref:
        """Make the round's global model available to every task of the round."""

    def collect(self, ref: Ref) -> FlatWeights:
        """Fetch one worker's result (and :meth:`adopt` it)."""

    def adopt(self, ref: Ref) -> None:
        """Take charge of a reference a worker created, so its round's end releases it."""

    def discard(self, ref: Ref) -> None:
        """Release a result that came back after its round closed."""

    def end_round(self, round_idx: int) -> None:
        """Release everything the round stored."""

    def close(self) -> None:
        """Release the channel."""
