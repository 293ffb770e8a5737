"""Rounds near the link's bound: no-training resnet18 rounds on two sites over shaped links (issue 20, item 3).

Two sites, each a virtual host (a network namespace; needs root) joined to the coordinator by its
own link, two clients at each site packed into one task (``plan.clients_per_task=2``), so that each
site moves one model down and one partial up a round. FedAvg with ``train.mode=none`` (the model
travels, nothing trains), resnet18 (46.8 MB of float32 weights). Per transfer kind (``parsl``: the
weights inside the Parsl tasks; ``redis``: the run's one redis-server beside the coordinator;
``redis-per-site``: a redis-server in each site, ``transfer.per_site=true``; ``file``: a shared
directory) and per link (``unshaped``, ``1gbit,5ms``, ``100mbit,20ms``) it runs one run of
``--rounds`` rounds, whose warm rounds (2 ..) give

- the round makespan (median, min-max);
- the bytes each site link carried a round: rounds.csv ``link_bytes``, the kernel's byte counters
  of each link read at the end of each round (median over the warm rounds);
- where a round's time goes: tasks.csv (get, deserialize, serialize, put, collect).

The link bound of a round is the bytes that must cross the slowest link, the most loaded site
link's bytes a round both ways (the partial goes up only once the model is down), divided by the
link's rate. ``file`` crosses no link with the model (the namespaces share this host's
filesystem): its bound is no link bound, and the table says so. ``unshaped`` has no rate.

    python artifacts/link_bound/run.py --dry-run
    python artifacts/link_bound/run.py                                   # what the README reports
    python artifacts/link_bound/run.py --links 1gbit,5ms --kinds parsl --rounds 3   # one cell
    python artifacts/link_bound/run.py --kinds redis,redis-per-site --links "1gbit,5ms;100mbit,20ms"
    python artifacts/link_bound/run.py --links 1gbit,5ms --kinds parsl,redis --unencrypted transfer.redis_tls=false \
        --out runs/link_bound-plain                                      # what encryption costs
    python artifacts/link_bound/run.py --cpu --links '1gbit,5ms;unshaped' --kinds redis,redis-per-site
                                           # + CPU seconds a warm round per kind of process (cpu_time.py)

Every output goes to --out (default ``runs/link_bound``): ``results.csv`` (one row a cell),
``table.md`` and a run directory per run; the committed files are copied here by hand (README.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import flight_parsl
from flight_parsl.api import link_arg as parse_link, shaped_sites, two_site_topology

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_time import KINDS as CPU_KINDS, CpuSampler  # noqa: E402  (beside this script)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

LINKS = ("unshaped", "1gbit,5ms", "100mbit,20ms")
KINDS = ("parsl", "redis", "redis-per-site", "file")
#: what each kind sets: ``transfer.kind`` and, for a store per site, ``transfer.per_site``
TRANSFER = {"parsl": {"kind": "parsl"}, "redis": {"kind": "redis"},
            "redis-per-site": {"kind": "redis", "per_site": True}, "file": {"kind": "file"}}
SITE_FILES = (REPO / "configs" / "parsl" / "netns" / "site-a.yaml", REPO / "configs" / "parsl" / "netns" / "site-b.yaml")
UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
#: tasks.csv columns that say where a round's time goes (per task; the median over the warm rounds' train tasks).
PARTS = ("task_get_s", "task_deserialize_s", "task_compute_s", "task_serialize_s", "task_put_s", "task_collect_s",
         "task_rtt_s")


def rate_bit_s(link: dict[str, str]) -> float | None:
    """The link's rate in bit/s (the site loader has checked the unit); None when unshaped."""
    rate = link.get("rate", "").lower().removesuffix("/s")
    for unit in sorted(UNITS, key=len, reverse=True):
        if rate.endswith(unit):
            return float(rate[: -len(unit)]) * UNITS[unit]
    return None


def link_bound(per_round: dict[str, dict[str, float]], rate: float | None, kind: str) -> float:
    """Seconds a round needs at least on the slowest link: the most bytes one site link carries a round,
    both ways (``to_host`` + ``from_host``: the partial goes up once the model is down), over its rate.
    nan when there is no rate (unshaped) or the model crosses no link (``file``)."""
    if not rate or not per_round or kind == "file":
        return float("nan")
    return max(8 * (v["to_host"] + v["from_host"]) for v in per_round.values()) / rate


def write_sites(where: Path, link: dict[str, str], per_site: int, encrypted: bool = True) -> tuple[list[str], str]:
    """The two sites (site-a, site-b of configs/parsl/netns, with ``link`` when shaped; HTEX's
    CurveZMQ encryption off when not ``encrypted``) and a flat topology with ``per_site`` clients
    at each; their paths."""
    files = shaped_sites(list(SITE_FILES), link, where, **({} if encrypted else {"encrypted": False}))
    return [str(f) for f in files], str(two_site_topology(where, 2 * per_site, per_site))


def values(sites: tuple[list[str], str], kind: str, rounds: int, per_site: int, model: str, out: Path) -> dict:
    """One run's config: no-training FedAvg rounds, each site's clients packed into one task."""
    files, topology = sites
    return {
        "workers": 2 * per_site, "rounds": rounds, "backend": "parsl", "out": str(out), "seed": 0,
        "topology": topology, "sites": {"files": files}, "model": {"name": model},
        "train": {"mode": "none"}, "strategy": {"name": "fedavg"},
        "plan": {"clients_per_task": per_site}, "round": {"checkpoint": False},
        "transfer": dict(TRANSFER[kind]),
    }


def _span(xs: list[float], fmt: str = "{:.2f}") -> str:
    ok = [x for x in xs if x == x]
    if not ok:
        return "-"
    return f"{fmt.format(statistics.median(ok))} ({fmt.format(min(ok))}-{fmt.format(max(ok))})"


def per_round_links(cells: list[Any]) -> dict[str, dict[str, float]]:
    """Bytes each site link carried a round: the median over rounds of rounds.csv ``link_bytes``
    (JSON cells, one a round: host -> ``to_host`` / ``from_host``)."""
    import json

    rounds = [json.loads(c) for c in cells if isinstance(c, str) and c]
    hosts = sorted({h for r in rounds for h in r})
    return {h: {d: float(statistics.median(r.get(h, {}).get(d, 0) for r in rounds)) for d in ("to_host", "from_host")}
            for h in hosts}


def cell(link_text: str, kind: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run one (link, kind) cell; its results row."""
    import json

    link = parse_link(link_text)
    where = out / link_text.replace(",", "-") / kind
    sites = write_sites(where / "sites", link, args.per_site, not args.unencrypted)
    run_dir = where / f"r{args.rounds}"
    config = values(sites, kind, args.rounds, args.per_site, args.model, run_dir)
    if args.cpu:
        with CpuSampler(match=str(run_dir)) as sampler:  # the sites' pools name the run's directory
            result = flight_parsl.run(config, *args.overrides)
    else:
        result = flight_parsl.run(config, *args.overrides)
    summary = json.loads((run_dir / "summary.json").read_text())
    load = os.getloadavg()[0]
    r = result.rounds
    warm = r[r["round"] >= 2]
    t = result.tasks
    tw = t[(t["round"] >= 2) & (t["kind"] == "train") & (t["status"] == "ok")]
    tw = tw.drop_duplicates(["segment", "round", "task", "attempt"])
    per_round = per_round_links(list(warm["link_bytes"])) if "link_bytes" in warm else {}
    bound = link_bound(per_round, rate_bit_s(link), kind)
    makespan = float(warm["makespan_s"].median())
    measured = summary.get("links") or {}
    row: dict[str, Any] = {
        "link": link_text, "kind": kind, "encrypted": not args.unencrypted, "overrides": " ".join(args.overrides),
        "model": args.model,
        "model_bytes": summary.get("model_bytes"),
        "clients": 2 * args.per_site, "rounds": args.rounds,
        "tasks_per_round": float(t[t["kind"] == "train"].groupby("round")["task"].nunique().median()),
        "makespan_s": makespan, "makespan_min_s": float(warm["makespan_s"].min()),
        "makespan_max_s": float(warm["makespan_s"].max()),
        "bound_s": bound, "ratio": makespan / bound if bound == bound else float("nan"),
        "payload_down_per_round": float(warm["bytes_to_workers"].median()),
        "payload_up_per_round": float(warm["bytes_from_workers"].median()),
        "aggregate_s": float(warm["aggregate_s"].median()), "publish_s": float(warm["publish_s"].median()),
        "load_1m_long": load, "bytes_from": "rounds.csv link_bytes",
        "shaper": ",".join(sorted({str(v.get("shaper", "")) for v in measured.values()})),
        "measured_bit_s": ",".join(f"{v.get('measured', {}).get('to_host_bit_s', 0):.3g}/"
                                   f"{v.get('measured', {}).get('from_host_bit_s', 0):.3g}" for v in measured.values()),
    }
    for host, v in sorted(per_round.items()):
        row[f"{host}_down_per_round"] = v["to_host"]
        row[f"{host}_up_per_round"] = v["from_host"]
    if args.cpu and len(warm):  # CPU seconds a warm round, per kind of process
        spent = sampler.between(float(warm["start"].min()), float(warm["end"].max()))
        for k in (*CPU_KINDS, *(f"{k}_sys" for k in CPU_KINDS), "machine", "softirq"):
            row[f"cpu_{k}_s"] = spent.get(k, 0.0) / len(warm)
        row["cpu_run_s"] = sum(row[f"cpu_{k}_s"] for k in CPU_KINDS)
    for col in PARTS:
        row[col] = float(tw[col].median()) if col in tw and len(tw) else float("nan")
    # The rest of a task's round trip: from its submission to its start on the slot (the inputs on their
    # way down: pickling, the interchange, the link, the worker pool) and from its end to the coordinator
    # having its outcome (the outputs on their way up). Slot and coordinator share this host's clock.
    row["down_s"] = float((tw["task_started"] - tw["task_submitted"]).median()) if len(tw) else float("nan")
    row["up_s"] = float((tw["task_received"] - tw["task_finished"]).median()) if len(tw) else float("nan")
    return row


def table(rows: list[dict]) -> str:
    """The acceptance table: per link and kind, makespan, bound, ratio, bytes per link per round."""
    lines = ["| link | transfer | round s: median (min-max) | link bound s | makespan / bound | "
             "MB per round, host-a down/up | host-b down/up | submit to start / end to received s | "
             "get / put / serialize / collect s (median task) | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bound = "-" if r["bound_s"] != r["bound_s"] else f"{r['bound_s']:.2f}"
        ratio = "-" if r["ratio"] != r["ratio"] else f"{r['ratio']:.2f}"
        if r["kind"] == "file":
            bound, ratio = "(no link bound)", "-"
        mb = {h: f"{r.get(f'{h}_down_per_round', float('nan')) / 1e6:.1f} / {r.get(f'{h}_up_per_round', float('nan')) / 1e6:.1f}"
              for h in ("host-a", "host-b")}
        parts = " / ".join(f"{r[c]:.2f}" for c in ("task_get_s", "task_put_s", "task_serialize_s", "task_collect_s"))
        lines.append(f"| {r['link']} | {r['kind']} | {r['makespan_s']:.2f} ({r['makespan_min_s']:.2f}-"
                     f"{r['makespan_max_s']:.2f}) | {bound} | {ratio} | {mb['host-a']} | {mb['host-b']} | "
                     f"{r['down_s']:.2f} / {r['up_s']:.2f} | {parts} | "
                     f"{r['load_1m_long']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--links", default=";".join(LINKS),
                   help=f"semicolon list of links: unshaped or RATE,DELAY (default {';'.join(LINKS)})")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of transfer kinds (default {','.join(KINDS)})")
    p.add_argument("--rounds", type=int, default=4, help="rounds of the long run (>= 2; round 1 is the cold one)")
    p.add_argument("--per-site", type=int, default=2, help="clients at each site, one task a site")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--out", default=str(REPO / "runs" / "link_bound"))
    p.add_argument("--dry-run", action="store_true", help="check every config, print the cells and exit (starts nothing)")
    p.add_argument("--unencrypted", action="store_true", help="HTEX without CurveZMQ encryption between the "
                   "coordinator's interchange and the sites' worker pools (the sites' default is encrypted)")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run (e.g. transfer.redis_tls=false)")
    p.add_argument("--cpu", action="store_true", help="sample the CPU time of the run's processes (cpu_time.py): "
                   "results.csv gets cpu_<kind>_s, CPU seconds a warm round per kind of process")
    p.add_argument("--table", action="store_true", help="only rewrite table.md from --out's results.csv")
    args = p.parse_args(argv)
    if args.table:
        import pandas as pd

        text = table(pd.read_csv(Path(args.out) / "results.csv").to_dict("records"))
        (Path(args.out) / "table.md").write_text(text + "\n")
        print(text)
        return 0
    links = [x.strip() for x in args.links.split(";") if x.strip()]
    kinds = [k for k in args.kinds.split(",") if k]
    if set(kinds) - set(KINDS):
        p.error(f"--kinds: unknown {sorted(set(kinds) - set(KINDS))}; valid: {', '.join(KINDS)}")
    if args.rounds < 2 or args.per_site < 1:
        p.error("--rounds must be >= 2 and --per-site >= 1")
    import tempfile

    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:  # a dry run writes nothing into --out; a bad link stops here
        for link_text in links:
            try:
                link = parse_link(link_text)
            except ValueError as exc:
                p.error(str(exc))
            sites = write_sites(Path(tmp) / link_text.replace(",", "-"), link, args.per_site,
                                not args.unencrypted)
            for kind in kinds:
                try:
                    flight_parsl.check(flight_parsl.load_config(values(sites, kind, args.rounds, args.per_site,
                                                                       args.model, out / "x"), *args.overrides))
                except flight_parsl.ConfigError as exc:
                    p.error(str(exc).replace(f"{tmp}/", ""))
    cells = [(link, kind) for link in links for kind in kinds]
    if args.dry_run:
        for link_text, kind in cells:
            print(f"{link_text:>14} {kind:>14}: {2 * args.per_site} clients on 2 sites ({args.per_site} a task), "
                  f"{args.model}, train none, {args.rounds} rounds")
        print(f"dry run: {len(cells)} cells, {len(cells)} runs into {out}; nothing started")
        return 0
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    again = set(cells)
    if (out / "results.csv").is_file():  # keep what this invocation does not run again
        rows = [r for r in pd.read_csv(out / "results.csv").to_dict("records") if (r["link"], r["kind"]) not in again]
    t0 = time.time()
    for link_text, kind in cells:
        row = cell(link_text, kind, args, out)
        rows.append(row)
        rows.sort(key=lambda r: (LINKS.index(r["link"]) if r["link"] in LINKS else 9, KINDS.index(r["kind"])))
        pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
        print(f"[{time.time() - t0:6.0f}s] {link_text} {kind}: round {row['makespan_s']:.2f}s, bound "
              f"{row['bound_s']:.2f}s, ratio {row['ratio']:.2f}, load {row['load_1m_long']:.1f}", flush=True)
        if args.cpu:
            print("         CPU s a warm round: " + ", ".join(f"{k} {row[f'cpu_{k}_s']:.2f}" for k in
                  (*CPU_KINDS, "softirq", "machine")) + f"; the run's processes {row['cpu_run_s']:.2f} (in the kernel "
                  + ", ".join(f"{k} {row[f'cpu_{k}_sys_s']:.2f}" for k in CPU_KINDS if row[f"cpu_{k}_s"]) + ")",
                  flush=True)
    text = table(rows)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
