"""Per-round curves of a sweep: every run's rounds.csv, labelled by its cell, in one frame.

A sweep's results table has one row per run; the curves (test accuracy, training
loss ... per round) stay in each run's ``rounds.csv``. :func:`collect_rounds`
gathers them for plotting: one row per (run, round), with the run's grid values
(the table's ``cell`` column, one column per key) and any other config keys asked
for, read from the run's ``config.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from flight_parsl.results.table import read_rows


def parse_cell(text: str) -> dict[str, str]:
    """The results table's ``cell`` column (``key=value key=value``) as {key: value text}."""
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def config_value(config: dict[str, Any], key: str) -> Any:
    """A dotted key's value in a nested config dict (None if absent)."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def collect_rounds(results: str | Path, keys: Sequence[str] = (), status: str = "ok") -> Any:
    """A pandas DataFrame of every round of every run in ``results`` with ``status``.

    Args:
        results: A results table written by a sweep.
        keys: Config keys to add as columns, read from each run's config.yaml (the
            grid keys of the ``cell`` column are always added, as text).
        status: Only runs with this status (None: all).

    Columns: ``run_dir``, ``cell``, the grid keys, ``keys``, then rounds.csv's columns.
    """
    import pandas as pd

    frames = []
    for row in read_rows(results):
        if status is not None and row.get("status") != status:
            continue
        run_dir = Path(row["run_dir"])
        rounds_path = run_dir / "rounds.csv"
        if not rounds_path.exists():
            continue
        rounds = pd.read_csv(rounds_path)
        labels: dict[str, Any] = {"run_dir": str(run_dir), "cell": row.get("cell", "")}
        labels.update(parse_cell(row.get("cell") or ""))
        if keys:
            config_path = run_dir / "config.yaml"
            config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
            labels.update({key: config_value(config, key) for key in keys})
        for name, value in reversed(list(labels.items())):
            rounds.insert(0, name, [value] * len(rounds))
        frames.append(rounds)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
