"""Chaos soak: a long run under faults drawn from a seed, beside the same run without faults.

For each mode (``sync``: FedAvg; ``peer``: decentralized ProxyFL) the driver runs digits with
``--clients`` clients (64) on ``--slots`` (8) Parsl HTEX worker processes, with a managed
redis-server as the model channel, twice from the same seed:

``clean``  no fault;
``chaos``  faults drawn from ``--fault-seed``: in every block of 10 rounds, 25% of the slots
           SIGKILLed mid-round at a round drawn in the block (``faults.kill_slots``); one
           SIGKILL of the managed redis-server (``faults.redis_stop``: restarted empty a
           second later; when the run stops on it, the driver continues it with one
           ``--resume`` command); one SIGKILL of the coordinator itself (the driver kills its
           own child ``python -m flight_parsl.scale`` process once rounds.csv reaches the drawn
           round, then continues it with one ``--resume`` command); a slow slot (one client
           trains ``slow_factor`` times longer every round; decentralized: its task sleeps
           ``--slow-hang-s`` first, every round: its task holds its slot that long).

A resumed run does not repeat the faults of its config (they happened); the resume command
gives the faults still to come (``faults.kill_slots`` of later rounds, the slow client, the
Redis kill if it has not fired) as ``key=value`` overrides. Both runs use ``round.retries`` so
that a client whose worker process died is retried on a live slot, and quorum 1.0: every
sampled client must report, so the final accuracy can be compared with the clean run.

Checks, printed and written to ``<out>/chaos.csv`` (exit status 1 when one fails):

- the run completed, every round once in rounds.csv;
- final accuracy within ``--tolerance`` (1 point) of the clean run;
- tasks.csv accounts for every client attempt: in each (segment, round) a client's attempts
  count 0, 1, 2 ... with at most one ``ok``, and a failed or lost attempt with retries left is
  followed by the next one (except in a round a stop cut short); each round in rounds.csv has
  a row for each of its sampled clients in the segment that wrote it, as many ``ok`` clients
  as it says reported, and as many distinct (task, attempt) as its ``tasks``;
- nothing left on the machine: no process the run ever listed in ``leftovers.json`` (read
  while it ran: redis-servers, interchanges, worker pools and workers), no worker pool or
  process whose command line names the run directory, no ``leftovers.json``, no directory the
  run listed (the managed Redis's, the state's); the managed Redis is gone, so are its keys;
- coordinator memory flat: rounds.csv ``coord_rss_mb`` grows under 10% from round 20 to the
  last round (and within each stretch between resumes).

``--dry-run`` prints the configs, the drawn faults and the commands, and starts nothing::

    python artifacts/chaos/run.py --dry-run
    python artifacts/chaos/run.py --mode sync --out runs/chaos
    python artifacts/chaos/run.py --mode peer --peer-rounds 60 --out runs/chaos
    python artifacts/chaos/run.py --report --out runs/chaos     # the checks, table and figure again

Exit status 0 when every check passed, 1 when one failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the checkout's flight_parsl
    sys.path.insert(0, str(ROOT))

import flight_parsl
from flight_parsl import FlightParslError
from flight_parsl.config.experiment import ExperimentConfig, build_config

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
MODES = {"sync": "FedAvg", "peer": "ProxyFL (decentralized)"}
KILL_FRACTION = 0.25  # of the slots, SIGKILLed once every 10 rounds


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------- configs and faults


def rounds_of(args: argparse.Namespace, mode: str) -> int:
    return args.rounds if mode == "sync" else args.peer_rounds


def base_config(args: argparse.Namespace, mode: str, out: Path, arm: str) -> ExperimentConfig:
    """The run of one mode and arm, without faults."""
    values: dict[str, Any] = {
        "workers": args.clients, "rounds": rounds_of(args, mode), "seed": args.seed, "backend": "parsl",
        "model": {"name": args.model}, "data": {"dataset": "digits"}, "out": str(out / f"{mode}-{arm}"),
    }
    overrides = [f"slots={args.slots}", "transfer.kind=redis", "round.quorum=1.0", "round.min_fraction=0.5",
                 f"round.retries={args.retries}", "round.backoff_s=0.2", "round.max_missed=1000"]
    if mode == "peer":
        values.update(mode="decentralized", strategy={"name": "proxyfl"})
    return build_config(values=[values], overrides=[*overrides, *args.overrides])


def draw_faults(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """The chaos arm's faults, drawn from ``--fault-seed`` (1-based rounds)."""
    rng = np.random.default_rng([args.fault_seed, list(MODES).index(mode)])
    rounds = rounds_of(args, mode)
    kills = [min(rounds - 1, int(b + rng.integers(1, 11))) for b in range(0, rounds, 10)]  # one per block
    if kills and kills[0] == 1:
        kills[0] = 2  # round 1 runs on freshly primed slots: from round 2 on
    lo, hi = max(3, rounds // 6), max(4, rounds // 3)
    redis = int(rng.integers(lo, hi))
    coordinator = int(rng.integers(max(redis + 2, rounds // 2), max(redis + 3, rounds * 3 // 4)))
    slow = int(rng.integers(0, args.clients))
    return {"mode": mode, "rounds": rounds, "kill_slots": kills, "redis_stop": redis, "coordinator_kill": coordinator,
            "slow_client": slow, "slow_hang_s": args.slow_hang_s, "slow_factor": args.slow_factor,
            "kill_after_s": args.kill_after_s}


def fault_overrides(drawn: dict[str, Any], after: int = 0, redis_done: bool = False) -> list[str]:
    """``key=value`` faults still to come after round ``after`` (what a resumed run is given)."""
    out = [f"faults.kill_after_s={drawn['kill_after_s']}"]  # a resumed run drops the whole faults section
    if drawn["mode"] == "sync":  # the slow client's training is stretched slow_factor times
        out += [f"faults.slow={drawn['slow_client']}", f"faults.slow_factor={drawn['slow_factor']}"]
    else:  # peer tasks have no slowdown: the slow client's task sleeps slow_hang_s first, every round
        out += ["faults.hang=" + ",".join(f"{drawn['slow_client']}@{r}" for r in range(after + 1, drawn["rounds"] + 1)),
                f"faults.hang_s={drawn['slow_hang_s']}"]
    kills = [f"{KILL_FRACTION}@{r}" for r in drawn["kill_slots"] if r > after]
    if kills:
        out.append("faults.kill_slots=" + ",".join(kills))
    if not redis_done and drawn["redis_stop"] > after:
        out.append(f"faults.redis_stop={drawn['redis_stop']}")
    return out


def save_config(cfg: ExperimentConfig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


def command(config: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "flight_parsl.scale", "--config", str(config), "-q", *overrides]


def resume_command(run_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "flight_parsl.scale", "--resume", str(run_dir), "-q", *overrides]


# --------------------------------------------------------------------------- driving a run


class Watch:
    """What a run listed in leftovers.json while it ran: every process and directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.processes: dict[tuple[int, Any], str] = {}
        self.directories: set[str] = set()
        self.coordinators: set[int] = set()

    def read(self) -> None:
        try:
            listed = json.loads((self.run_dir / "leftovers.json").read_text())
        except (OSError, ValueError):
            return
        for proc in listed.get("processes", []):
            self.processes[int(proc["pid"]), proc.get("started")] = proc["match"]
        self.directories.update(listed.get("directories", []))
        self.coordinators.add(int(listed.get("coordinator", {}).get("pid", 0)))


def run_child(cmd: list[str], run_dir: Path, watch: Watch, log: Path, kill_at: int | None = None,
              timeout_s: float = 7200) -> tuple[int, bool]:
    """Run ``cmd`` to its end (or SIGKILL it once rounds.csv holds ``kill_at`` rounds); returns its
    exit status and whether the driver killed it."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    killed = False
    try:
        while proc.poll() is None:
            watch.read()
            if kill_at is not None and len(read_rows(run_dir / "rounds.csv")) >= kill_at:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{' '.join(cmd)} ran past {timeout_s:.0f} s")
            time.sleep(0.2)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, killed


def run_clean(args: argparse.Namespace, mode: str, out: Path) -> Path:
    cfg = base_config(args, mode, out, "clean")
    shutil.rmtree(cfg.out, ignore_errors=True)
    watch = Watch(Path(cfg.out))
    config = save_config(cfg, out / f"{mode}-clean.yaml")
    rc, _ = run_child(command(config, []), Path(cfg.out), watch, out / f"{mode}-clean.log")
    if rc != 0:
        raise RuntimeError(f"the clean {mode} run failed (exit {rc}); see {out / f'{mode}-clean.log'}")
    return Path(cfg.out)


def run_chaos(args: argparse.Namespace, mode: str, out: Path, drawn: dict[str, Any]) -> tuple[Path, Watch, list[dict]]:
    """The chaos arm: the run, the driver's coordinator SIGKILL, and the resumes it needs."""
    cfg = base_config(args, mode, out, "chaos")
    run_dir = Path(cfg.out)
    shutil.rmtree(run_dir, ignore_errors=True)
    watch = Watch(run_dir)
    log = out / f"{mode}-chaos.log"
    log.unlink(missing_ok=True)
    config = save_config(cfg, out / f"{mode}-chaos.yaml")
    events: list[dict[str, Any]] = []
    cmd = command(config, fault_overrides(drawn))
    coordinator_killed = False
    for attempt in range(args.max_resumes + 1):
        kill_at = None if coordinator_killed else drawn["coordinator_kill"]
        rc, killed = run_child(cmd, run_dir, watch, log, kill_at=kill_at)
        done = len(read_rows(run_dir / "rounds.csv"))
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
        if killed:
            coordinator_killed = True
            events.append({"time": time.time(), "round": done + 1, "event": "coordinator SIGKILL",
                           "detail": f"after {done} rounds in rounds.csv"})
        elif rc == 0 and summary.get("status") == "completed":
            break
        else:
            events.append({"time": time.time(), "round": done + 1, "event": f"run stopped (exit {rc})",
                           "detail": str(summary.get("error", ""))[:200]})
        if attempt == args.max_resumes:
            raise RuntimeError(f"the chaos {mode} run did not complete after {args.max_resumes} resumes; see {log}")
        faults = read_rows(run_dir / "faults.csv")
        redis_done = any(f["action"].startswith("redis") for f in faults)
        # the last row of rounds.csv may be a round the resume runs again (a round that stopped the run,
        # a checkpoint the SIGKILL came before): its faults are given again
        cmd = resume_command(run_dir, fault_overrides(drawn, after=max(0, done - 1), redis_done=redis_done))
        events.append({"time": time.time(), "round": done + 1, "event": "resume",
                       "detail": " ".join(cmd[2:]).replace(str(run_dir), run_dir.name)})
    return run_dir, watch, events


# --------------------------------------------------------------------------- checks


def account(run_dir: Path, retries: int = 2) -> dict[str, Any]:
    """Whether tasks.csv accounts for every client attempt (see the module docstring)."""
    rounds = read_rows(run_dir / "rounds.csv")
    tasks = [t for t in read_rows(run_dir / "tasks.csv") if t["kind"] == "train"]
    every = read_rows(run_dir / "tasks.csv")
    summary = json.loads((run_dir / "summary.json").read_text())
    firsts = [int(s.get("first_round", 1)) for s in summary.get("segments", [{"first_round": 1}])]
    problems: list[str] = []
    by_key: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for t in tasks:
        by_key.setdefault((t["segment"], t["round"], t["client"]), []).append(t)
    unanswered = 0
    for (seg, rnd, client), rows in by_key.items():
        attempts = sorted(int(t["attempt"]) for t in rows)
        oks = [t for t in rows if t["status"] == "ok"]
        if len(oks) > 1:
            problems.append(f"segment {seg} round {rnd} client {client}: {len(oks)} ok attempts")
        if attempts != list(range(len(attempts))):
            problems.append(f"segment {seg} round {rnd} client {client}: attempts {attempts}")
        if not oks and attempts and attempts[-1] < retries:
            unanswered += 1  # a failure with retries left and no retry: only where a stop cut the round short
    failed_attempts = sum(t["status"] != "ok" for t in tasks)
    for row in rounds:
        rnd = int(row["round"])
        seg = str(max(i for i, first in enumerate(firsts) if first <= rnd))
        oks = {t["client"] for t in tasks if t["segment"] == seg and t["round"] == row["round"] and t["status"] == "ok"}
        if len(oks) != int(row["reported"] or row["participants"]):
            problems.append(f"round {rnd}: {len(oks)} ok clients in tasks.csv, rounds.csv says {row['reported']}")
        seen = {t["client"] for t in tasks if t["segment"] == seg and t["round"] == row["round"]}
        if len(seen) != int(row["sampled"]):
            problems.append(f"round {rnd}: {len(seen)} clients in tasks.csv, {row['sampled']} sampled")
        ids = {(t["task"], t["attempt"]) for t in every if t["segment"] == seg and t["round"] == row["round"]}
        if len(ids) != int(row["tasks"]):
            problems.append(f"round {rnd}: {len(ids)} tasks in tasks.csv, rounds.csv says {row['tasks']}")
    # a client attempt without an answer is allowed only in a round that no row of rounds.csv kept
    kept = {(str(max(i for i, f in enumerate(firsts) if f <= int(r["round"]))), r["round"]) for r in rounds}
    dangling = [k for k, rows in by_key.items() if (k[0], k[1]) in kept and not any(t["status"] == "ok" for t in rows)
                and max(int(t["attempt"]) for t in rows) < retries]
    problems += [f"segment {s} round {r} client {c}: failed with retries left, never retried, in a kept round"
                 for s, r, c in dangling]
    return {"client_attempts": len(tasks), "failed_attempts": failed_attempts, "unanswered_in_stopped_rounds":
            unanswered - len(dangling), "problems": problems}


def _alive(pid: int, started: Any) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = text[text.rindex(")") + 2:].split()
    return fields[0] not in ("Z", "X") and (started is None or int(fields[19]) == int(started))


def left_behind(run_dir: Path, watch: Watch) -> list[str]:
    """What the run left on the machine: listed processes and directories, processes naming it."""
    out = [f"{match} pid {pid}" for (pid, started), match in watch.processes.items() if _alive(pid, started)]
    out += [f"coordinator pid {pid}" for pid in watch.coordinators if pid and _alive(pid, None)
            and str(run_dir) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
    marker = str(run_dir.absolute())
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                line = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in line and _alive(int(entry), None):
                out.append(f"process {entry}: {line[:80]}")
    out += [d for d in sorted(watch.directories) if Path(d).exists()]
    if (run_dir / "leftovers.json").exists():
        out.append(str(run_dir / "leftovers.json"))
    return out


def memory_growth(run_dir: Path) -> dict[str, Any]:
    """Coordinator RSS growth from round 20 to the last round, overall and per stretch (segment)."""
    rounds = read_rows(run_dir / "rounds.csv")
    rss = {int(r["round"]): float(r["coord_rss_mb"]) for r in rounds if r.get("coord_rss_mb")}
    summary = json.loads((run_dir / "summary.json").read_text())
    firsts = [int(s.get("first_round", 1)) for s in summary.get("segments", [{"first_round": 1}])]
    last = max(rss)
    start = min(20, last)
    stretches = []
    for i, first in enumerate(firsts):
        end = (firsts[i + 1] - 1) if i + 1 < len(firsts) else last
        a = first + 19 if first == 1 else first + 9  # past the start-up (round 20; 10 rounds after a resume)
        if end - a >= 20 and a in rss and end in rss:
            stretches.append(rss[end] / rss[a] - 1.0)
    return {"rss_round20_mb": rss[start], "rss_last_mb": rss[last], "growth_overall": rss[last] / rss[start] - 1.0,
            "growth_worst_stretch": max(stretches) if stretches else float("nan")}


def soak(args: argparse.Namespace, mode: str, out: Path) -> dict[str, Any]:
    drawn = draw_faults(args, mode)
    print(f"[{mode}] faults drawn from seed {args.fault_seed}: {json.dumps(drawn)}", flush=True)
    t0 = time.time()
    clean = run_clean(args, mode, out)
    clean_s = time.time() - t0
    t0 = time.time()
    chaos, watch, events = run_chaos(args, mode, out, drawn)
    chaos_s = time.time() - t0
    time.sleep(2.0)  # the last process a clean-up stopped may take a moment to be reaped
    write_rows(out / f"{mode}-events.csv", events or [{"time": "", "round": "", "event": "", "detail": ""}])
    (out / f"{mode}-watch.json").write_text(json.dumps({
        "processes": [[pid, started, match] for (pid, started), match in watch.processes.items()],
        "directories": sorted(watch.directories), "coordinators": sorted(watch.coordinators),
        "clean_wall_s": clean_s, "chaos_wall_s": chaos_s}, indent=1))
    return evaluate(args, mode, out)


def evaluate(args: argparse.Namespace, mode: str, out: Path) -> dict[str, Any]:
    """The checks and the table row of one mode's soak, from what its runs left in ``out``."""
    clean, chaos = out / f"{mode}-clean", out / f"{mode}-chaos"
    saved = json.loads((out / f"{mode}-watch.json").read_text())
    watch = Watch(chaos)
    watch.processes = {(int(pid), started): match for pid, started, match in saved["processes"]}
    watch.directories, watch.coordinators = set(saved["directories"]), set(saved["coordinators"])
    clean_s, chaos_s = saved["clean_wall_s"], saved["chaos_wall_s"]
    events = [e for e in read_rows(out / f"{mode}-events.csv") if e["event"]]
    clean_rounds, chaos_rounds = read_rows(clean / "rounds.csv"), read_rows(chaos / "rounds.csv")
    summary = json.loads((chaos / "summary.json").read_text())
    faults = read_rows(chaos / "faults.csv")
    acc_clean, acc_chaos = float(clean_rounds[-1]["test_acc"]), float(chaos_rounds[-1]["test_acc"])
    acc_book = account(chaos, args.retries)
    left = left_behind(chaos, watch) + left_behind(clean, Watch(clean))
    memory = memory_growth(chaos)
    rounds = rounds_of(args, mode)
    slot_kills = [f for f in faults if f["action"] == "kill_slot" and f["target"]]
    lost = sum(t["status"] == "lost" for t in read_rows(chaos / "tasks.csv"))
    row = {
        "mode": mode, "rounds": rounds, "clients": args.clients, "slots": args.slots,
        "status": summary["status"], "resumes": summary.get("resumes", 0),
        "rounds_in_csv": [int(r["round"]) for r in chaos_rounds] == list(range(1, rounds + 1)),
        "final_acc_clean": acc_clean, "final_acc_chaos": acc_chaos, "acc_diff_points": 100 * (acc_chaos - acc_clean),
        "slot_kills": len(slot_kills), "redis_kills": sum(f["action"] == "redis_kill" for f in faults),
        "coordinator_kills": sum(e["event"] == "coordinator SIGKILL" for e in events),
        "client_attempts": acc_book["client_attempts"], "failed_attempts": acc_book["failed_attempts"],
        "lost_attempts": lost, "accounting_problems": len(acc_book["problems"]), "left_behind": len(left),
        **memory, "clean_wall_s": clean_s, "chaos_wall_s": chaos_s,
        "mean_round_s_clean": float(np.mean([float(r["makespan_s"]) for r in clean_rounds])),
        "mean_round_s_chaos": float(np.mean([float(r["makespan_s"]) for r in chaos_rounds])),
        "median_round_s_clean": float(np.median([float(r["makespan_s"]) for r in clean_rounds])),
        "median_round_s_chaos": float(np.median([float(r["makespan_s"]) for r in chaos_rounds])),
    }
    checks = {
        "completed": row["status"] == "completed" and row["rounds_in_csv"],
        f"accuracy within {args.tolerance:g} point(s)": abs(row["acc_diff_points"]) <= args.tolerance,
        "tasks.csv accounts for every client attempt": not acc_book["problems"],
        "nothing left": not left,
        "coordinator memory flat (< 10%)": memory["growth_overall"] < 0.10 and not memory["growth_worst_stretch"] >= 0.10,
    }
    row["checks_passed"] = all(checks.values())
    print(f"[{mode}] {json.dumps(row, default=str)}")
    print(f"[{mode}] tasks.csv: {acc_book['client_attempts']} client attempts, {acc_book['failed_attempts']} failed "
          f"or lost ({lost} lost), {acc_book['unanswered_in_stopped_rounds']} unanswered in rounds a stop cut short; "
          f"every kept round's sampled clients have exactly one ok attempt: {not acc_book['problems']}")
    for problem in acc_book["problems"][:10]:
        print(f"[{mode}]   {problem}")
    for item in left:
        print(f"[{mode}]   left behind: {item}")
    for name, ok in checks.items():
        print(f"[{mode}] check {'PASS' if ok else 'FAIL'}: {name}")
    for src, dst in ((chaos / "rounds.csv", f"{mode}-chaos-rounds.csv"), (clean / "rounds.csv", f"{mode}-clean-rounds.csv"),
                     (chaos / "faults.csv", f"{mode}-faults.csv")):
        if src.exists():
            shutil.copy(src, out / dst)
    return row


# --------------------------------------------------------------------------- figure and table


def stopped_round(event: dict[str, str]) -> int:
    """The round a stop names in its message ("round 134: ..."), else the event's round."""
    found = re.search(r"round (\d+)", event.get("detail", ""))
    return int(found.group(1)) if found else int(event["round"])


def figure(out: Path, modes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(modes), figsize=(6.5 * len(modes), 7), squeeze=False, sharex="col")
    for j, mode in enumerate(modes):
        chaos, clean = read_rows(out / f"{mode}-chaos-rounds.csv"), read_rows(out / f"{mode}-clean-rounds.csv")
        faults, events = read_rows(out / f"{mode}-faults.csv"), read_rows(out / f"{mode}-events.csv")
        for rows, label, style in ((clean, "no faults", "-"), (chaos, "chaos", "-")):
            x = [int(r["round"]) for r in rows]
            axes[0][j].plot(x, [100 * float(r["test_acc"]) for r in rows], style, label=label, lw=1.2)
            axes[1][j].plot(x, [float(r["makespan_s"]) for r in rows], style, label=label, lw=1.0)
        marks = [(int(f["round"]), "slot kill", "tab:red", ":") for f in faults if f["action"] == "kill_slot"]
        marks += [(int(f["round"]), "redis-server kill", "tab:purple", "--") for f in faults if f["action"] == "redis_kill"]
        marks += [(int(e["round"]), "coordinator SIGKILL", "black", "-.") for e in events if e["event"] == "coordinator SIGKILL"]
        marks += [(stopped_round(e), "run stopped, resumed", "tab:gray", "-") for e in events
                  if e["event"].startswith("run stopped")]
        for ax in axes[:, j]:
            seen = set()
            for rnd, label, color, ls in marks:
                ax.axvline(rnd, color=color, ls=ls, lw=0.8, alpha=0.7, label=None if label in seen else label)
                seen.add(label)
        axes[0][j].set_title(f"{MODES[mode]}: digits, {chaos[-1]['round'] if chaos else '?'} rounds")
        axes[0][j].set_ylabel("test accuracy (%)")
        axes[1][j].set_ylabel("round time (s)")
        axes[1][j].set_yscale("log")
        axes[1][j].set_xlabel("round")
        axes[0][j].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


COLUMNS = ["mode", "rounds", "status", "resumes", "final_acc_clean", "final_acc_chaos", "acc_diff_points",
           "slot_kills", "redis_kills", "coordinator_kills", "client_attempts", "failed_attempts",
           "accounting_problems", "left_behind", "growth_overall", "growth_worst_stretch", "checks_passed"]


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["sync", "peer", "all"], default="all")
    p.add_argument("--out", default="runs/chaos")
    p.add_argument("--rounds", type=int, default=200, help="sync rounds")
    p.add_argument("--peer-rounds", type=int, default=60, help="decentralized rounds")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--slots", type=int, default=8, help="HTEX worker processes")
    p.add_argument("--model", default="mlp")
    p.add_argument("--seed", type=int, default=0, help="the runs' seed (data, model, sampling)")
    p.add_argument("--fault-seed", type=int, default=23, help="the seed the faults are drawn from")
    p.add_argument("--retries", type=int, default=2, help="round.retries")
    p.add_argument("--kill-after-s", type=float, default=0.3, help="faults.kill_after_s: seconds into the round")
    p.add_argument("--slow-factor", type=float, default=4.0, help="faults.slow_factor of the slow client")
    p.add_argument("--slow-hang-s", type=float, default=2.0,
                   help="peer: seconds the slow client's task sleeps every round (peer tasks have no slowdown)")
    p.add_argument("--max-resumes", type=int, default=4)
    p.add_argument("--tolerance", type=float, default=1.0, help="accuracy points the chaos run may differ by")
    p.add_argument("--dry-run", action="store_true", help="print the runs, faults and commands; start nothing")
    p.add_argument("--report", action="store_true",
                   help="run nothing: check, tabulate and plot the soaks already in --out")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = p.parse_args(argv)
    if args.rounds < 20 or args.peer_rounds < 20:
        p.error("--rounds and --peer-rounds must be at least 20 (memory is compared from round 20)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    modes = list(MODES) if args.mode == "all" else [args.mode]
    try:
        for mode in modes:
            drawn = draw_faults(args, mode)
            for arm in ("clean", "chaos"):
                cfg = base_config(args, mode, out, arm)
                extra = fault_overrides(drawn) if arm == "chaos" else []
                build_config(values=[cfg.to_dict()], overrides=extra)  # the faults validate
                if args.dry_run:
                    print(f"{mode}-{arm}: {flight_parsl.describe(cfg)} {' '.join(extra)}")
            if args.dry_run:
                print(f"{mode}: coordinator SIGKILL once rounds.csv holds {drawn['coordinator_kill']} rounds, then "
                      f"python -m flight_parsl.scale --resume {out / f'{mode}-chaos'} KEY=VALUE (faults to come)")
    except FlightParslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"dry run: {2 * len(modes)} runs, nothing started")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for mode in modes:
        rows.append(evaluate(args, mode, out) if args.report else soak(args, mode, out))
        write_rows(out / f"chaos-{mode}.csv", [rows[-1]])
    done = [m for m in MODES if (out / f"{m}-chaos-rounds.csv").exists()]
    figure(out, done, out / "chaos.png")
    print(table(rows, COLUMNS))
    return 0 if all(r["checks_passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
