"""The ``parsl`` transfer: weights travel inside the Parsl task itself.

The global model is pickled once per round (protocol 5, about one memory copy);
every task carries those same bytes, so Parsl's own serializer only copies a
``bytes`` object. Byte counts are the lengths of the payloads actually sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from flight_parsl.weights import FlatWeights


@dataclass(frozen=True)
class InlineRef:
    """Pickled weights carried in a task's arguments or result."""

    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def resolve(self) -> FlatWeights:
        return FlatWeights.from_bytes(self.data)

    def reply(self, weights: FlatWeights) -> InlineRef:
        return InlineRef(weights.to_bytes())


class InlineTransfer:
    """Pass-through transfer ("parsl"): nothing is stored outside the tasks."""

    kind = "parsl"

    def publish(self, weights: FlatWeights, round_idx: int) -> InlineRef:
        return InlineRef(weights.to_bytes())

    def collect(self, ref: InlineRef) -> FlatWeights:
        return ref.resolve()

    def end_round(self, round_idx: int) -> None:
        return None

    def close(self) -> None:
        return None
