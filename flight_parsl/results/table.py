"""The scaling results table: one row per run, shared by flight_parsl sweeps and baselines.

Every framework (flight_parsl with each transfer, Flower simulation, Flower gRPC)
appends rows with the same columns, so one table holds a whole comparison and
analysis/ plots it directly. Rows are appended and flushed one at a time; a sweep
that is run again skips a cell only when a row with status ``ok`` has the same
(framework, model, num_workers, transfer, trial, packed) and the same ``config_hash``: a run
with other rounds, training, topology, strategy or seed is a different cell. Rows of
tables written before that column existed never match (their cells run again), and
appending to such a table first rewrites it under today's header.

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
    peak_machine_mb: flight_parsl: rise of the machine's used memory (MemTotal -
        MemAvailable) during the run, peak minus start; counts pages shared between
        processes once, which the per-process figures above count in each process.
    status: ``ok`` or ``failed: <reason>``.
    run_dir: where the run's own files are.
    config_hash: flight_parsl: hash of the run's resolved config without where it writes
        (:func:`flight_parsl.config.experiment.config_hash`); empty for baselines.
    job_id, job_nodes: the Slurm / PBS job the run executed in ($SLURM_JOB_ID / $PBS_JOBID)
        and its nodes; empty outside a batch job.
    cell: flight_parsl: the run's values of a sweep's grid keys, ``key=value key=value``
        (``strategy.mu=2 seed=3``); empty without a grid and for baselines.
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
    "peak_machine_mb",
    "status",
    "run_dir",
    "config_hash",
    "job_id",
    "job_nodes",
    "cell",
)

#: Columns that hold text; rows_to_frame makes every other column numeric.
TEXT_COLUMNS = ("framework", "model", "transfer", "train", "status", "run_dir", "config_hash", "job_id",
                "job_nodes", "cell")

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


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row (writing the header first if the file is new), flushed at once.

    A table written with older columns is first rewritten under today's header.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    new = not p.exists() or p.stat().st_size == 0
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown results columns: {sorted(unknown)}")
    if not new:
        _upgrade(p)
    with p.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in COLUMNS})


def _upgrade(p: Path) -> None:
    """Rewrite a table whose header is not today's COLUMNS under COLUMNS (new cells empty)."""
    with p.open(newline="") as f:
        header = next(csv.reader(f), [])
    if header == list(COLUMNS):
        return
    unknown = set(header) - set(COLUMNS)
    if unknown:
        raise ValueError(f"results table {p} has columns this version does not know: {sorted(unknown)}")
    rows = read_rows(p)
    tmp = p.with_name(p.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k) or "" for k in COLUMNS} for r in rows)
    tmp.replace(p)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """All rows of a results table (empty if the file does not exist)."""
    p = Path(path)
    if not p.exists():
        return []
    with p.open(newline="") as f:
        return list(csv.DictReader(f))


def done_cells(path: str | Path) -> set[CellKey]:
    """Cells already finished with status ``ok``, by their key columns (the baselines' resume)."""
    return {cell_key(r) for r in read_rows(path) if r.get("status") == "ok"}


def done_configs(path: str | Path) -> set[tuple[CellKey, str]]:
    """(cell, config_hash) of the rows finished with status ``ok`` that carry a config hash.

    A sweep cell is done when its key and its config's hash are both in this set.
    """
    return {(cell_key(r), r["config_hash"]) for r in read_rows(path) if r.get("status") == "ok" and r.get("config_hash")}


def rows_to_frame(rows: Iterable[dict[str, Any]]) -> Any:
    """A pandas DataFrame with numeric columns converted."""
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    for col in COLUMNS:
        if col not in TEXT_COLUMNS:
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame
