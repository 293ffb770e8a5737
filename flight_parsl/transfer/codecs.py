"""Update codecs: what sits between the fold and the store.

A :class:`Codec` turns a flat float32 array (a model update: a client's delta from the
global model, a task's folded partial, an aggregator's partial; or the broadcast model
itself) into a smaller payload and back. ``none`` leaves the transfer path as it was;
``fp16`` casts; ``int8`` quantizes blockwise with each block's absolute maximum
(``transfer.codec_block`` values per block, one float32 scale each); ``topk:FRACTION``
keeps the largest FRACTION of the values by magnitude (uint32 indices and float32
values). :func:`register_codec` adds a codec of one's own under a name.

Codecs are stateless: error feedback is one function for every codec,
:func:`encode_feedback`, which adds a residual before encoding and returns what the
payload left out (the next residual). The engine keeps residuals in the run's
per-client state (:mod:`flight_parsl.transfer.state`).

Encoded values travel as a :class:`~flight_parsl.core.weights.FlatWeights` whose layout
is an :class:`Encoded` envelope (the codec, its block size, the model's own layout, the
payload's length) and whose buffer holds the payload bytes: every transfer channel moves
it unchanged, and the bytes it counts are the compressed ones. :func:`pack` builds one,
:func:`unpack` decodes it back to the model's layout.

This module imports numpy only: slots load it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, runtime_checkable

import numpy as np

from flight_parsl.core.weights import Entry, FlatWeights, Layout


@runtime_checkable
class Codec(Protocol):
    """Encodes a flat float32 array into a payload and back.

    ``name``: the spec that rebuilds it (``int8``, ``topk:0.1``). ``sparse``: the codec
    keeps only part of the values, so it suits updates, not the broadcast model.
    """

    name: str
    sparse: bool

    def encode(self, values: np.ndarray) -> bytes:
        """The payload of a 1-D float32 array."""

    def decode(self, payload: memoryview, size: int) -> np.ndarray:
        """The float32 array of ``size`` values a payload stands for."""

    def bound(self, values: np.ndarray) -> float:
        """The declared error bound: ``max |values - decode(encode(values))|`` is at most this."""


class NoCodec:
    """``none``: the float32 values themselves (lossless)."""

    name = "none"
    sparse = False

    def encode(self, values: np.ndarray) -> bytes:
        return np.ascontiguousarray(values, dtype=np.float32).tobytes()

    def decode(self, payload: memoryview, size: int) -> np.ndarray:
        return np.frombuffer(payload, dtype=np.float32, count=size).copy()

    def bound(self, values: np.ndarray) -> float:
        return 0.0


#: The largest finite float16; larger magnitudes are clipped to it.
FP16_MAX = 65504.0


class Fp16:
    """``fp16``: cast to IEEE half precision (2 bytes a value), values clipped to +-65504.

    Bound: half a unit in the last place, ``2**-11 * |x|`` (normal range) plus ``2**-25``
    (half the smallest subnormal), plus what clipping removed.
    """

    name = "fp16"
    sparse = False

    def encode(self, values: np.ndarray) -> bytes:
        return np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16).tobytes()

    def decode(self, payload: memoryview, size: int) -> np.ndarray:
        return np.frombuffer(payload, dtype=np.float16, count=size).astype(np.float32)

    def bound(self, values: np.ndarray) -> float:
        if values.size == 0:
            return 0.0
        top = float(np.max(np.abs(values)))
        return min(top, FP16_MAX) * 2.0**-11 + 2.0**-25 + max(0.0, top - FP16_MAX)


class Int8:
    """``int8``: blockwise absmax quantization: each block of ``block`` values is scaled by
    its absolute maximum / 127 (one float32) and rounded to int8 (1 byte a value).

    Bound: half a step of the coarsest block, ``max_block absmax / 254``, plus float32
    rounding (``absmax * 2**-20`` on top).
    """

    sparse = False

    def __init__(self, block: int = 256) -> None:
        if block <= 0:
            raise ValueError(f"int8 block size must be > 0, got {block}")
        self.block = block
        self.name = "int8"

    def _blocks(self, size: int) -> int:
        return -(-size // self.block)

    def encode(self, values: np.ndarray) -> bytes:
        n, b = values.size, self.block
        nb = self._blocks(n)
        padded = np.zeros(nb * b, dtype=np.float32)
        padded[:n] = values
        blocks = padded.reshape(nb, b)
        scale = (np.max(np.abs(blocks), axis=1) / 127.0).astype(np.float32)
        safe = np.where(scale > 0, scale, np.float32(1.0))
        q = np.rint(blocks / safe[:, None]).clip(-127, 127).astype(np.int8)
        return scale.tobytes() + q.reshape(-1)[:n].tobytes()

    def decode(self, payload: memoryview, size: int) -> np.ndarray:
        nb = self._blocks(size)
        scale = np.frombuffer(payload, dtype=np.float32, count=nb)
        q = np.frombuffer(payload, dtype=np.int8, count=size, offset=4 * nb)
        out = np.zeros(nb * self.block, dtype=np.float32)
        out[:size] = q
        out = out.reshape(nb, self.block) * scale[:, None]
        return np.ascontiguousarray(out.reshape(-1)[:size], dtype=np.float32)

    def bound(self, values: np.ndarray) -> float:
        if values.size == 0:
            return 0.0
        top = float(np.max(np.abs(values)))
        return top / 254.0 + top * 2.0**-20


class TopK:
    """``topk:FRACTION``: the ``k = ceil(FRACTION * n)`` values largest in magnitude; the
    others decode to 0. The payload is the kept float32 values, then where they are: uint32
    indices (4 bytes each) or a bitmap of the n positions (n / 8 bytes), whichever is smaller
    (both sides know n and k); with k = n, the values alone.

    Bound: the largest magnitude left out.
    """

    sparse = True

    def __init__(self, fraction: float) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"top-k fraction must be in (0, 1], got {fraction:g}")
        self.fraction = fraction
        self.name = f"topk:{fraction:g}"

    def keep(self, size: int) -> int:
        """How many values of ``size`` it keeps (at least one)."""
        return min(size, max(1, math.ceil(self.fraction * size)))

    def _top(self, values: np.ndarray) -> np.ndarray:
        k = self.keep(values.size)
        if k >= values.size:
            return np.arange(values.size, dtype=np.uint32)
        idx = np.argpartition(np.abs(values), values.size - k)[values.size - k :]
        return np.sort(idx).astype(np.uint32)

    @staticmethod
    def _bitmap(size: int, k: int) -> bool:
        """Whether positions go as a bitmap (smaller than k uint32 indices)."""
        return -(-size // 8) < 4 * k

    def nbytes(self, size: int) -> int:
        """Payload bytes for ``size`` values."""
        k = self.keep(size)
        if k >= size:
            return 4 * size
        return 4 * k + (-(-size // 8) if self._bitmap(size, k) else 4 * k)

    def encode(self, values: np.ndarray) -> bytes:
        idx = self._top(values)
        kept = values[idx].astype(np.float32).tobytes()
        if idx.size >= values.size:
            return kept
        if self._bitmap(values.size, idx.size):
            mask = np.zeros(values.size, dtype=bool)
            mask[idx] = True
            return kept + np.packbits(mask).tobytes()
        return kept + idx.tobytes()

    def decode(self, payload: memoryview, size: int) -> np.ndarray:
        k = self.keep(size)
        vals = np.frombuffer(payload, dtype=np.float32, count=k)
        if k >= size:
            return vals.copy()
        out = np.zeros(size, dtype=np.float32)
        if self._bitmap(size, k):
            bits = np.frombuffer(payload, dtype=np.uint8, offset=4 * k)
            out[np.unpackbits(bits, count=size).astype(bool)] = vals
        else:
            out[np.frombuffer(payload, dtype=np.uint32, count=k, offset=4 * k)] = vals
        return out

    def bound(self, values: np.ndarray) -> float:
        k = self.keep(values.size)
        if k >= values.size:
            return 0.0
        mags = np.abs(values)
        return float(np.partition(mags, values.size - k - 1)[values.size - k - 1])


# --- registry -------------------------------------------------------------------------

#: A codec factory: (the argument after ``NAME:``, or None; the block size setting) -> codec.
CodecFactory = Callable[[str | None, int], Codec]


def _none(arg: str | None, block: int) -> Codec:
    if arg is not None:
        raise ValueError("codec 'none' takes no argument")
    return NoCodec()


def _fp16(arg: str | None, block: int) -> Codec:
    if arg is not None:
        raise ValueError("codec 'fp16' takes no argument")
    return Fp16()


def _int8(arg: str | None, block: int) -> Codec:
    if arg is not None:
        raise ValueError("codec 'int8' takes no argument; its block size is transfer.codec_block")
    return Int8(block)


def _topk(arg: str | None, block: int) -> Codec:
    if arg is None:
        raise ValueError("top-k needs the FRACTION in (0, 1] of an update's values it keeps: topk:0.1")
    try:
        fraction = float(arg)
    except ValueError:
        fraction = math.nan
    if not 0 < fraction <= 1:  # nan fails too
        raise ValueError(f"top-k keeps a FRACTION in (0, 1] of an update's values (topk:0.1), got {arg!r}")
    return TopK(fraction)


_REGISTRY: dict[str, CodecFactory] = {"none": _none, "fp16": _fp16, "int8": _int8, "topk": _topk}
_USAGE = {"topk": "topk:FRACTION"}


def register_codec(name: str, factory: CodecFactory, usage: str | None = None) -> None:
    """Add a codec under ``name`` (``transfer.codec=NAME`` or ``NAME:ARG``).

    ``factory(arg, block)`` builds it: ``arg`` is the text after ``NAME:`` (None without),
    ``block`` the ``transfer.codec_block`` setting; it raises ValueError on a bad argument.
    ``usage``: how the name is written in messages (``topk:FRACTION``). Slots build codecs
    too: register at import time of a module every slot imports.
    """
    if not name or ":" in name:
        raise ValueError(f"a codec name is a non-empty word without ':', got {name!r}")
    _REGISTRY[name] = factory
    if usage:
        _USAGE[name] = usage
    make_codec.cache_clear()


def codec_names() -> list[str]:
    """The registered codecs, as written in config (``topk:FRACTION``)."""
    return [_USAGE.get(n, n) for n in sorted(_REGISTRY)]


@lru_cache(maxsize=64)
def make_codec(spec: str, block: int = 256) -> Codec:
    """The codec of ``spec`` (``none``, ``fp16``, ``int8``, ``topk:0.1``, a registered name).

    Raises:
        ValueError: an unknown name (the message lists the registry) or a bad argument.
    """
    name, sep, arg = spec.partition(":")
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown codec; valid codecs: {', '.join(codec_names())}")
    return factory(arg if sep else None, block)


# --- the envelope ---------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded(Layout):
    """The layout of an encoded payload: one opaque float32 entry that holds the payload
    bytes (zero-padded to 4), plus what decoding needs."""

    codec: str = "none"
    block: int = 256
    inner: Layout = Layout(())
    nbytes: int = 0


def is_encoded(weights: FlatWeights) -> bool:
    """Whether ``weights`` is an encoded payload (see :func:`pack`)."""
    return isinstance(weights.layout, Encoded)


def pack(codec: Codec, payload: bytes, layout: Layout, block: int = 256) -> FlatWeights:
    """Wrap a codec's payload of values laid out as ``layout`` for the transfer."""
    n = len(payload)
    words = -(-n // 4)
    buffer = np.zeros(words, dtype=np.float32)
    buffer.view(np.uint8)[:n] = np.frombuffer(payload, dtype=np.uint8)
    envelope = Encoded((Entry("encoded", (words,), "float32", 0),), codec.name, block, layout, n)
    return FlatWeights(buffer, envelope)


def encode(codec: Codec, weights: FlatWeights, block: int = 256) -> FlatWeights:
    """``weights`` encoded by ``codec``, ready for the transfer."""
    return pack(codec, codec.encode(weights.buffer), weights.layout, block)


def unpack(weights: FlatWeights) -> FlatWeights:
    """The values an encoded payload stands for, in the model's layout (others unchanged)."""
    env = weights.layout
    if not isinstance(env, Encoded):
        return weights
    codec = make_codec(env.codec, env.block)
    payload = weights.buffer.view(np.uint8).data[: env.nbytes]
    return FlatWeights(np.ascontiguousarray(codec.decode(payload, env.inner.size), dtype=np.float32), env.inner)


def encode_feedback(
    codec: Codec, values: np.ndarray, residual: np.ndarray | None
) -> tuple[bytes, np.ndarray]:
    """Error feedback: encode ``values + residual``; return the payload and the new residual
    (``values + residual`` minus what the payload decodes to: what it left out)."""
    target = values if residual is None else values + residual
    payload = codec.encode(target)
    return payload, (target - codec.decode(memoryview(payload), target.size)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Compression:
    """The run's codecs, as tasks carry them.

    ``up``: what train and aggregate tasks send up (updates); ``down``: the broadcast;
    ``block``: the block size of blockwise codecs; ``feedback``: error feedback on ``up``.
    """

    up: str = "none"
    down: str = "none"
    block: int = 256
    feedback: bool = False

    @property
    def deltas(self) -> bool:
        """Whether tasks send updates (deltas from the global model) instead of models."""
        return self.up != "none"

    def codec_up(self) -> Codec:
        """The codec of what goes up."""
        return make_codec(self.up, self.block)

    def codec_down(self) -> Codec:
        """The codec of the broadcast."""
        return make_codec(self.down, self.block)


__all__ = [
    "Codec", "CodecFactory", "Compression", "Encoded", "Fp16", "Int8", "NoCodec", "TopK", "codec_names", "encode",
    "encode_feedback", "is_encoded", "make_codec", "pack", "register_codec", "unpack",
]
