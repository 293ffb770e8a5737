"""The scaling results table: one row per run, shared by flight_parsl sweeps and baselines.

Every framework (flight_parsl with each transfer, Flower simulation, Flower gRPC)
appends rows with the same columns, so one table holds a whole comparison and
analysis/ plots it directly. Rows are appended and flushed one at a time; a sweep
that is run again skips the (framework, model, num_workers, transfer, trial,
packed) cells already present with status ``ok``.

Columns:
    framework: ``flight_parsl``, ``flower-simulation`` or ``flower-grpc``.
    model, num_workers (clients), transfer (``parsl``/``redis``/``file``; Flower:
    ``ray``/``grpc``), trial, train (``none``/``local``), rounds.
    slots: flight_parsl's worker processes (summary.json's ``slots``); fewer than
        num_workers means the clients were packed onto the slots. Empty for Flower
        and for rows written before the column existed (those flight_parsl runs had
        one worker process per client).
    start, dfk_start_done, priming_done, end: Unix seconds (for Flower: start = first
        client launch or engine start, dfk_start_done = server/engine up,
        priming_done = first round starts).
    start2end, prime2end: seconds (prime2end is the measured rounds).
    round_makespan_s: mean seconds from a round's start to its aggregate being ready.
    bytes_moved: model payload bytes sent and received, all rounds.
    peak_rss_mb: peak RSS of the coordinator/server process.
    peak_rss_workers_mb: sum over worker/client processes of each one's peak RSS.
    status: ``ok`` or ``failed: <reason>``.
    run_dir: where the run's own files are.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

COLUMNS = (
    "framework",
    "model",
    "num_workers",
    "slots",
    "transfer",
    "trial",
    "train",
    "rounds",
    "start",
    "dfk_start_done",
    "priming_done",
    "end",
    "start2end",
    "prime2end",
    "round_makespan_s",
    "bytes_moved",
    "peak_rss_mb",
    "peak_rss_workers_mb",
    "status",
    "run_dir",
)

CellKey = tuple[str, str, int, str, int, bool]


def is_packed(row: dict[str, Any]) -> bool:
    """Whether a row's clients were packed onto fewer slots than clients (unknown slots: no)."""
    slots = str(row.get("slots") or "").strip()
    try:
        return bool(slots) and int(float(slots)) < int(row["num_workers"])
    except (TypeError, ValueError):
        return False


def cell_key(row: dict[str, Any]) -> CellKey:
    """The identity of a sweep cell: framework, model, workers, transfer, trial, packed."""
    return (
        str(row["framework"]), str(row["model"]), int(row["num_workers"]), str(row["transfer"]), int(row["trial"]),
        is_packed(row),
    )


def _upgrade_header(p: Path) -> None:
    """Rewrite a table written with older columns (a subset of COLUMNS) under the current header."""
    with p.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
    if header == list(COLUMNS):
        return
    unknown = set(header) - set(COLUMNS)
    if unknown:
        raise ValueError(f"{p}: unknown results columns {sorted(unknown)}; not a results table of this version")
    rows = read_rows(p)
    tmp = p.with_name(p.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k) or "" for k in COLUMNS} for r in rows)
    tmp.replace(p)


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row (writing the header first if the file is new), flushed at once.

    A table written with an older set of columns is first rewritten under the current
    header (new columns empty), so its rows and the new ones line up.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    new = not p.exists() or p.stat().st_size == 0
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown results columns: {sorted(unknown)}")
    if not new:
        _upgrade_header(p)
    with p.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in COLUMNS})


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """All rows of a results table (empty if the file does not exist)."""
    p = Path(path)
    if not p.exists():
        return []
    with p.open(newline="") as f:
        return list(csv.DictReader(f))


def done_cells(path: str | Path) -> set[CellKey]:
    """Cells already finished with status ``ok``."""
    return {cell_key(r) for r in read_rows(path) if r.get("status") == "ok"}


def rows_to_frame(rows: Iterable[dict[str, Any]]) -> Any:
    """A pandas DataFrame with numeric columns converted."""
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    for col in COLUMNS:
        if col not in ("framework", "model", "transfer", "train", "status", "run_dir"):
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame
