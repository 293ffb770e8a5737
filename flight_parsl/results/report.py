"""See a run at a glance: one self-contained HTML file (and its PNGs) from a run directory.

:func:`write_report` reads a run directory (``rounds.csv``, ``tasks.csv``,
``summary.json``, ``config.yaml``; see :mod:`flight_parsl.engine.records`) and draws

* ``accuracy``: test accuracy against wall time (seconds since the run started) and
  against the round; rounds with failures are marked;
* ``makespans``: each round's makespan (its aggregation part darker); rounds with
  failures red, their failed clients and retried tasks written above the bar;
* ``gantt``: every task on every slot, one lane per slot named by host/pid (and thread
  or site where there are several), from the task's start to its end on the slot:
  the gaps are the slot's idle time (its share of the measured rounds is in the lane's
  name); failed attempts red, late ones orange, retries hatched, round starts dotted;
* ``bytes``: bytes per round, per site (several sites), per tree edge (a hierarchy:
  the tasks reporting to each node) or else down / up; beside it the bytes the kernel
  counted on each virtual host's link, per round (rounds.csv ``link_bytes``) or, for a run
  directory from before that column, over the whole run (summary.json's ``site_links``);

and the summary (summary.json), the failed attempts and the config as tables.

For a sweep's results table (:mod:`flight_parsl.results.table`) it draws the scaling
curves instead: whole run, measured rounds, mean round makespan, bytes and memory
against the client count, one line per framework / transfer / model / training (median
over the runs of a point, bars min to max), and each run's test accuracy per round where
its rounds.csv is there.

The HTML embeds its PNGs as base64 ``data:`` URLs and forbids every network request
(a Content-Security-Policy); the same PNGs are written beside it. Figures are drawn on
matplotlib's Agg canvas (``Figure``, never pyplot). Needs matplotlib and pandas
(``pip install -e ".[analysis]"``).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flight_parsl.core.errors import FlightParslError

#: The charts of a run report and of a sweep report, in page order.
RUN_CHARTS = ("accuracy", "makespans", "gantt", "bytes")
SWEEP_CHARTS = ("scaling", "memory", "curves")
#: Lanes drawn in the Gantt chart at most (a note says how many were left out).
MAX_LANES = 96
FAILED = ("error", "lost", "deadline")
LATE = ("late",)


class ReportError(FlightParslError):
    """The input is not a run directory or a results table, or cannot be drawn."""


@dataclass
class Chart:
    """One figure of the report: its short name, title, caption and PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes


@dataclass
class Report:
    """What the HTML page holds."""

    title: str
    source: Path
    kind: str  # "run" or "sweep"
    charts: list[Chart] = field(default_factory=list)
    tables: list[tuple[str, str]] = field(default_factory=list)  # (title, HTML)
    notes: list[str] = field(default_factory=list)


# --- inputs -----------------------------------------------------------------------


def source_kind(source: str | Path) -> tuple[str, Path]:
    """("run", RUN_DIR) or ("sweep", RESULTS_CSV) for what the command was given.

    A directory with ``rounds.csv`` or ``summary.json`` is a run; a ``.csv`` file whose
    header has ``framework`` and ``num_workers`` is a sweep's results table; a directory
    with ``results.csv`` and no run files is a sweep's folder.

    Raises:
        ReportError: none of those.
    """
    path = Path(source)
    if path.is_dir():
        if (path / "rounds.csv").is_file() or (path / "summary.json").is_file():
            return "run", path
        if (path / "results.csv").is_file():
            return "sweep", path / "results.csv"
        raise ReportError(f"{path} is neither a run directory (no rounds.csv, no summary.json) nor a sweep's "
                          "folder (no results.csv)")
    if path.is_file():
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if {"framework", "num_workers"} <= set(header):
            return "sweep", path
        raise ReportError(f"{path} is not a sweep's results table (its header has no framework / num_workers)")
    raise ReportError(f"{path} does not exist")


def default_out(kind: str, path: Path) -> Path:
    """Where the HTML goes by default: ``RUN_DIR/report.html``, or beside the results table."""
    return path / "report.html" if kind == "run" else path.with_name(f"{path.stem}-report.html")


def png_path(out: Path, chart: str) -> Path:
    """The PNG of ``chart`` beside the HTML file ``out``: ``<stem>-<chart>.png``."""
    return out.with_name(f"{out.stem}-{chart}.png")


def _read_csv(path: Path) -> Any:
    import pandas as pd

    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _num(frame: Any, column: str) -> Any:
    """A column as floats (NaN where empty or absent)."""
    import pandas as pd

    if column not in frame:
        return pd.Series([math.nan] * len(frame), index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce")


def _text(frame: Any, column: str) -> Any:
    import pandas as pd

    if column not in frame:
        return pd.Series([""] * len(frame), index=frame.index, dtype=str)
    column_values = frame[column]
    text = column_values.astype(object).where(column_values.notna(), "").astype(str)
    return text.str.replace(r"\.0$", "", regex=True)  # ids read as floats where a row lacks them


@dataclass
class RunData:
    """A run directory's tables."""

    path: Path
    rounds: Any
    tasks: Any
    summary: dict[str, Any]
    config_text: str

    @property
    def t0(self) -> float:
        """The run's start (Unix seconds): summary.json's ``start``, else the first round's."""
        start = self.summary.get("start")
        if isinstance(start, (int, float)):
            return float(start)
        starts = _num(self.rounds, "start").dropna()
        return float(starts.min()) if len(starts) else 0.0


def load_run(run_dir: Path) -> RunData:
    summary_path = run_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise ReportError(f"{summary_path}: not JSON ({exc})") from None
    config = run_dir / "config.yaml"
    return RunData(run_dir, _read_csv(run_dir / "rounds.csv"), _read_csv(run_dir / "tasks.csv"), summary,
                   config.read_text() if config.is_file() else "")


def distinct_tasks(tasks: Any) -> Any:
    """One row per task attempt (``task_*`` columns repeat over a packed task's clients), with
    ``task_status``: the worst status of its rows (failed, then late, then the first row's)."""
    if tasks.empty:
        return tasks
    keys = [k for k in ("segment", "round", "kind", "task", "attempt") if k in tasks]
    first = tasks.drop_duplicates(subset=keys, keep="first")
    if "status" not in tasks:
        return first.reset_index(drop=True)
    rank = tasks["status"].map(lambda s: 2 if s in FAILED else 1 if s in LATE else 0)
    worst = (tasks.assign(_rank=rank).sort_values("_rank", ascending=False, kind="stable")
             .drop_duplicates(subset=keys, keep="first")[keys + ["status"]].rename(columns={"status": "task_status"}))
    return first.merge(worst, on=keys, how="left").reset_index(drop=True)


def slot_labels(tasks: Any) -> Any:
    """Each task row's slot lane: ``host/pid``, ``/thread`` when a pid runs several, ``@site``."""
    host, pid, thread, site = (_text(tasks, c) for c in ("host", "pid", "thread", "site"))
    label = host.where(host != "", "?") + "/" + pid.where(pid != "", "?")
    threads_per_pid = thread.groupby(label).transform("nunique")
    label = label.where(~((threads_per_pid > 1) & (thread != "")), label + "/t" + thread)
    label = label.where(site == "", label + " @" + site)
    no_slot = (host == "") & (pid == "")
    return label.where(~no_slot, "(no slot)")


# --- drawing helpers ---------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _failures_per_round(run: RunData) -> dict[int, tuple[int, int]]:
    """round -> (failed clients, retried tasks), for rounds with either."""
    out: dict[int, tuple[int, int]] = {}
    r = run.rounds
    if r.empty or "round" not in r:
        return out
    failed, retries = _num(r, "failed").fillna(0), _num(r, "retries").fillna(0)
    for number, f, t in zip(_num(r, "round"), failed, retries):
        if (f > 0 or t > 0) and not math.isnan(number):
            out[int(number)] = (int(f), int(t))
    return out


# --- the run's charts --------------------------------------------------------------


def chart_accuracy(run: RunData) -> Chart:
    fig = _figure(11, 3.6)
    by_time, by_round = fig.subplots(1, 2)
    r = run.rounds
    acc = _num(r, "test_acc")
    failures = _failures_per_round(run)
    caption = "Test accuracy of the global model after each round"
    if r.empty or acc.dropna().empty:
        why = "no rounds" if r.empty else "no test accuracy (train.mode none: nothing is trained)"
        _empty(by_time, why)
        _empty(by_round, why)
        caption = f"Test accuracy: {why}"
    else:
        wall = _num(r, "end") - run.t0
        rounds = _num(r, "round")
        series = [("test_acc", "test accuracy", "C0")]
        series += [(c, c.replace("_", " "), color) for c, color in (("proxy_test_acc", "C2"), ("global_train_acc", "C1"))
                   if not _num(r, c).dropna().empty]
        for column, label, color in series:
            values = _num(r, column)
            by_time.plot(wall, values, marker="o", ms=3, color=color, label=label)
            by_round.plot(rounds, values, marker="o", ms=3, color=color, label=label)
        primed = run.summary.get("priming_done")
        if isinstance(primed, (int, float)) and primed > run.t0:
            by_time.axvspan(0, primed - run.t0, color="0.85", label="start-up (until the slots are primed)")
            by_time.set_xlim(left=0)
            by_time.legend(loc="lower right", fontsize=8)
        bad = rounds.isin(list(failures))
        if bad.any():
            for ax, x in ((by_time, wall), (by_round, rounds)):
                ax.scatter(x[bad], acc[bad], s=80, facecolors="none", edgecolors="red", linewidths=1.5,
                           label="round with failures", zorder=3)
        by_time.set_xlabel("wall time since the run started (s)")
        by_round.set_xlabel("round")
        from matplotlib.ticker import MaxNLocator

        by_round.xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in (by_time, by_round):
            ax.set_ylabel("accuracy")
            ax.grid(alpha=0.3)
        by_round.legend(loc="lower right", fontsize=8)
        final = acc.dropna().iloc[-1]
        caption += f"; final {final:.4f} after {len(r)} rounds, {float(wall.max()):.1f} s into the run"
        if isinstance(primed, (int, float)) and primed > run.t0:
            caption += f", of which {primed - run.t0:.1f} s start-up (grey: until every slot was primed)"
        caption += "."
    fig.suptitle("Test accuracy against wall time and against round")
    return Chart("accuracy", "Test accuracy", caption, _png(fig))


def chart_makespans(run: RunData) -> Chart:
    fig = _figure(11, 3.4)
    ax = fig.subplots()
    r = run.rounds
    failures = _failures_per_round(run)
    if r.empty:
        _empty(ax, "no rounds")
        caption = "Round makespans: no rounds"
    else:
        rounds, makespan, aggregate = _num(r, "round"), _num(r, "makespan_s"), _num(r, "aggregate_s").fillna(0)
        colors = ["#d62728" if int(n) in failures else "#1f77b4" for n in rounds]
        ax.bar(rounds, makespan, color=colors, alpha=0.75, label="makespan (start to aggregate ready)")
        ax.bar(rounds, aggregate.clip(upper=makespan), color="0.2", alpha=0.6, label="aggregation on the coordinator")
        for n, height in zip(rounds, makespan):
            if int(n) in failures:
                f, t = failures[int(n)]
                text = "\n".join(part for count, part in ((f, f"{f} failed"), (t, f"{t} retried")) if count)
                ax.annotate(text, (n, height), ha="center", va="bottom", fontsize=7,
                            color="#d62728", xytext=(0, 2), textcoords="offset points")
        if failures:
            from matplotlib.patches import Patch

            handles, labels = ax.get_legend_handles_labels()
            handles.append(Patch(color="#d62728", alpha=0.75))
            labels.append("round with failed clients or retries")
            ax.legend(handles, labels, fontsize=8, loc="upper right")
        else:
            ax.legend(fontsize=8, loc="upper right")
        ax.set_xlabel("round")
        ax.set_ylabel("seconds")
        ax.grid(axis="y", alpha=0.3)
        if len(rounds) <= 30:
            ax.set_xticks(rounds)
        top = float(makespan.max()) if makespan.notna().any() else 1.0
        ax.set_ylim(0, top * 1.3 if top > 0 else 1)
        caption = (f"Round makespans: median {float(makespan.median()):.3f} s, max {float(makespan.max()):.3f} s over "
                   f"{len(r)} rounds; {len(failures)} round(s) with failed clients or retries.")
    fig.suptitle("Round makespans")
    return Chart("makespans", "Round makespans", caption, _png(fig))


def chart_gantt(run: RunData) -> tuple[Chart, list[str]]:
    notes: list[str] = []
    tasks = distinct_tasks(run.tasks)
    if not tasks.empty:
        tasks["lane"] = slot_labels(tasks)
        start = _num(tasks, "task_started").fillna(_num(tasks, "task_submitted"))
        end = _num(tasks, "task_finished").fillna(_num(tasks, "task_received"))
        tasks["t_start"], tasks["t_end"] = start - run.t0, end - run.t0
        tasks = tasks[tasks["t_start"].notna() & tasks["t_end"].notna()]
        if "status" in tasks:
            tasks = tasks[tasks["status"] != "dropped"]
    lanes: list[str] = sorted(tasks["lane"].unique(), key=_lane_order) if not tasks.empty else []
    if len(lanes) > MAX_LANES:
        notes.append(f"Gantt chart: {len(lanes)} slots; the first {MAX_LANES} are drawn.")
        lanes = lanes[:MAX_LANES]
    fig = _figure(11, min(2.0 + 0.32 * max(len(lanes), 1), 40))
    ax = fig.subplots()
    if not lanes:
        _empty(ax, "no task ran on a slot" if run.tasks.empty else "no task has slot times")
        caption = "Slots' tasks: none recorded"
    else:
        from matplotlib.patches import Patch

        window = _measured_window(run, tasks)
        busy: dict[str, float] = {}
        for index, lane in enumerate(lanes):
            mine = tasks[tasks["lane"] == lane]
            busy[lane] = _union_length(list(zip(mine["t_start"], mine["t_end"])), window)
            for row in mine.itertuples():
                status = getattr(row, "task_status", getattr(row, "status", "ok"))
                color = _task_color(str(status), str(getattr(row, "kind", "train")))
                hatch = "///" if _attempt(row) > 0 else None
                ax.broken_barh([(row.t_start, max(row.t_end - row.t_start, 1e-4))], (index - 0.4, 0.8),
                               facecolors=color, edgecolor="black" if hatch else color, linewidth=0.4, hatch=hatch)
                if status in FAILED:
                    ax.plot(row.t_end, index, marker="x", color="black", ms=6)
        span = window[1] - window[0]
        ax.set_yticks(range(len(lanes)))
        ax.set_yticklabels([f"{lane}  idle {100 * (1 - busy[lane] / span):.0f}%" if span > 0 and lane != "(no slot)"
                            else lane for lane in lanes], fontsize=7 if len(lanes) > 24 else 8)
        ax.invert_yaxis()
        starts = (_num(run.rounds, "start") - run.t0).dropna() if not run.rounds.empty else []
        for n, t in zip(_num(run.rounds, "round"), starts):
            ax.axvline(t, color="0.5", linestyle=":", linewidth=0.8)
            if len(starts) <= 40:
                ax.annotate(f"r{int(n)}", (t, 0), xycoords=("data", "axes fraction"), xytext=(2, 2),
                            textcoords="offset points", fontsize=7, color="0.4")
        ax.set_xlabel("seconds since the run started (slot clock)")
        ax.grid(axis="x", alpha=0.3)
        legend = [Patch(color=_task_color("ok", "train"), label="train task"),
                  Patch(color=_task_color("ok", "aggregate"), label="aggregate / relay task"),
                  Patch(color=_task_color("error", "train"), label="failed (error, lost, deadline)"),
                  Patch(color=_task_color("late", "train"), label="late"),
                  Patch(facecolor="white", edgecolor="black", hatch="///", label="retry (attempt > 0)")]
        ax.legend(handles=legend, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        real = [lane for lane in lanes if lane != "(no slot)"] or lanes
        mean_idle = 100 * (1 - sum(busy[lane] for lane in real) / (span * len(real))) if span > 0 else 0.0
        slots = [lane for lane in lanes if lane != "(no slot)"]
        caption = (f"Every task attempt on every slot ({len(tasks)} attempts on {len(slots)} slots), from its start to "
                   f"its end on the slot; gaps are idle time. Idle share of the measured rounds "
                   f"({span:.2f} s from the first round's start): {mean_idle:.0f}% on average.")
        if len(slots) < len(lanes):
            caption += (" Lane (no slot): attempts whose slot was not recorded (a task that failed before it "
                        "reported its host), drawn from submission to the coordinator's receipt.")
    fig.suptitle("Slots' tasks (Gantt)")
    return Chart("gantt", "Slots' tasks", caption, _png(fig)), notes


def _lane_order(lane: str) -> tuple[int, str]:
    return (1 if lane == "(no slot)" else 0, lane)


def _attempt(row: Any) -> int:
    value = getattr(row, "attempt", 0)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _task_color(status: str, kind: str) -> str:
    if status in FAILED:
        return "#d62728"
    if status in LATE:
        return "#ff7f0e"
    return "#9467bd" if kind in ("aggregate", "relay") else "#1f77b4"


def _measured_window(run: RunData, tasks: Any) -> tuple[float, float]:
    """The measured rounds: first round's start to the last round's end (else the tasks' span)."""
    starts, ends = _num(run.rounds, "start").dropna(), _num(run.rounds, "end").dropna()
    if len(starts) and len(ends):
        return float(starts.min()) - run.t0, float(ends.max()) - run.t0
    return float(tasks["t_start"].min()), float(tasks["t_end"].max())


def _union_length(spans: list[tuple[float, float]], window: tuple[float, float]) -> float:
    """Length of the union of the spans, clipped to the window."""
    total, current_end = 0.0, -math.inf
    for a, b in sorted((max(a, window[0]), min(b, window[1])) for a, b in spans):
        if b <= a:
            continue
        if a > current_end:
            total += b - a
            current_end = b
        elif b > current_end:
            total += b - current_end
            current_end = b
    return total


def bytes_per_round(run: RunData) -> tuple[str, Any]:
    """("site" | "edge" | "direction", frame round x group of bytes) for the bytes chart."""
    import pandas as pd

    tasks = distinct_tasks(run.tasks)
    if not tasks.empty and "round" in tasks:
        tasks = tasks.assign(_bytes=_num(tasks, "task_bytes_in").fillna(0) + _num(tasks, "task_bytes_out").fillna(0))
        sites = _text(tasks, "site")
        nodes = _text(tasks, "node")
        if sites[sites != ""].nunique() > 1:
            return "site", tasks.assign(_g=sites.where(sites != "", "(coordinator)")).pivot_table(
                index="round", columns="_g", values="_bytes", aggfunc="sum", fill_value=0)
        if nodes[nodes != ""].nunique() > 1:
            kinds = _text(tasks, "kind")
            label = ("clients -> " + nodes).where(kinds == "train", nodes + " -> up")
            return "edge", tasks.assign(_g=label).pivot_table(
                index="round", columns="_g", values="_bytes", aggfunc="sum", fill_value=0)
    r = run.rounds
    if r.empty:
        return "direction", pd.DataFrame()
    frame = pd.DataFrame({"to workers (broadcast)": _num(r, "bytes_to_workers").fillna(0).values,
                          "from workers (results)": _num(r, "bytes_from_workers").fillna(0).values},
                         index=_num(r, "round").astype("Int64").values)
    return "direction", frame


def link_bytes_per_round(run: RunData) -> Any:
    """Frame round x ``HOST down`` / ``HOST up`` of the bytes the kernel counted on each virtual
    host's link per round (rounds.csv ``link_bytes``); empty when the run has none."""
    import pandas as pd

    rows: dict[int, dict[str, float]] = {}
    if "link_bytes" in run.rounds and "round" in run.rounds:
        for rnd, cell in zip(_num(run.rounds, "round"), _text(run.rounds, "link_bytes")):
            if not cell or rnd != rnd:
                continue
            try:
                counts = json.loads(cell)
            except ValueError:
                continue
            rows[int(rnd)] = {f"{host} {label}": float(v.get(way, 0)) for host, v in sorted(counts.items())
                              for way, label in (("to_host", "down"), ("from_host", "up"))}
    return pd.DataFrame.from_dict(rows, orient="index").sort_index() if rows else pd.DataFrame()


def chart_bytes(run: RunData) -> Chart:
    per_round = link_bytes_per_round(run)
    links = run.summary.get("site_links") or {}
    if not per_round.empty:
        links = links or {"": {}}
    fig = _figure(11, 3.6)
    axes = fig.subplots(1, 2, width_ratios=[3, 1]) if links else [fig.subplots()]
    ax = axes[0]
    group, frame = bytes_per_round(run)
    if frame.empty or float(frame.to_numpy().sum()) == 0:
        _empty(ax, "no bytes recorded")
        caption = "Bytes per round: none recorded"
    else:
        bottom = None
        for i, column in enumerate(frame.columns[:20]):
            values = frame[column].astype(float) / 1e6
            ax.bar(frame.index.astype(float), values, bottom=bottom, label=str(column), color=f"C{i % 10}")
            bottom = values if bottom is None else bottom + values
        if len(frame.columns) > 20:
            ax.text(0.99, 0.98, f"{len(frame.columns) - 20} more groups not drawn", transform=ax.transAxes,
                    ha="right", va="top", fontsize=7)
        edge = _num(run.rounds, "edge_bytes") / 1e6
        moved = _num(run.rounds, "bytes_moved") / 1e6
        if group == "edge" and edge.notna().any() and not edge.equals(moved):
            ax.plot(_num(run.rounds, "round"), edge, color="black", marker=".", label="edge_bytes (every tree edge)")
        ax.set_xlabel("round")
        ax.set_ylabel("MB")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0) if not links else (0, 1))
        if len(frame.index) <= 30:
            ax.set_xticks(frame.index.astype(float))
        per = {"site": "per site (the tasks' reads and writes)",
               "edge": "per tree edge: what the train tasks under each node and each aggregator's task read and "
                       "wrote (a cached broadcast reads nothing); the line is the engine's edge_bytes",
               "direction": "down (to the workers) and up (from the workers)"}[group]
        caption = (f"Model bytes per round {per}: {frame.to_numpy().sum() / 1e6:.2f} MB in all over "
                   f"{len(frame.index)} rounds.")
    if not per_round.empty:
        link_ax = axes[1]
        width = 0.8 / len(per_round.columns)
        for i, column in enumerate(per_round.columns):
            link_ax.bar(per_round.index.astype(float) - 0.4 + (i + 0.5) * width, per_round[column] / 1e6,
                        width=width, label=str(column))
        link_ax.set_xlabel("round")
        link_ax.set_ylabel("MB per round")
        link_ax.set_title("site links (kernel counters)", fontsize=9)
        link_ax.legend(fontsize=7)
        if len(per_round.index) <= 30:
            link_ax.set_xticks(per_round.index.astype(float))
        caption += (" Right: the bytes the kernel counted on each virtual host's link per round (rounds.csv "
                    "link_bytes: every protocol; down is into the host).")
    elif links:
        link_ax = axes[1]
        hosts = list(links)
        to_host = [links[h].get("to_host", 0) / 1e6 for h in hosts]
        from_host = [links[h].get("from_host", 0) / 1e6 for h in hosts]
        positions = range(len(hosts))
        link_ax.bar([p - 0.2 for p in positions], to_host, width=0.4, label="to host")
        link_ax.bar([p + 0.2 for p in positions], from_host, width=0.4, label="from host")
        link_ax.set_xticks(list(positions))
        link_ax.set_xticklabels(hosts, fontsize=8, rotation=30)
        link_ax.set_ylabel("MB (whole run)")
        link_ax.set_title("site links (kernel counters)", fontsize=9)
        link_ax.legend(fontsize=7)
        caption += " Right: the bytes the kernel counted on each virtual host's link over the whole run (every protocol)."
    fig.suptitle("Bytes per round")
    return Chart("bytes", "Bytes per round", caption, _png(fig))


# --- tables ------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, float) and 1e9 < value < 1e11:  # a Unix time
        return f"{value:.3f} ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(value))})"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value)
        return text if len(text) <= 300 else text[:297] + "..."
    return str(value)


def table_html(rows: list[list[Any]], header: list[str] | None = None, css: str = "") -> str:
    """An HTML table of the rows, every cell escaped."""
    out = [f'<table class="{css}">'] if css else ["<table>"]
    if header:
        out.append("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def summary_table(summary: dict[str, Any]) -> str:
    return table_html([[key, value] for key, value in summary.items()], ["key", "value"], "summary")


def failures_table(run: RunData, limit: int = 100) -> str | None:
    t = run.tasks
    if t.empty or "status" not in t:
        return None
    bad = t[t["status"].isin(FAILED + LATE)]
    if bad.empty:
        return None
    columns = [c for c in ("round", "kind", "task", "attempt", "client", "status", "host", "pid", "site", "error") if c in bad]
    cells = bad[columns].astype(object)
    rows = cells.where(cells.notna(), "").astype(str).values.tolist()[:limit]
    note = f"<p>{len(bad)} failed or late rows; the first {limit} shown.</p>" if len(bad) > limit else ""
    retried = int(_num(run.rounds, "retries").fillna(0).sum()) if not run.rounds.empty else 0
    return f"<p>{len(bad)} client row(s) failed or late; {retried} task(s) retried.</p>" + note + table_html(rows, columns)


# --- the sweep's charts ------------------------------------------------------------


SERIES_KEYS = ["framework", "transfer", "model", "train"]


def _series(frame: Any) -> Any:
    """A label per row naming what differs between the table's lines."""
    varying = [k for k in SERIES_KEYS if k in frame and frame[k].astype(str).nunique() > 1]
    if not varying:
        varying = [k for k in ("framework", "model") if k in frame]
    return frame[varying].astype(str).agg(" / ".join, axis=1)


def _scaling_axes(ax: Any, frame: Any, metric: str, label: str, scale: float = 1.0) -> bool:
    """Median over the rows of each (series, clients), bars min to max; False if nothing to draw."""
    values = _num(frame, metric) / scale
    data = frame.assign(_v=values, _x=_num(frame, "num_workers")).dropna(subset=["_v", "_x"])
    if data.empty:
        _empty(ax, f"no {metric}")
        return False
    for i, (name, group) in enumerate(sorted(data.groupby("_series"), key=lambda kv: str(kv[0]))):
        stats = group.groupby("_x")["_v"].agg(["median", "min", "max"]).sort_index()
        ax.errorbar(stats.index, stats["median"], yerr=[stats["median"] - stats["min"], stats["max"] - stats["median"]],
                    marker="o", ms=4, capsize=3, label=str(name), color=f"C{i % 10}")
    xs = data["_x"]
    if xs.max() / max(xs.min(), 1) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("clients (num_workers)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    return True


def chart_scaling(frame: Any) -> Chart:
    fig = _figure(11, 6.6)
    axes = fig.subplots(2, 2).ravel()
    metrics = [("start2end", "whole run, start2end (s)", 1.0), ("prime2end", "measured rounds, prime2end (s)", 1.0),
               ("round_makespan_s", "mean round makespan (s)", 1.0), ("bytes_moved", "model bytes moved (MB)", 1e6)]
    drawn = [_scaling_axes(ax, frame, m, label, scale) for ax, (m, label, scale) in zip(axes, metrics)]
    if any(drawn):
        handles, labels = next(ax for ax, d in zip(axes, drawn) if d).get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
    fig.suptitle("Scaling: time and bytes against the client count (median, bars min to max)")
    points = frame.groupby(["_series", _num(frame, "num_workers")]).ngroups if not frame.empty else 0
    caption = f"{len(frame)} runs with status ok, {points} points (series x client count)."
    return Chart("scaling", "Scaling curves", caption, _png(fig))


def chart_memory(frame: Any) -> Chart:
    fig = _figure(11, 3.4)
    axes = fig.subplots(1, 3)
    metrics = [("peak_rss_mb", "coordinator peak RSS (MB)"), ("peak_rss_workers_mb", "workers' summed peak RSS (MB)"),
               ("peak_machine_mb", "machine memory rise (MB)")]
    for ax, (metric, label) in zip(axes, metrics):
        if _scaling_axes(ax, frame, metric, label):
            ax.legend(fontsize=7)
    fig.suptitle("Memory against the client count")
    return Chart("memory", "Memory", "Peak memory per run (median, bars min to max).", _png(fig))


def chart_curves(results: Path, frame: Any) -> Chart | None:
    from flight_parsl.results.curves import collect_rounds

    try:
        rounds = collect_rounds(results)
    except (OSError, ValueError):
        return None
    if rounds.empty or "test_acc" not in rounds or _num(rounds, "test_acc").dropna().empty:
        return None
    fig = _figure(11, 3.8)
    ax = fig.subplots()
    runs = list(dict.fromkeys(rounds["run_dir"]))
    for i, run_dir in enumerate(runs[:20]):
        mine = rounds[rounds["run_dir"] == run_dir]
        row = frame[frame["run_dir"] == run_dir]
        label = mine["cell"].iloc[0] or (f"{row['model'].iloc[0]} x{row['num_workers'].iloc[0]}" if len(row) else run_dir)
        ax.plot(_num(mine, "round"), _num(mine, "test_acc"), marker="o", ms=3, label=str(label)[:60], color=f"C{i % 10}")
    ax.set_xlabel("round")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("Test accuracy per round, each run")
    note = f" (the first 20 of {len(runs)} runs)" if len(runs) > 20 else ""
    return Chart("curves", "Accuracy curves", f"Each run's test accuracy per round{note}.", _png(fig))


# --- building and writing ------------------------------------------------------------


def build_run_report(run_dir: Path) -> Report:
    run = load_run(run_dir)
    status = run.summary.get("status", "?")
    report = Report(f"flight_parsl run {run_dir.name}", run_dir, "run")
    report.charts.append(chart_accuracy(run))
    report.charts.append(chart_makespans(run))
    gantt, notes = chart_gantt(run)
    report.charts.append(gantt)
    report.notes += notes
    report.charts.append(chart_bytes(run))
    lines = [f"status <b>{html.escape(str(status))}</b>"]
    for key, label in (("start2end", "start2end"), ("prime2end", "prime2end"), ("final_test_acc", "final test accuracy"),
                       ("slots", "slots"), ("workers", "clients"), ("model", "model")):
        if key in run.summary:
            lines.append(f"{label} {html.escape(_cell(run.summary[key]))}")
    report.notes.insert(0, " &middot; ".join(lines))
    report.tables.append(("Summary (summary.json)", summary_table(run.summary)))
    failures = failures_table(run)
    report.tables.append(("Failures and retries", failures or "<p>No task failed, none was late or retried.</p>"))
    if run.config_text:
        report.tables.append(("Config (config.yaml)", f"<pre>{html.escape(run.config_text)}</pre>"))
    return report


def build_sweep_report(results: Path) -> Report:
    from flight_parsl.results.table import read_rows, rows_to_frame

    frame = rows_to_frame(read_rows(results))
    report = Report(f"flight_parsl sweep {results}", results, "sweep")
    ok = frame[frame["status"] == "ok"].copy() if not frame.empty else frame
    if not ok.empty:
        ok["_series"] = _series(ok)
    failed = len(frame) - len(ok)
    report.notes.append(f"{len(frame)} runs in the table, {len(ok)} with status ok" + (f", {failed} failed" if failed else ""))
    report.charts.append(chart_scaling(ok))
    report.charts.append(chart_memory(ok))
    curves = chart_curves(results, frame)
    if curves is not None:
        report.charts.append(curves)
    columns = [c for c in ("framework", "model", "num_workers", "slots", "transfer", "trial", "train", "rounds",
                           "start2end", "prime2end", "round_makespan_s", "bytes_moved", "peak_rss_mb", "status", "cell")
               if c in frame]
    rows = frame[columns].astype(object).where(frame[columns].notna(), "").values.tolist()
    report.tables.append(("Results table", table_html(rows, columns)))
    return report


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
figure { margin: 0.5em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .meta { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; }
table.summary td:first-child { font-family: monospace; } pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
nav a { margin-right: 1em; }
"""

# Counts the charts the browser decoded into body[data-charts-shown] ("shown/total"): a check
# that every embedded PNG decodes. No network: the CSP allows only inline data.
_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var shown = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-charts-shown", shown + "/" + images.length);
});
"""


def render_html(report: Report) -> str:
    """The page: charts as base64 PNG data URLs, tables, no external resource."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        'style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">',
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head>",
        f'<body data-report="{report.kind}">',
        f"<h1>{html.escape(report.title)}</h1>",
        f'<p class="meta">from {html.escape(str(report.source))}, written '
        f'{time.strftime("%Y-%m-%d %H:%M:%S %Z")} by python -m flight_parsl.report</p>',
    ]
    parts += [f"<p>{note}</p>" for note in report.notes]
    links = [f'<a href="#chart-{c.name}">{html.escape(c.title)}</a>' for c in report.charts]
    links += [f'<a href="#table-{i}">{html.escape(title)}</a>' for i, (title, _) in enumerate(report.tables)]
    parts.append("<nav>" + "".join(links) + "</nav>")
    for chart in report.charts:
        data = base64.b64encode(chart.png).decode("ascii")
        parts.append(
            f'<section id="chart-{chart.name}"><h2>{html.escape(chart.title)}</h2><figure>'
            f'<img class="chart" id="img-{chart.name}" alt="{html.escape(chart.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(chart.caption)}</figcaption></figure></section>"
        )
    for i, (title, body) in enumerate(report.tables):
        parts.append(f'<section id="table-{i}"><h2>{html.escape(title)}</h2>{body}</section>')
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def plan_report(source: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """What :func:`write_report` would read and write: kind, input, HTML, PNGs (nothing is drawn).

    Raises:
        ReportError: the source is neither a run directory nor a results table.
    """
    kind, path = source_kind(source)
    html_path = Path(out) if out else default_out(kind, path)
    charts = RUN_CHARTS if kind == "run" else SWEEP_CHARTS
    return {"kind": kind, "input": path, "html": html_path, "pngs": [png_path(html_path, c) for c in charts]}


def write_report(source: str | Path, out: str | Path | None = None) -> tuple[Path, list[Path]]:
    """Draw the report of a run directory or of a sweep's results table.

    Args:
        source: a run directory, a sweep's results.csv, or a folder holding one.
        out: the HTML file (default: ``RUN_DIR/report.html``; for ``X.csv``, ``X-report.html``
            beside it). The PNGs go beside it as ``<stem>-<chart>.png``.

    Returns:
        The HTML path and the PNG paths.

    Raises:
        ReportError: the source is neither; matplotlib or pandas is missing.
    """
    try:
        import matplotlib  # noqa: F401
        import pandas  # noqa: F401
    except ImportError as exc:
        raise ReportError(f"the report needs matplotlib and pandas ({exc}); pip install -e \".[analysis]\"") from None
    plan = plan_report(source, out)
    report = build_run_report(plan["input"]) if plan["kind"] == "run" else build_sweep_report(plan["input"])
    html_path: Path = plan["html"]
    html_path.parent.mkdir(parents=True, exist_ok=True)
    pngs = []
    for chart in report.charts:
        path = png_path(html_path, chart.name)
        path.write_bytes(chart.png)
        pngs.append(path)
    html_path.write_text(render_html(report), encoding="utf-8")
    return html_path, pngs
