"""``--dry-run``: what a command would run, without starting anything.

For one run it prints the resolved config (as config.yaml would hold it) and the
plan: mode and rounds, clients and slots, the site(s) with their provider and
virtual host, the transfer, the topology. For a sweep it prints every cell (its
grid values and run directory) and the plan of each distinct executor. The last
line is ``dry run: 1 run`` or ``dry run: sweep of N runs``; the docs test reads it.
Nothing starts: no executor, no Redis, no namespace, no torch.
"""

from __future__ import annotations

from collections.abc import Iterable

import yaml

from flight_parsl.config.experiment import ExperimentConfig


def plan_lines(cfg: ExperimentConfig) -> list[str]:
    """The plan of one run, a line per part."""
    from flight_parsl.execution.backends import resolve_slots

    lines = [f"mode {cfg.mode}, {cfg.rounds} round(s), strategy {cfg.strategy.name}, "
             f"{cfg.workers} client(s), train {cfg.train.mode}, model {cfg.model.name}, data {cfg.data.dataset}"]
    tree = None
    if cfg.topology != "flat":
        from flight_parsl.topology.tree import parse_topology

        tree = parse_topology(cfg.topology, cfg.workers)
        lines.append(f"topology {cfg.topology}: height {tree.height}, {len(tree.aggregators)} aggregator(s), "
                     f"{tree.num_workers} client leaves, broadcast {cfg.broadcast}")
    else:
        lines.append(f"topology flat: the coordinator and {cfg.workers} client(s)")
    if cfg.sites.files:
        from flight_parsl.engine.placement import place
        from flight_parsl.execution.sites import load_sites

        sites = load_sites(cfg.sites.files)
        placed = place(tree, cfg.workers, [s["label"] for s in sites], cfg.sites.aggregate_at).clients_per_site()
        for path, site in zip(cfg.sites.files, sites):
            n = placed.get(site["label"], 0)
            host = f", virtual host {site['virtual_host']}" if site.get("virtual_host") else ""
            if site.get("link"):
                from flight_parsl.execution.links import Link

                host += f" (link {Link.of(site['link']).describe()} each way)"
            lines.append(f"site {site['label']!r} ({path}): provider {site['provider']['kind']}{host}, "
                         f"encrypted {site['encrypted']}, {n} client(s) on {resolve_slots(cfg.slots, max(1, n))} slot(s)")
    elif cfg.backend == "parsl":
        from flight_parsl.execution.site import load_site, site_fixed_slots

        site = load_site(cfg.parsl_config)
        slots = site_fixed_slots(site) or resolve_slots(cfg.slots, cfg.workers)
        lines.append(f"site {site['label']!r} ({cfg.parsl_config or 'built-in local site'}): provider "
                     f"{site['provider']['kind']}, launcher {site['provider']['launcher']['kind']}, "
                     f"encrypted {site['encrypted']}, {slots} slot(s)")
    else:
        lines.append(f"backend {cfg.backend}: {resolve_slots(cfg.slots, cfg.workers)} slot(s) on this host")
    where = f" at {cfg.transfer.redis}" if cfg.transfer.redis else ""
    if cfg.transfer.per_site:
        where = " (a store per site: a managed redis-server in each site's namespace)"
    lines.append(f"transfer {cfg.transfer.kind}{where}; run directory {cfg.out or 'runs/<timestamp>-...'}")
    t = cfg.transfer
    if t.codec != "none" or t.codec_down != "none":
        up = f"updates up {t.codec}" + (" with error feedback" if t.error_feedback else "")
        block = f", int8 block {t.codec_block}" if "int8" in (t.codec, t.codec_down) else ""
        if cfg.mode == "decentralized":  # no updates, no broadcast: the models peers exchange
            lines.append(f"codecs: models peers exchange {t.codec}{block}")
        else:
            lines.append(f"codecs: {up}, broadcast {t.codec_down}{block}")
    faults = cfg.to_dict()["faults"]
    injected = [f"{k}={','.join(map(str, faults[k]))}" for k in ("kill", "hang", "kill_slots", "redis_stop", "slow")
                if faults[k]]
    if injected:
        lines.append("faults " + " ".join(injected))
    return lines


def print_run(cfg: ExperimentConfig, *, resume: bool = False) -> None:
    """The resolved config and the plan of one run."""
    plan = plan_lines(cfg)  # a plan that cannot be made fails before anything is printed
    print("config:" if not resume else f"config (resuming {cfg.out}):")
    print("  " + yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip().replace("\n", "\n  "))
    print("plan:")
    for line in plan:
        print(f"  {line}")
    print("dry run: 1 run")


def print_sweep(cells: Iterable[tuple[str, ExperimentConfig]], results: str) -> None:
    """Every cell of a sweep, and the plan of each distinct layout once."""
    seen: set[tuple[str, ...]] = set()
    count = 0
    for label, cfg in cells:
        count += 1
        print(f"cell {count}: {label} -> {cfg.out}")
        plan = plan_lines(cfg)
        key = tuple(plan[2:-1])  # the executor's part of the plan
        if key not in seen:
            seen.add(key)
            for line in plan[2:-1]:
                print(f"  {line}")
    print(f"results table: {results}")
    print(f"dry run: sweep of {count} runs")
