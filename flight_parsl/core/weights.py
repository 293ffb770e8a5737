"""Model weights as one contiguous float32 buffer plus its layout.

Every entry of a torch ``state_dict`` (parameters and buffers such as BatchNorm
statistics) lives in one flat ``float32`` numpy array; the layout records each
entry's name, shape and original dtype. Aggregation is then plain vectorized
arithmetic on whole buffers, and pickling a :class:`FlatWeights` costs about one
memory copy (numpy arrays pickle out-of-band with protocol 5).

This module imports numpy only; the torch conversions import torch lazily so that
no-training workers never load it.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch


_MAGIC = b"FPW1"


@dataclass(frozen=True)
class Entry:
    """One state-dict entry: its name, shape, dtype name and offset in the buffer."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class Layout:
    """The ordered entries that make up a flat buffer."""

    entries: tuple[Entry, ...]

    @property
    def size(self) -> int:
        """Total number of float32 elements in the buffer."""
        if not self.entries:
            return 0
        last = self.entries[-1]
        return last.offset + last.size

    @classmethod
    def from_shapes(cls, items: list[tuple[str, tuple[int, ...], str]]) -> Layout:
        """Build a layout from ``(name, shape, dtype)`` triples, packed in order."""
        entries = []
        offset = 0
        for name, shape, dtype in items:
            entry = Entry(name, tuple(int(s) for s in shape), dtype, offset)
            entries.append(entry)
            offset += entry.size
        return cls(tuple(entries))


def header(layout: Layout) -> bytes:
    """The serialized form's head for weights of ``layout`` (magic, header length, pickled layout,
    padded to 64 bytes): what :meth:`FlatWeights.to_bytes` puts before the buffer's bytes, so a
    writer may send it, then the buffer in slices as they are made."""
    pickled = pickle.dumps(layout, protocol=5)
    head = len(_MAGIC) + 8 + len(pickled)
    pad = -head % 64
    return _MAGIC + (head + pad).to_bytes(8, "little") + pickled + b"\0" * pad


def _header_length(view: memoryview) -> int | None:
    """The length of the serialized form's head (None: fewer bytes than the magic and length)."""
    if len(view) < len(_MAGIC) + 8:
        return None
    if view[: len(_MAGIC)] != _MAGIC:
        raise TypeError("not a FlatWeights payload (bad magic)")
    return int.from_bytes(view[len(_MAGIC) : len(_MAGIC) + 8], "little")


def _layout(view: memoryview, start: int) -> Layout:
    layout = pickle.loads(view[len(_MAGIC) + 8 : start])
    if not isinstance(layout, Layout):
        raise TypeError(f"expected a Layout header, got {type(layout).__name__}")
    return layout


class PayloadSlices:
    """Reads the serialized form (:meth:`FlatWeights.to_bytes`) as it arrives in consecutive byte
    slices, ``(offset, bytes)``: the head first, then hands each piece of the buffer on as
    ``on_values(element offset, float32 values)``, a view of the slice (valid during the call).
    ``expect`` checks the layout before any value is handed on (it raises to refuse it).
    :meth:`done` checks that the whole buffer came."""

    def __init__(self, expect: Callable[[Layout], None], on_values: Callable[[int, np.ndarray], None]) -> None:
        self._expect, self._on_values = expect, on_values
        self._head = bytearray()  # the head while it comes in pieces (a slice shorter than the head)
        self._start: int | None = None  # the head's length, once the layout is read
        self.layout: Layout | None = None
        self._received = 0  # buffer bytes handed on

    def __call__(self, offset: int, data: memoryview) -> None:
        view = memoryview(data).cast("B")
        if self._start is None:
            if offset != len(self._head):
                raise ValueError("a FlatWeights payload's slices must come in order")
            if self._head:  # the head came cut across slices: the bytes so far, from offset 0
                view = memoryview(bytes(self._head) + view)
            start = _header_length(view)
            if start is None or len(view) < start:
                self._head[:] = view
                return
            self.layout = _layout(view, start)
            self._expect(self.layout)
            self._start, view, offset = start, view[start:], start
        self._values(offset - self._start, view)

    def _values(self, at: int, view: memoryview) -> None:
        if at != self._received or len(view) % 4:
            raise ValueError("a FlatWeights payload's slices must come in order, whole float32 values each")
        if len(view):
            self._on_values(at // 4, np.frombuffer(view, dtype=np.float32))
        self._received += len(view)

    def done(self) -> Layout:
        """The layout, once every value of the buffer was handed on; raises when some are missing."""
        if self.layout is None or self._received != 4 * self.layout.size:
            raise ValueError("a FlatWeights payload ended before its buffer was whole")
        return self.layout


@dataclass
class FlatWeights:
    """A model's weights: one 1-D float32 buffer and the layout that names its parts."""

    buffer: np.ndarray
    layout: Layout

    def __post_init__(self) -> None:
        if self.buffer.dtype != np.float32 or self.buffer.ndim != 1:
            raise ValueError("FlatWeights buffer must be a 1-D float32 array")
        if self.buffer.size != self.layout.size:
            raise ValueError(
                f"buffer has {self.buffer.size} elements but the layout needs {self.layout.size}"
            )

    @property
    def nbytes(self) -> int:
        """Bytes of the buffer."""
        return int(self.buffer.nbytes)

    def like(self, buffer: np.ndarray) -> FlatWeights:
        """Return new weights with the same layout and another buffer."""
        return FlatWeights(np.ascontiguousarray(buffer, dtype=np.float32), self.layout)

    def view(self, name: str) -> np.ndarray:
        """Return the entry ``name`` as a shaped view into the buffer (no copy)."""
        for entry in self.layout.entries:
            if entry.name == name:
                return self.buffer[entry.offset : entry.offset + entry.size].reshape(entry.shape)
        raise KeyError(name)

    def _header(self) -> bytes:
        return header(self.layout)

    def to_parts(self) -> tuple[bytes, memoryview]:
        """The serialized form in two parts, without copying the buffer: a small header
        (magic, header length, pickled layout, padded to 64 bytes) and a byte view of the
        buffer itself. A writer that takes several buffers (``os.writev``) stores a model
        with one copy, straight from the buffer it has; ``b"".join`` of the parts is
        :meth:`to_bytes`."""
        return self._header(), np.ascontiguousarray(self.buffer).data.cast("B")

    def to_bytes(self) -> bytes:
        """Serialize: a small header (magic, header length, pickled layout) then the raw
        buffer, 64-byte aligned. Costs one copy of the buffer."""
        return b"".join(self.to_parts())

    def to_buffer(self) -> memoryview:
        """:meth:`to_bytes`'s bytes in one buffer that numpy allocates, for writers that take any
        bytes-like object (a store's put). numpy asks for transparent huge pages on a large
        buffer, so the copy faults a few 2 MiB pages instead of thousands of 4 KiB ones: for
        resnet18 about a third of :meth:`to_bytes`'s CPU time."""
        header = self._header()
        out = np.empty(len(header) + self.buffer.nbytes, dtype=np.uint8)
        out[: len(header)] = np.frombuffer(header, dtype=np.uint8)
        out[len(header) :] = np.ascontiguousarray(self.buffer).view(np.uint8)
        return out.data

    @staticmethod
    def from_bytes(data: bytes | bytearray | memoryview) -> FlatWeights:
        """Inverse of :meth:`to_bytes`, without copying: the buffer is a read-only view of
        ``data`` (which it keeps alive), so it may come from a socket, a file map or Redis."""
        view = memoryview(data)
        start = _header_length(view)
        if start is None or len(view) < start:
            raise TypeError("not a FlatWeights payload (cut short)")
        buffer = np.frombuffer(view, dtype=np.float32, offset=start)
        return FlatWeights(buffer, _layout(view, start))

    # torch conversions --------------------------------------------------------

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> FlatWeights:
        """Pack a torch state_dict into one float32 buffer."""
        layout = Layout.from_shapes(
            [(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in state.items()]
        )
        buffer = np.empty(layout.size, dtype=np.float32)
        for entry, tensor in zip(layout.entries, state.values()):
            target = buffer[entry.offset : entry.offset + entry.size]
            target[...] = tensor.detach().reshape(-1).to("cpu").numpy()
        return cls(buffer, layout)

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> FlatWeights:
        """Pack a module's state_dict."""
        return cls.from_state_dict(model.state_dict())

    def to_state_dict(self) -> dict[str, torch.Tensor]:
        """Unpack into a state_dict; float32 entries are zero-copy views of the buffer."""
        import torch

        state: dict[str, torch.Tensor] = {}
        with warnings.catch_warnings():  # read-only views of a payload: nothing writes to them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            flat = torch.from_numpy(self.buffer)
        for entry in self.layout.entries:
            part = flat[entry.offset : entry.offset + entry.size].view(entry.shape)
            dtype = getattr(torch, entry.dtype)
            state[entry.name] = part if dtype == torch.float32 else part.to(dtype)
        return state

    def load_into(self, model: torch.nn.Module) -> None:
        """Copy these weights into ``model`` (in place)."""
        model.load_state_dict(self.to_state_dict(), strict=True)

