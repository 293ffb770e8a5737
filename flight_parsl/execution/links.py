"""Shaped links: a virtual host's link given a rate, a delay, jitter and loss with ``tc``.

A site on a virtual host (``virtual_host: NAME``, see :mod:`flight_parsl.execution.netns`)
may say::

    link: {rate: 1gbit, delay: 5ms, jitter: 0ms, loss: 0%}

and the veth pair that joins its namespace to the run's bridge is shaped in both
directions, each on the egress of one end (where a qdisc acts; no ifb device needed):
the bridge side's veth (traffic into the host) and the namespace's ``eth0`` (traffic
out of it). Per direction:

- ``rate`` by ``tbf`` (tc-tbf(8)), not by netem's ``rate``, which is bursty at 10
  Mbit/s and above (tc-netem(8)); its bucket holds 4 ms of the rate (one tick at
  HZ=250) and at least two full frames, its queue the rate times (the round trip + 20 ms);
- ``delay``, ``jitter`` and ``loss`` by ``netem`` at the root, ``tbf`` its child
  (``parent 1:1``), with a packet ``limit`` that holds everything in flight (netem's
  default of 1000 packets is too small for a high rate times delay).

``delay`` is one way: a link's round trip is twice its delay. Units (case-insensitive):
rates ``bit``, ``kbit``, ``mbit``, ``gbit``, ``tbit`` (bits per second, powers of 1000,
an optional ``/s``), times ``us``, ``ms``, ``s``, loss ``%``. ``bps``, ``kbps``, ``mbps``
... are refused: tc reads them as *bytes* per second and most people as bits. A bare
number is bit/s for a rate, milliseconds for a delay, percent for loss (the normalised
form). Everything the shaping adds lives on the two veth ends, so it goes when the
namespace is deleted, after an error too.

Before the first round :func:`check_links` measures each shaped link from inside its
namespace to the bridge address -- the round trip of small TCP messages, and the
throughput of a timed bulk transfer each way -- and warns (one log line) when either is
more than 20% off what was asked. Kernels without netem (``CONFIG_NET_SCH_NETEM``) can
shape the rate only: a delay, jitter or loss there is one error naming what is missing.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field

from flight_parsl.config.schema import Schema
from flight_parsl.core.errors import ConfigError, ExecutorError, key_error

log = logging.getLogger(__name__)

#: Relative error past which the link check warns.
TOLERANCE = 0.20
#: Round trips closer than this (ms) to the asked one never warn (timer and scheduling noise:
#: a busy 2-core machine made a 0.03 ms round trip 1.2 ms in one check).
RTT_SLACK_MS = 2.0

_RATE = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z%]*)(/s)?\s*$", re.I)
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}
_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _number(v: Any, units: Mapping[str, float], what: str, bare: str) -> float:
    """``v`` (a number, or text with one of ``units``) in the bare unit."""
    if isinstance(v, bool):
        raise ValueError(f"must be {what}")
    if isinstance(v, (int, float)):
        value = float(v)
    elif isinstance(v, str):
        m = _RATE.match(v)
        if m is None:
            raise ValueError(f"must be {what}")
        unit = m.group(2).lower()
        if unit in ("bps", "kbps", "mbps", "gbps", "tbps"):
            raise ValueError(
                f"unit {unit!r} is ambiguous (tc reads it as bytes per second): write "
                f"{m.group(1)}{unit[0] if unit != 'bps' else ''}bit for bits per second"
                " (or 8x that for bytes)")
        if unit == "" and bare:
            scale = 1.0
        elif unit in units:
            scale = units[unit]
        else:
            raise ValueError(f"unknown unit {m.group(2)!r}; use {', '.join(units)}")
        value = float(m.group(1)) * scale
    else:
        raise ValueError(f"must be {what}")
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def parse_rate(v: Any) -> Any:
    """A rate in bit/s (int): ``1gbit``, ``50mbit``, ``100kbit/s``, a bare number (bit/s); None stays."""
    if v is None:
        return None
    value = _number(v, _RATE_UNITS, "a rate such as 1gbit, 100mbit, 512kbit", "bit/s")
    if value <= 0:
        raise ValueError("must be > 0 (leave 'rate' out for a link without a rate limit)")
    if value < 8000:
        raise ValueError("must be >= 8kbit (one byte per millisecond)")
    return int(round(value))


def parse_time(v: Any) -> Any:
    """A time in milliseconds (float): ``5ms``, ``800us``, ``0.1s``, a bare number (ms)."""
    value = _number(v, _TIME_UNITS, "a time such as 5ms, 800us, 0.1s", "ms")
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def parse_loss(v: Any) -> Any:
    """Loss in percent (float): ``0.1%``, a bare number (percent)."""
    value = _number(v, {"%": 1.0}, "a percentage such as 0%, 0.5%", "%")
    if not 0 <= value < 100:
        raise ValueError("must be >= 0% and < 100%")
    return value


class LinkSchema(Schema):
    """A site's ``link``: what its virtual host's veth pair carries, each direction."""

    model_config = ConfigDict(strict=True)

    rate: Annotated[int | None, BeforeValidator(parse_rate)] = None  # bit/s; None: no limit
    delay: Annotated[float, BeforeValidator(parse_time), Field(le=10_000)] = 0.0  # ms, one way
    jitter: Annotated[float, BeforeValidator(parse_time), Field(le=10_000)] = 0.0  # ms
    loss: Annotated[float, BeforeValidator(parse_loss)] = 0.0  # percent, each direction


def normalize_link(model: LinkSchema | None, source: str, data: Any = None) -> dict[str, Any] | None:
    """The normalised ``link`` of a site (bit/s, ms, %), or None.

    Raises:
        ConfigError: jitter over the delay, or a link that shapes nothing.
    """
    if model is None:
        return None
    out = {"rate": model.rate, "delay": model.delay, "jitter": model.jitter, "loss": model.loss}
    if model.jitter > model.delay:
        raise key_error(source, "link.jitter", _ms(model.jitter),
                        f"must be <= link.delay ({_ms(model.delay)}): netem cannot send before now")
    if model.rate is None and model.delay == 0 and model.loss == 0:
        raise key_error(source, "link", data if data is not None else out, "shapes nothing; set rate, delay or loss (or remove 'link')")
    return out


@dataclass(frozen=True)
class Link:
    """A normalised link: rate in bit/s (None: unlimited), delay and jitter in ms (one way),
    loss in percent; each applies to both directions."""

    rate: int | None = None
    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    source: str = field(default="site", compare=False)  # how messages name its site

    @classmethod
    def of(cls, data: Mapping[str, Any], source: str = "site") -> Link:
        return cls(data.get("rate"), float(data.get("delay", 0.0)), float(data.get("jitter", 0.0)),
                   float(data.get("loss", 0.0)), source)

    def text(self) -> dict[str, Any]:
        """The link as a site file writes it (for messages)."""
        return {"rate": _rate(self.rate), "delay": _ms(self.delay), "jitter": _ms(self.jitter),
                "loss": f"{self.loss:g}%"}

    @property
    def needs_netem(self) -> bool:
        return self.delay > 0 or self.jitter > 0 or self.loss > 0

    @property
    def rtt_ms(self) -> float:
        """The round trip asked for: the delay once each way."""
        return 2 * self.delay

    def describe(self) -> str:
        parts = [_rate(self.rate) if self.rate else "unlimited", _ms(self.delay)]
        if self.jitter:
            parts.append(f"+-{_ms(self.jitter)}")
        if self.loss:
            parts.append(f"loss {self.loss:g}%")
        return " ".join(parts)

    def asked(self) -> dict[str, Any]:
        """What summary.json records as asked."""
        return {"rate_bit_s": self.rate, "delay_ms": self.delay, "jitter_ms": self.jitter,
                "loss_pct": self.loss, "rtt_ms": self.rtt_ms}

    def qdiscs(self, dev: str, netem: bool = True) -> list[list[str]]:
        """The ``tc`` argument lists that shape the egress of ``dev`` (root first); without
        ``netem`` (a delay line does the delay, jitter and loss) the rate's tbf alone."""
        cmds: list[list[str]] = []
        parent = ["root", "handle", "1:"]
        if self.needs_netem and netem:
            cmd = ["qdisc", "add", "dev", dev, *parent, "netem", "limit", str(self.netem_limit())]
            if self.delay or self.jitter:
                cmd += ["delay", f"{round(self.delay * 1000)}us"]
                if self.jitter:
                    cmd += [f"{round(self.jitter * 1000)}us"]
            if self.loss:
                cmd += ["loss", "random", f"{self.loss:g}%"]
            cmds.append(cmd)
            parent = ["parent", "1:1", "handle", "10:"]
        if self.rate:
            burst, limit = self.tbf_sizes()
            cmds.append(["qdisc", "add", "dev", dev, *parent, "tbf", "rate", f"{self.rate}bit",
                         "burst", str(burst), "limit", str(limit)])
        return cmds

    def tbf_sizes(self) -> tuple[int, int]:
        """tbf's bucket and queue in bytes: 4 ms of the rate (one jiffy at HZ=250; at least two
        full frames), and the rate times (round trip + 20 ms), at least 256 KiB (64 KiB GSO
        packets), plus the bucket."""
        assert self.rate is not None
        per_s = self.rate / 8
        burst = max(int(per_s * 0.004), 2 * 1514 + 64)
        limit = max(int(per_s * (self.rtt_ms + 2 * self.jitter + 20) / 1000), 256 * 1024) + burst
        return burst, limit

    def netem_limit(self) -> int:
        """netem's queue in packets: everything a sender may have in flight (the delay line, and
        tbf's queue behind it) in full frames, twice over; at least netem's default of 1000."""
        if self.rate is None:
            return 10_000  # no rate: the sender's window bounds what is in flight (a few MB)
        in_flight = self.rate / 8 * (self.rtt_ms + 2 * self.jitter) / 1000 + self.tbf_sizes()[1]
        return max(1000, math.ceil(2 * in_flight / 1448))


