"""Streaming aggregation: fold results in one at a time, in O(model) memory.

Linear aggregators (a weighted mean) can be folded anywhere: in the slot over the
clients of a task, in aggregator tasks over their children, and at the coordinator
over partials, with the same result as one flat fold: a partial is its mean and its
total weight. Non-linear ones (a coordinate-wise median) need every client's result.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from flight_parsl.core.weights import FlatWeights, Layout


class Aggregator(Protocol):
    """Folds results in one at a time."""

    def add(self, weights: FlatWeights, weight: float) -> None:
        """Fold in one result (a client's weights, or a partial) with its weight."""

    def result(self) -> FlatWeights:
        """The aggregate of everything added."""

    @property
    def count(self) -> int:
        """How many results were added."""

    @property
    def total(self) -> float:
        """Sum of the weights added: the weight of :meth:`result` when folded again."""


#: Elements per step of a scaled add: the float64 scratch is 8 MiB, not a model.
CHUNK = 1 << 20


def _check(layout: Layout, weights: FlatWeights, weight: float) -> None:
    if weights.layout != layout:
        raise ValueError("result weights do not match the global model's layout")
    if weight <= 0:
        raise ValueError(f"weight must be > 0, got {weight}")


class WeightedMean:
    """Streaming weighted mean of flat buffers (float64 accumulator).

    It holds the accumulator (two float32 models) and nothing else model-sized: the
    template's layout, not its buffer, and a scaled add goes through a small scratch.
    """

    def __init__(self, template: FlatWeights) -> None:
        self._layout = template.layout
        self._acc = np.zeros(template.layout.size, dtype=np.float64)
        self._scratch: np.ndarray | None = None
        self._total = 0.0
        self._count = 0

    def add(self, weights: FlatWeights, weight: float) -> None:
        _check(self._layout, weights, weight)
        acc, src = self._acc, weights.buffer
        if weight == 1:  # cast-and-add in place: no model-sized temporary
            np.add(acc, src, out=acc)
        else:
            if self._scratch is None:
                self._scratch = np.empty(min(CHUNK, acc.size), dtype=np.float64)
            for start in range(0, acc.size, CHUNK):
                stop = min(start + CHUNK, acc.size)
                scratch = self._scratch[: stop - start]
                np.multiply(src[start:stop], weight, out=scratch)
                np.add(acc[start:stop], scratch, out=acc[start:stop])
        self._total += weight
        self._count += 1

    @property
    def total(self) -> float:
        return self._total

    @property
    def count(self) -> int:
        return self._count

    def result(self) -> FlatWeights:
        if self._count == 0:
            raise ValueError("no result to aggregate")
        out = np.empty(self._acc.shape, dtype=np.float32)
        np.divide(self._acc, self._total, out=out, casting="same_kind")  # no float64 temporary
        return FlatWeights(out, self._layout)


class CoordinateMedian:
    """Coordinate-wise median of the results (weights ignored): robust, not linear.

    Holds every result (O(clients x model)), so tasks must return per-client results.
    """

    def __init__(self, template: FlatWeights) -> None:
        self._layout = template.layout
        self._rows: list[np.ndarray] = []
        self._total = 0.0

    def add(self, weights: FlatWeights, weight: float) -> None:
        _check(self._layout, weights, weight)
        self._rows.append(np.array(weights.buffer, dtype=np.float32, copy=True))
        self._total += weight

    @property
    def total(self) -> float:
        return self._total

    @property
    def count(self) -> int:
        return len(self._rows)

    def result(self) -> FlatWeights:
        if not self._rows:
            raise ValueError("no result to aggregate")
        median = np.median(np.stack(self._rows), axis=0).astype(np.float32, copy=False)
        return FlatWeights(np.ascontiguousarray(median), self._layout)


class Offset:
    """Folds updates (deltas from ``base``) with ``inner``; its result is ``base`` plus the
    folded update (a weighted mean of deltas, for a linear strategy: base + mean delta).

    The coordinator folds with it when tasks send encoded updates
    (:mod:`flight_parsl.transfer.codecs`), so the strategy's ``aggregate`` sees a model.
    """

    def __init__(self, inner: Aggregator, base: FlatWeights) -> None:
        self._inner = inner
        self._base = base

    def add(self, weights: FlatWeights, weight: float) -> None:
        self._inner.add(weights, weight)

    @property
    def total(self) -> float:
        return self._inner.total

    @property
    def count(self) -> int:
        return self._inner.count

    def result(self) -> FlatWeights:
        update = self._inner.result()
        out = np.add(self._base.buffer, update.buffer, dtype=np.float32)
        return FlatWeights(out, self._base.layout)
