"""Progress display on the terminal: a live counter per round and one line per round.

On a terminal the current round's line is redrawn as workers finish; elsewhere
(logs, CI) only the finished-round lines are printed.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


class Progress:
    """Prints what the engine is doing."""

    def __init__(self, rounds: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.rounds = rounds
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._round_start = 0.0
        self._last_draw = 0.0
        self._slots_said = 0

    def say(self, text: str) -> None:
        """Print one line."""
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def slots_ready(self, ready: int, total: int) -> None:
        """Warm-up progress: ``ready`` of ``total`` slots have started (a bar on a terminal)."""
        if not self.enabled:
            return
        if self.live:
            width = 30
            filled = width * ready // max(total, 1)
            self.stream.write(f"\rslots ready {ready}/{total} [{'#' * filled}{'.' * (width - filled)}]")
            if ready >= total:
                self.stream.write("\n")
            self.stream.flush()
        elif (ready >= total) != (self._slots_said >= total) or time.perf_counter() - self._last_draw >= 5.0:
            self._last_draw = time.perf_counter()
            print(f"slots ready {ready}/{total}", file=self.stream, flush=True)
        self._slots_said = ready

    def start_round(self, round_idx: int, participants: int) -> None:
        """A round was submitted."""
        self._round_start = time.perf_counter()
        self.task_done(round_idx, 0, participants, force=True)

    def task_done(self, round_idx: int, done: int, total: int, force: bool = False) -> None:
        """A worker's result was folded in (redrawn at most 10 times a second)."""
        now = time.perf_counter()
        if not self.live or (not force and done < total and now - self._last_draw < 0.1):
            return
        self._last_draw = now
        elapsed = now - self._round_start
        self.stream.write(f"\rround {round_idx + 1}/{self.rounds}  clients {done}/{total}  {elapsed:6.1f}s")
        self.stream.flush()

    def end_round(
        self, round_idx: int, done: int, total: int, seconds: float, loss: float, acc: float, retries: int = 0
    ) -> None:
        """A round finished (``done`` of ``total`` clients returned; ``retries`` resubmissions)."""
        if not self.enabled:
            return
        line = (
            f"round {round_idx + 1}/{self.rounds}  clients {done}/{total}  "
            f"test loss {_fmt(loss, '.4f')}  acc {_fmt(acc, '.4f')}  {seconds:6.2f}s"
            + (f"  ({retries} retried)" if retries else "")
        )
        prefix = "\r\033[K" if self.live else ""
        print(prefix + line, file=self.stream, flush=True)