def _rate(bits: float | None) -> str:
    if bits is None:
        return "unlimited"
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bits >= scale:
            return f"{bits / scale:.4g}{unit}"
    return f"{bits:.4g}bit"


def _ms(value: float) -> str:
    return f"{value:g}ms"


# ------------------------------------------------------------------------ applying


def host_links(sites: Sequence[Mapping[str, Any]]) -> dict[str, Link]:
    """Virtual host -> its link, from the sites that set one.

    Raises:
        ConfigError: two sites on one virtual host ask for different links.
    """
    out: dict[str, Link] = {}
    who: dict[str, str] = {}
    for s in sites:
        if not s.get("link") or not s.get("virtual_host"):
            continue
        host, link = s["virtual_host"], Link.of(s["link"], f"site {s['label']!r}")
        if host in out and out[host] != link:
            raise key_error(
                f"site {s['label']!r}", "link", s["link"],
                f"virtual host {host!r} already has the link of site {who[host]!r} "
                f"({out[host].describe()}); sites on one virtual host share one link")
        out[host], who[host] = link, s["label"]
    return out


def tc_available() -> str | None:
    """None when ``tc`` (iproute2) is installed, else the reason."""
    if shutil.which("tc") is None:
        return "needs the 'tc' command (iproute2), which is not installed here"
    return None


