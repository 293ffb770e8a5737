"""A userspace delay line: delay, jitter and loss for kernels without netem.

:mod:`flight_parsl.execution.links` shapes a link's delay, jitter and loss with the kernel's
netem qdisc. A kernel built without it (``CONFIG_NET_SCH_NETEM`` unset, as on the machine
flight_parsl is developed on) gets them from this process instead: for each host it opens
two TAP devices, ``OUTER`` (which the run puts on its bridge, where a veth's root end would
be) and ``INNER`` (which it moves into the host's namespace as ``eth0``), and copies every
frame from one to the other after the link's delay (plus a uniform jitter; frames leave in
their due order, as netem's do), dropping each with the link's loss. The rate is still
shaped by ``tbf`` on the egress of both devices, before the delay line, as it would be on a
veth. The devices carry virtio-net headers with TCP segmentation offload, so a frame is up
to 64 KiB (a GSO segment) and a gigabit is a few thousand frames a second; a link with loss
turns the offload off, so that loss applies to each packet as netem's does. Each wake-up reads
only the devices epoll names ready (and its standard input only when epoll names it): a frame
costs a read, a write and part of a wake-up, 3.5 system calls against 4.4 when every device and
the standard input were polled on each wake-up (strace -c, 210 MB through a 1 Gbit/s link).

Stdlib only, run as a script by :func:`flight_parsl.execution.netns.virtual_network`::

    python -I delayline.py '[{"outer": "fpt1h0", "inner": "fpu1h0", "delay_ms": 20, "jitter_ms": 0, "loss_pct": 0}]'

It prints ``ready`` once every device exists, and exits on SIGTERM, on its standard
input's end (its parent's end closes it), or, with ``--die-with-parent``, when its parent is
killed (``PR_SET_PDEATHSIG``); the devices vanish with it (they are not persistent), so
nothing stays behind. ``--daemon`` (``jobs/local_slurm/start.sh --link``) ignores its standard
input and runs until SIGTERM (``stop.sh``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
VNET_HDR = 12
FRAME = 65536 + VNET_HDR + 64
_EVENT = struct.Struct("<IQ")


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Waiter:
    """Wait for readable fds up to a deadline with nanosecond timeouts (``epoll_pwait2``,
    Linux 5.11+); Python's epoll rounds a timeout up to whole milliseconds, which would add
    up to 1 ms to every frame's delay."""

    def __init__(self, fds: list[int]) -> None:
        self.epoll = select.epoll()
        for fd in fds:
            self.epoll.register(fd, select.EPOLLIN)
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.pwait2 = getattr(libc, "epoll_pwait2", None)
        self.events = (ctypes.c_uint8 * (12 * 64))()  # struct epoll_event is packed: 12 bytes

    def wait(self, timeout: float | None) -> list[int]:
        """The fds that are readable, once one is or ``timeout`` seconds passed (None: no
        limit; then the list may be empty)."""
        if self.pwait2 is None or timeout is None:
            return [fd for fd, _ in self.epoll.poll(timeout if timeout is None else max(timeout, 0.0), 64)]
        ts = _Timespec(int(timeout), int((timeout % 1) * 1e9))
        n = self.pwait2(self.epoll.fileno(), self.events, 64, ctypes.byref(ts), None)
        if n < 0:
            if ctypes.get_errno() not in (errno.EINTR,):
                self.pwait2 = None  # ENOSYS (an older kernel): millisecond timeouts then
            return []
        # struct epoll_event {uint32 events; uint64 data} (packed); Python's register() puts the fd in data
        return [_EVENT.unpack_from(self.events, 12 * i)[1] & 0xFFFFFFFF for i in range(n)]


def _tap(name: str, offload: bool) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR))
    fcntl.ioctl(fd, TUNSETOFFLOAD, (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN) if offload else 0)
    return fd


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    specs = json.loads(argv[1])
    if "--die-with-parent" in argv[2:]:
        _die_with_parent()
    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)  # out of a wait that Python would otherwise resume (PEP 475)

    signal.signal(signal.SIGTERM, on_term)
    # fd -> (peer fd, delay s, jitter s, loss fraction)
    route: dict[int, tuple[int, float, float, float]] = {}
    for s in specs:
        offload = not s.get("loss_pct")
        outer, inner = _tap(s["outer"], offload), _tap(s["inner"], offload)
        d, j, p = s["delay_ms"] / 1000, s["jitter_ms"] / 1000, s["loss_pct"] / 100
        route[outer] = (inner, d, j, p)
        route[inner] = (outer, d, j, p)
    daemon = "--daemon" in argv[2:]  # the local Slurm cluster's: runs until stop.sh stops it
    stdin = sys.stdin.fileno()
    waiter = _Waiter([*route] if daemon else [*route, stdin])
    print("ready", flush=True)
    line: list[tuple[float, int, int, bytes]] = []  # (due, sequence, fd to write, frame)
    seq = 0
    rand = random.Random()
    while True:
        now = time.monotonic()
        while line and line[0][0] <= now:
            _, _, fd, frame = heapq.heappop(line)
            try:
                os.write(fd, frame)
            except OSError:
                pass  # the device is down or gone: the frame is lost, as on a real link
        ready = waiter.wait(max(line[0][0] - time.monotonic(), 0.0) if line else None)
        now = time.monotonic()
        for fd in ready:  # only the devices epoll named: no read that finds nothing on the others
            if fd not in route:
                continue
            peer, delay, jitter, loss = route[fd]
            while True:
                try:
                    frame = os.read(fd, FRAME)
                except BlockingIOError:
                    break
                except OSError:
                    break
                if loss and rand.random() < loss:
                    continue
                due = now + delay + (rand.uniform(-jitter, jitter) if jitter else 0.0)
                heapq.heappush(line, (due, seq, peer, frame))
                seq += 1
        if daemon or stdin not in ready:
            continue
        try:
            if not os.read(stdin, 1):
                break  # the parent closed our stdin: the run is over
        except OSError:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
