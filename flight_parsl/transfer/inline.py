"""The ``parsl`` transfer: weights travel inside the Parsl task itself.

The global model is pickled once per round (protocol 5, about one memory copy);
every task carries those same bytes, so Parsl's own serializer only copies a
``bytes`` object. Byte counts are the lengths of the payloads actually sent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flight_parsl.core.weights import FlatWeights
from flight_parsl.transfer.base import Resolved


@dataclass(frozen=True)
class InlineRef:
    """Pickled weights carried in a task's arguments or result."""

    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def resolve(self, cache: bool = True) -> Resolved:
        # The bytes arrived with the task: getting them costs nothing here, but they
        # did cross, once per task that carries them.
        t0 = time.perf_counter()
        weights = FlatWeights.from_bytes(self.data)
        return Resolved(weights, 0.0, time.perf_counter() - t0, len(self.data))

    def reply(self, weights: FlatWeights, recycle: bool = False) -> tuple[InlineRef, float, float]:
        t0 = time.perf_counter()
        ref = InlineRef(weights.to_bytes())
        return ref, time.perf_counter() - t0, 0.0


class InlineTransfer:
    """Pass-through transfer ("parsl"): nothing is stored outside the tasks."""

    kind = "parsl"
    store_name = None  # slots keep nothing

    def publish(self, weights: FlatWeights, round_idx: int) -> InlineRef:
        return InlineRef(weights.to_bytes())

    def collect(self, ref: InlineRef) -> FlatWeights:
        return FlatWeights.from_bytes(ref.data)

    def adopt(self, ref: InlineRef) -> None:
        return None

    def discard(self, ref: InlineRef) -> None:
        return None

    def end_round(self, round_idx: int) -> None:
        return None

    def close(self) -> None:
        return None
