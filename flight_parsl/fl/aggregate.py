"""Streaming aggregation: fold results in one at a time, in O(model) memory.

Linear aggregators (a weighted mean) can be folded anywhere: in the slot over the
clients of a task, in aggregator tasks over their children, and at the coordinator
over partials, with the same result as one flat fold: a partial is its mean and its
total weight. Non-linear ones (a coordinate-wise median) need every client's result.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from flight_parsl.core.weights import FlatWeights, Layout


class Aggregator(Protocol):
    """Folds results in one at a time."""

    def add(self, weights: FlatWeights, weight: float) -> None:
        """Fold in one result (a client's weights, or a partial) with its weight.

        ``weights.buffer`` may map a store's file that is released, and reused for a later
        result, as soon as ``add`` returns: keep a copy of anything kept, never the buffer."""

    def result(self) -> FlatWeights:
        """The aggregate of everything added."""

    @property
    def count(self) -> int:
        """How many results were added."""

    @property
    def total(self) -> float:
        """Sum of the weights added: the weight of :meth:`result` when folded again."""


#: Elements per step of a scaled add: the scratch is 8 MiB at most, not a model.
CHUNK = 1 << 20
#: Results a :class:`WeightedMean` sums in float32 before it adds them into its float64 sum.
BLOCK = 16


def _check(layout: Layout, got: Layout, weight: float) -> None:
    if got != layout:
        raise ValueError("result weights do not match the global model's layout")
    if weight <= 0:
        raise ValueError(f"weight must be > 0, got {weight}")


class WeightedMean:
    """Streaming weighted mean of flat buffers: float32 blocks summed into a float64 sum.

    Results are summed, weighted, into a float32 block of up to ``block`` of them, and each
    full block is added into a float64 sum. A fold then reads and writes float32 only (a
    float64 add of a float32 model moves about three times the bytes: for ResNet-18's
    47 MB some 11 ms against 3.5 ms, and a coordinator that folds one result per client
    does little else), while the float64 sum still carries a mean over thousands of
    results. The error is that of a float32 sum of ``block`` terms: a few float32 ulps of
    the mean at most (``block=16``), the float32 result's own precision class.
    ``block=1`` adds every result straight into float64.

    Memory: the block (one float32 model) alone while at most ``block`` results came in
    (an aggregator task's children, a slot's clients), the float64 sum (two more) from the
    first full block on; nothing else model-sized: the template's layout, not its buffer,
    and a scaled add goes through a small scratch.
    """

    def __init__(self, template: FlatWeights, block: int = BLOCK) -> None:
        self._layout = template.layout
        self._size = template.layout.size
        self._block_size = max(1, block)
        self._acc: np.ndarray | None = None  # the float64 sum (from the first full block on)
        self._block: np.ndarray | None = None  # the float32 block
        self._in_block = 0
        self._scratch: np.ndarray | None = None
        self._total = 0.0
        self._count = 0

    def add(self, weights: FlatWeights, weight: float) -> None:
        _check(self._layout, weights.layout, weight)
        self.add_part(0, weights.buffer, weight)
        self.added(weight)

    def expect(self, layout: Layout, weight: float) -> None:
        """Raise ValueError unless a result of ``layout`` and ``weight`` can be folded in."""
        _check(self._layout, layout, weight)

    def add_part(self, start: int, values: np.ndarray, weight: float) -> None:
        """Fold ``values``, the elements ``start`` on of one result, into the sum with ``weight``:
        :meth:`add` a piece at a time (a result read a slice at a time,
        :meth:`~flight_parsl.transfer.proxy.ProxyTransfer.collect_fold`). Once every piece of the
        result is in (each exactly once), :meth:`added` counts it; nothing else in between."""
        into = self._target()[start : start + values.size]
        if weight == 1:  # add in place (a cast-and-add into float64): no model-sized temporary
            np.add(into, values, out=into)
            return
        if self._scratch is None or self._scratch.dtype != into.dtype:
            self._scratch = np.empty(min(CHUNK, self._size), dtype=into.dtype)
        for s in range(0, into.size, CHUNK):
            e = min(s + CHUNK, into.size)
            scratch = self._scratch[: e - s]
            np.multiply(values[s:e], weight, out=scratch)
            np.add(into[s:e], scratch, out=into[s:e])

    def _target(self) -> np.ndarray:
        """The buffer a fold adds into: the float32 block, or the float64 sum with ``block=1``."""
        if self._block_size == 1:
            if self._acc is None:
                self._acc = np.zeros(self._size, dtype=np.float64)
            return self._acc
        if self._block is None:
            self._block = np.zeros(self._size, dtype=np.float32)
        return self._block

    def added(self, weight: float) -> None:
        """Count one result whose every piece :meth:`add_part` folded in."""
        self._total += weight
        self._count += 1
        if self._block_size > 1:
            self._in_block += 1
            if self._in_block == self._block_size:
                self._flush()

    def reserve(self) -> None:
        """Allocate the buffer the first :meth:`add` folds into now, and touch its pages, so that
        the fold does not fault them in (the same zeros: the result is unchanged)."""
        if self._count:
            return
        if self._block_size == 1:
            if self._acc is None:
                self._acc = np.empty(self._size, dtype=np.float64)
                self._acc.fill(0.0)
        elif self._block is None:
            self._block = np.empty(self._size, dtype=np.float32)
            self._block.fill(0.0)

    def _flush(self) -> None:
        """Add the float32 block into the float64 sum and clear it."""
        if self._block is None or not self._in_block:
            return
        if self._acc is None:
            self._acc = np.zeros(self._size, dtype=np.float64)
        np.add(self._acc, self._block, out=self._acc)
        self._block.fill(0.0)
        self._in_block = 0

    @property
    def total(self) -> float:
        return self._total

    @property
    def count(self) -> int:
        return self._count

    def result(self) -> FlatWeights:
        if self._count == 0:
            raise ValueError("no result to aggregate")
        if self._acc is None:  # one block, not full: divide it (in float64, as the sum would be)
            summed = self._block
        else:
            self._flush()
            summed = self._acc
        assert summed is not None
        out = np.empty(self._size, dtype=np.float32)
        # computed in float64, written as float32: no model-sized temporary
        np.divide(summed, self._total, out=out, dtype=np.float64, casting="same_kind")
        return FlatWeights(out, self._layout)

    def finish(self, weights: FlatWeights, weight: float, step: int = CHUNK) -> Iterator[np.ndarray]:
        """:meth:`add` of a last result, then :meth:`result`, done a slice at a time: yields the
        result's float32 buffer as consecutive slices of ``step`` elements, each folded, summed
        and divided only when it is asked for, so that a caller can send one slice while the next
        is made (a streamed put). Every step is element by element, so the slices are the very
        bytes :meth:`add` and :meth:`result` give. A yielded slice is a scratch buffer that the
        next one overwrites: send (or copy) it before asking for the next. :attr:`total` and
        :attr:`count` include ``weights`` as soon as this is called; the accumulator is spent
        afterwards (add nothing more)."""
        _check(self._layout, weights.layout, weight)
        into = self._target()
        self._total += weight
        self._count += 1
        flush = False
        if self._block_size > 1:
            self._in_block += 1
            flush = self._in_block == self._block_size or self._acc is not None  # the block goes into the sum
        out = np.empty(min(step, self._size), dtype=np.float32)
        return self._finish(weights.buffer, weight, into, flush, self._total, out, step)

    def _finish(self, src: np.ndarray, weight: float, into: np.ndarray, flush: bool, total: float,
                out: np.ndarray, step: int) -> Iterator[np.ndarray]:
        for start in range(0, self._size, step):
            stop = min(start + step, self._size)
            self.add_part(start, src[start:stop], weight)
            summed = into[start:stop]
            if flush:  # as _flush: the block's slice into the float64 sum
                if self._acc is None:
                    self._acc = np.zeros(self._size, dtype=np.float64)
                np.add(self._acc[start:stop], summed, out=self._acc[start:stop])
                summed = self._acc[start:stop]
            dst = out[: stop - start]
            np.divide(summed, total, out=dst, dtype=np.float64, casting="same_kind")
            yield dst


class CoordinateMedian:
    """Coordinate-wise median of the results (weights ignored): robust, not linear.

    Holds every result (O(clients x model)), so tasks must return per-client results.
    """

    def __init__(self, template: FlatWeights) -> None:
        self._layout = template.layout
        self._rows: list[np.ndarray] = []
        self._total = 0.0

    def add(self, weights: FlatWeights, weight: float) -> None:
        _check(self._layout, weights.layout, weight)
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

    def reserve(self) -> None:
        """The inner aggregator's :meth:`WeightedMean.reserve`, where it has one."""
        reserve = getattr(self._inner, "reserve", None)
        if reserve is not None:
            reserve()

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