def check_tc(links: Mapping[str, Link]) -> None:
    """Fail before anything is made when links need ``tc`` and it is missing.

    Raises:
        ConfigError: ``SITE: key 'link' = {...}: needs the 'tc' command ...``.
    """
    missing = tc_available()
    for link in links.values():
        if missing:
            raise key_error(link.source, "link", link.text(), missing)


def _tc(args: Sequence[str], netns: str | None, link: Link) -> None:
    cmd = ["tc", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        text = (proc.stderr or proc.stdout).strip()
        if "netem" in args and "unknown" in text.lower():
            raise key_error(
                link.source, "link", link.text(),
                "delay, jitter and loss need the kernel's netem qdisc (CONFIG_NET_SCH_NETEM), "
                f"which this kernel lacks (tc: {text}); a rate alone is shaped (tbf)")
        raise ExecutorError(f"{link.source}: shaping its link failed: '{' '.join(cmd)}': {text}")


def apply_link(link: Link, outer: str, netns: str, netem: bool = True) -> None:
    """Shape both directions of a host's link: the bridge side ``outer`` (into the host) and
    ``eth0`` inside ``netns`` (out of it). Removing the namespace removes it all. Without
    ``netem`` only the rate is shaped here (a delay line does the rest).

    Raises:
        ConfigError: the kernel lacks a qdisc the link needs (netem).
        ExecutorError: ``tc`` failed otherwise.
    """
    for args in link.qdiscs(outer, netem):
        _tc(args, None, link)
    for args in link.qdiscs("eth0", netem):
        _tc(args, netns, link)


def netem_available(netns: str) -> bool:
    """True when this kernel has the netem qdisc (tried on the loopback of ``netns``)."""
    probe = ["tc", "-n", netns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]
    ok = subprocess.run(probe, check=False, capture_output=True, timeout=30).returncode == 0
    if ok:
        subprocess.run(["tc", "-n", netns, "qdisc", "del", "dev", "lo", "root"], check=False, capture_output=True,
                       timeout=30)
    return ok


def start_delay_line(hosts: Mapping[str, tuple[Link, str, str]], timeout: float = 30.0) -> subprocess.Popen[str]:
    """Start :mod:`flight_parsl.execution.delayline` for ``hosts`` (name -> link, outer TAP,
    inner TAP) and wait until its devices exist.

    Raises:
        ConfigError: the delay line cannot run here (no ``/dev/net/tun``): the links' delay,
            jitter and loss need netem or it.
    """
    from pathlib import Path

    specs = [{"outer": o, "inner": i, "delay_ms": link.delay, "jitter_ms": link.jitter, "loss_pct": link.loss}
             for link, o, i in hosts.values()]
    script = Path(__file__).with_name("delayline.py")
    # PR_SET_PDEATHSIG fires when the thread that started the line ends: only the main thread's
    # end is the run's end
    with_parent = ["--die-with-parent"] if threading.current_thread() is threading.main_thread() else []
    proc = subprocess.Popen([sys.executable, "-I", str(script), json.dumps(specs), *with_parent], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = proc.stdout.readline() if proc.stdout else ""
    if ready.strip() != "ready":
        if proc.poll() is None:
            proc.kill()
        err = proc.communicate(timeout=10)[1].strip().splitlines()
        stop_delay_line(proc)
        first = next(iter(hosts.values()))[0]
        raise key_error(
            first.source, "link", first.text(),
            "delay, jitter and loss need the kernel's netem qdisc (CONFIG_NET_SCH_NETEM), which this kernel "
            f"lacks, or TAP devices for a userspace delay line, which failed: {err[-1] if err else 'no reply'}")
    return proc


def stop_delay_line(proc: subprocess.Popen[str]) -> None:
    """Stop a delay line (its TAP devices go with it)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


# ------------------------------------------------------------------------ measuring

#: The namespace side of a link check: a stdlib-only client run with ``ip netns exec``.
#: argv: bridge address, port, bytes down, bytes up, pings. Prints one JSON line.
_CLIENT = r"""
import json, socket, struct, sys, time
addr, port, down, up, pings = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
t0 = time.perf_counter()
s = socket.create_connection((addr, port), timeout=30)
connect = time.perf_counter() - t0
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def exact(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise SystemExit("link check: the bridge side closed")
        buf += chunk
    return bytes(buf)
rtts = []
for _ in range(pings):
    t = time.perf_counter(); s.sendall(b"p"); exact(1); rtts.append(time.perf_counter() - t)
def receive(n):
    buf = bytearray(1 << 20); view = memoryview(buf); got = 0; mark = None; skip = n // 3
    while got < n:
        k = s.recv_into(view, min(len(buf), n - got))
        if not k:
            raise SystemExit("link check: the bridge side closed")
        got += k
        if mark is None and got >= skip:
            mark = (time.perf_counter(), got)
    end = time.perf_counter()
    return (n - mark[1]) * 8 / (end - mark[0]) if end > mark[0] and n > mark[1] else None
down_bit_s = up_bit_s = None
if down:
    s.sendall(b"d" + struct.pack("!Q", down)); down_bit_s = receive(down)
if up:
    s.sendall(b"u" + struct.pack("!Q", up)); chunk = bytes(1 << 20); left = up
    while left:
        left -= s.send(chunk[:min(left, len(chunk))])
    up_bit_s = struct.unpack("!d", exact(8))[0]
    up_bit_s = None if up_bit_s < 0 else up_bit_s
s.sendall(b"q")
print(json.dumps({"connect_s": connect, "rtt_s": rtts, "down_bit_s": down_bit_s, "up_bit_s": up_bit_s}))
"""


def _serve(server: socket.socket, errors: list[BaseException]) -> None:
    """The bridge side of one link check: echo pings, send ``d`` bytes, time ``u`` bytes."""
    try:
        conn, _ = server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(30)
            chunk = bytes(1 << 20)
            buf = bytearray(1 << 20)
            while True:
                op = conn.recv(1)
                if op in (b"", b"q"):
                    return
                if op == b"p":
                    conn.sendall(b"p")
                    continue
                size = struct.unpack("!Q", _exact(conn, 8))[0]
                if op == b"d":
                    left = size
                    while left:
                        left -= conn.send(chunk[:min(left, len(chunk))])
                elif op == b"u":
                    got, mark, skip = 0, None, size // 3
                    view = memoryview(buf)
                    while got < size:
                        k = conn.recv_into(view, min(len(buf), size - got))
                        if not k:
                            return
                        got += k
                        if mark is None and got >= skip:
                            mark = (time.perf_counter(), got)
                    end = time.perf_counter()
                    ok = mark is not None and end > mark[0] and size > mark[1]
                    conn.sendall(struct.pack("!d", (size - mark[1]) * 8 / (end - mark[0]) if ok and mark else -1.0))
    except BaseException as exc:  # reported by the caller, which owns the error message
        errors.append(exc)


def _exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the link check's client closed")
        buf += chunk
    return buf


def transfer_bytes(link: Link, seconds: float = 0.3) -> int:
    """Bytes one direction of a check sends: ``seconds`` of the rate, 256 KiB to 48 MiB
    (0: an unlimited link's throughput is not checked)."""
    if not link.rate:
        return 0
    return int(min(max(link.rate / 8 * seconds, 256 * 1024), 48 * 1024 * 1024))


def measure_link(netns: str, bridge: str, link: Link, pings: int = 9, timeout: float = 20.0) -> dict[str, Any]:
    """Measure one link from inside ``netns`` to the bridge address ``bridge``.

    Returns:
        ``rtt_ms`` (median of ``pings`` one-byte round trips over TCP), ``connect_ms`` (the TCP
        handshake), ``to_host_bit_s`` and ``from_host_bit_s`` (the throughput of a bulk transfer
        each way, timed over its last two thirds; None for an unlimited link).

    Raises:
        ExecutorError: the check could not run.
    """
    size = transfer_bytes(link)
    errors: list[BaseException] = []
    with socket.create_server((bridge, 0)) as server:
        server.settimeout(timeout)
        port = server.getsockname()[1]
        thread = threading.Thread(target=_serve, args=(server, errors), name="link-check", daemon=True)
        thread.start()
        cmd = ["ip", "netns", "exec", netns, sys.executable, "-I", "-c", _CLIENT, bridge, str(port),
               str(size), str(size), str(pings)]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ExecutorError(f"the link check of namespace {netns} took over {timeout:g}s") from exc
        thread.join(timeout)
    if proc.returncode != 0 or errors:
        why = proc.stderr.strip().splitlines()[-1:] or [repr(e) for e in errors]
        raise ExecutorError(f"the link check of namespace {netns} failed: {why[0]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    rtts = sorted(data["rtt_s"])
    return {
        "rtt_ms": round(rtts[len(rtts) // 2] * 1000, 3) if rtts else None,
        "connect_ms": round(data["connect_s"] * 1000, 3),
        "to_host_bit_s": data["down_bit_s"] and round(data["down_bit_s"]),
        "from_host_bit_s": data["up_bit_s"] and round(data["up_bit_s"]),
        "bytes_each_way": size,
    }


def off_by(link: Link, measured: Mapping[str, Any]) -> list[str]:
    """What of ``measured`` is more than :data:`TOLERANCE` off ``link`` (empty: all near)."""
    out = []
    rtt = measured.get("rtt_ms")
    if rtt is not None and abs(rtt - link.rtt_ms) > max(TOLERANCE * link.rtt_ms, RTT_SLACK_MS):
        out.append(f"rtt {rtt:.3g} ms, asked {link.rtt_ms:g} ms")
    if link.rate:
        for key, where in (("to_host_bit_s", "into"), ("from_host_bit_s", "out of")):
            got = measured.get(key)
            if got is None or abs(got - link.rate) > TOLERANCE * link.rate:
                out.append(f"throughput {where} the host {_rate(got)}/s, asked {_rate(link.rate)}/s")
    return out


#: The kernel's TCP settings that decide how a model-sized transfer on a warm connection starts
#: (``/proc/sys/net/ipv4``; each network namespace has its own): summary.json ``links.<host>.tcp``.
#: With a congestion control that sets the window itself (``bbr``: the kernel's ``cong_control``
#: hook) a connection idle between rounds keeps its window whatever ``tcp_slow_start_after_idle``
#: says; with ``cubic`` or ``reno`` and ``tcp_slow_start_after_idle = 1`` it restarts from the
#: initial window, a few round trips of slow start a transfer on a long link.
TCP_SETTINGS = ("tcp_congestion_control", "tcp_slow_start_after_idle", "tcp_rmem", "tcp_wmem")


def tcp_settings(netns: str | None = None) -> dict[str, str]:
    """:data:`TCP_SETTINGS` in ``netns`` (None: this process's namespace), as the kernel writes them
    (whitespace made single spaces); a setting that cannot be read is left out."""
    paths = [f"/proc/sys/net/ipv4/{k}" for k in TCP_SETTINGS]
    out: dict[str, str] = {}
    if netns is None:
        for key, path in zip(TCP_SETTINGS, paths):
            try:
                with open(path) as f:
                    out[key] = " ".join(f.read().split())
            except OSError:
                continue
        return out
    script = 'for f in "$@"; do printf "%s\\n" "$(cat "$f" 2>/dev/null)"; done'
    proc = subprocess.run(["ip", "netns", "exec", netns, "sh", "-c", script, "sh", *paths], check=False,
                          capture_output=True, text=True, timeout=30)
    lines = proc.stdout.split("\n") if proc.returncode == 0 else []
    for key, line in zip(TCP_SETTINGS, lines):
        if line.strip():
            out[key] = " ".join(line.split())
    return out


def check_links(network: Any, links: Mapping[str, Link]) -> dict[str, dict[str, Any]]:
    """Measure every shaped link of ``network`` (a :class:`~flight_parsl.execution.netns.VirtualNetwork`);
    log one warning per link more than 20% off what was asked.

    Returns:
        host -> ``{"asked": ..., "measured": ..., "off": [...], "shaper": ..., "tcp": {"host": ...,
        "coordinator": ...}}`` (summary.json's ``links``; ``tcp``: :func:`tcp_settings` of the host's
        namespace and of the coordinator's).
    """
    out: dict[str, dict[str, Any]] = {}
    coordinator = tcp_settings()
    for name, link in links.items():
        host = network.host(name)
        t0 = time.monotonic()
        pings = 9 if link.rtt_ms < 20 else 5
        measured = measure_link(host.netns, network.address, link, pings)
        off = off_by(link, measured)
        if off:  # once more: a busy machine can slow one transfer down; a link off twice is off
            measured = measure_link(host.netns, network.address, link, pings)
            off = off_by(link, measured)
        measured["check_s"] = round(time.monotonic() - t0, 3)
        if off:
            loss = " (loss slows TCP down)" if link.loss else ""
            log.warning("link of virtual host %s (%s) is more than %d%% off what was asked: %s%s",
                        name, link.describe(), round(TOLERANCE * 100), "; ".join(off), loss)
        out[name] = {"asked": link.asked(), "measured": measured, "off": off,
                     "shaper": getattr(host, "shaper", ""),
                     # the host's sockets (its side's sends) and the coordinator's (the bridge side's)
                     "tcp": {"host": tcp_settings(host.netns), "coordinator": coordinator}}
    return out


def describe_check(checked: Mapping[str, Mapping[str, Any]]) -> str:
    """One line: each link, asked and measured."""
    parts = []
    for name, entry in checked.items():
        m, a = entry["measured"], entry["asked"]
        text = f"{name}: asked {Link.of({'rate': a['rate_bit_s'], 'delay': a['delay_ms'], 'jitter': a['jitter_ms'], 'loss': a['loss_pct']}).describe()}"
        text += f", measured rtt {m['rtt_ms']:.3g} ms"
        if m.get("to_host_bit_s"):
            text += f", in {_rate(m['to_host_bit_s'])}/s, out {_rate(m['from_host_bit_s'])}/s"
        parts.append(text)
    return "links " + "; ".join(parts)


# ------------------------------------------------------------------------ command line


def parse_spec(spec: str, source: str = "start.sh") -> Link:
    """``RATE[,DELAY[,JITTER[,LOSS]]]`` (``100mbit,20ms``) as a checked :class:`Link`.

    Raises:
        ConfigError: in the schema's format, naming ``--link``.
    """
    from flight_parsl.config.schema import check

    items = [x.strip() for x in spec.split(",")]
    if len(items) > 4 or not items[0]:
        raise key_error(source, "--link", spec, "expected RATE[,DELAY[,JITTER[,LOSS]]], e.g. 100mbit,20ms")
    data = {k: v for k, v in zip(("rate", "delay", "jitter", "loss"), items) if v}
    model = check(LinkSchema, data, f"{source} --link")
    normal = normalize_link(model, f"{source} --link", data)
    assert normal is not None
    return Link.of(normal, f"{source} --link")


def _main(argv: list[str]) -> int:
    """The shell's way in (``jobs/local_slurm/start.sh --link``)::

        python -m flight_parsl.execution.links parse SPEC        # RATE_BIT DELAY_MS JITTER_MS LOSS_PCT NETEM(0|1)
        python -m flight_parsl.execution.links netem             # status 0 when this kernel has netem
        python -m flight_parsl.execution.links line SPEC OUT IN  # the delay line's argument for one device pair
        python -m flight_parsl.execution.links shape DEV NETNS SPEC [--no-netem]
    """
    import os

    try:
        if argv[:1] == ["parse"] and len(argv) == 2:
            link = parse_spec(argv[1])
            print(link.rate or 0, link.delay, link.jitter, link.loss, int(link.needs_netem))
            return 0
        if argv[:1] == ["netem"] and len(argv) == 1:
            name = f"fpns-{os.getpid()}-netem-probe"
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
            try:
                return 0 if netem_available(name) else 1
            finally:
                subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=30)
        if argv[:1] == ["line"] and len(argv) == 4:
            link = parse_spec(argv[1])
            print(json.dumps({"outer": argv[2], "inner": argv[3], "delay_ms": link.delay,
                              "jitter_ms": link.jitter, "loss_pct": link.loss}))
            return 0
        if argv[:1] == ["shape"] and len(argv) in (4, 5) and argv[4:] in ([], ["--no-netem"]):
            apply_link(parse_spec(argv[3]), argv[1], argv[2], netem=not argv[4:])
            return 0
    except (ConfigError, ExecutorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"usage: {(_main.__doc__ or '').strip()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
