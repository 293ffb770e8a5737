"""A store per site (``transfer.per_site=true``): config errors, and, as root in namespaces,
a two-site run whose site links carry one model down and one partial up per round, where one
store for the run makes every client's result cross the link."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from flight_parsl.core.errors import ConfigError
from flight_parsl.execution.netns import netns_available

REPO = Path(__file__).resolve().parents[1]
TWO_SITES = REPO / "configs" / "topologies" / "example_two_sites.yaml"
SITE_A = REPO / "configs" / "parsl" / "netns" / "site-a.yaml"
SITE_B = REPO / "configs" / "parsl" / "netns" / "site-b.yaml"
SITES = f"sites.files={SITE_A},{SITE_B}"

NO_NETNS = netns_available()


@pytest.mark.parametrize(("overrides", "values", "message"), [
    (["transfer.per_site=true"], {"transfer": {"kind": "redis"}},
     "key 'transfer.per_site' = True: a store per site needs several sites"),
    ([SITES, "transfer.per_site=true"], {"transfer": {"kind": "parsl"}},
     "key 'transfer.per_site' = True: a store per site is a managed redis-server in each site's namespace: "
     "needs transfer.kind=redis, got 'parsl'"),
    ([SITES, "transfer.per_site=true"], {"transfer": {"kind": "file"}}, "needs transfer.kind=redis, got 'file'"),
    ([SITES, "transfer.per_site=true"], {"transfer": {"kind": "redis", "redis": "10.0.0.1:6379"}},
     "key 'transfer.per_site' = True: each site gets a managed redis-server of its own: leave transfer.redis "
     "(--redis) unset, got '10.0.0.1:6379'"),
])
def test_a_store_per_site_is_refused_where_it_cannot_work(make_config, overrides, values, message) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(*overrides, backend="parsl", workers=8, topology=str(TWO_SITES), **values)
    assert str(err.value).startswith("config: key "), str(err.value)
    assert message in str(err.value)


def test_the_new_key_at_its_default_keeps_old_config_hashes(make_config) -> None:
    from flight_parsl.config.experiment import config_hash

    cfg = make_config()
    plain = config_hash(cfg)
    cfg.transfer.per_site = True
    assert config_hash(cfg) != plain
    cfg.transfer.per_site = False
    assert config_hash(cfg) == plain


def test_the_dry_run_names_a_store_per_site(make_config) -> None:
    from flight_parsl.cli.dry_run import plan_lines

    cfg = make_config(SITES, "transfer.per_site=true", backend="parsl", workers=8, topology=str(TWO_SITES),
                      transfer={"kind": "redis"})
    assert any("transfer redis (a store per site: a managed redis-server in each site's namespace)" in line
               for line in plan_lines(cfg))


def test_a_site_without_a_virtual_host_is_refused_before_anything_is_made(make_config, tmp_path) -> None:
    import yaml

    from flight_parsl.processes.multisite import open_run_sites

    files = []
    for src in (SITE_A, SITE_B):
        site = {k: v for k, v in yaml.safe_load(src.read_text()).items() if k != "virtual_host"}
        path = tmp_path / src.name
        path.write_text(yaml.safe_dump(site))
        files.append(str(path))
    cfg = make_config(f"sites.files={','.join(files)}", "transfer.per_site=true", backend="parsl", workers=8,
                      topology=str(TWO_SITES), transfer={"kind": "redis"})
    with pytest.raises(ConfigError, match=r"^config: key 'transfer.per_site' = True: each site needs a virtual_host "
                                          r"for its own store; site\(s\) 'site-a', 'site-b' have none$"):
        with open_run_sites(cfg):
            pass


def test_tasks_get_their_site_store_and_results_are_read_from_the_store_they_are_in(tmp_path) -> None:
    """The routing on its own, over two file stores: one copy of the model in each site's store,
    each site's reference resolves there, a reply lands in the same store, the round's end
    evicts in every store."""
    import numpy as np

    from flight_parsl.core.weights import FlatWeights, Layout
    from flight_parsl.transfer.persite import SiteRefs, SiteTransfer
    from flight_parsl.transfer.proxy import MappedFileConnector, ProxyTransfer

    dirs = {label: tmp_path / label for label in ("site-a", "site-b")}
    channels = {label: ProxyTransfer("file", MappedFileConnector(str(d)), str(d)) for label, d in dirs.items()}
    transfer = SiteTransfer(channels)
    try:
        model = FlatWeights(np.arange(1000, dtype=np.float32), Layout.from_shapes([("w", (1000,), "float32")]))
        refs = transfer.publish(model, 0)
        assert isinstance(refs, SiteRefs) and set(refs.refs) == set(dirs)
        assert all(len(list(d.glob("*"))) >= 1 for d in dirs.values())  # one copy in each
        with pytest.raises(Exception, match="needs its own site's reference"):
            refs.resolve()
        b = transfer.for_site(refs, "site-b")
        assert transfer.for_site(b, "site-b") is b  # a retry keeps its site's reference
        with pytest.raises(Exception, match="no store for site 'site-c'"):
            transfer.for_site(refs, "site-c")
        weights = b.resolve().weights
        result, _, _ = b.reply(weights)
        before = {label: len(list(d.glob("*"))) for label, d in dirs.items()}
        assert transfer.store_name == ",".join(c.store_name for c in channels.values())
        assert np.array_equal(transfer.collect(result).view("w"), np.arange(1000, dtype=np.float32))
        assert before["site-b"] > len(list(dirs["site-a"].glob("*")))  # the reply is in site-b's store only
        transfer.end_round(0)
        assert all(not [f for f in d.glob("*")] for d in dirs.values())
    finally:
        transfer.close()


def _leftovers() -> list[str]:
    pid = os.getpid()
    ns = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True).stdout
    devs = subprocess.run(["ip", "-o", "link", "show"], check=False, capture_output=True, text=True).stdout
    out = [line.split()[0] for line in ns.splitlines() if line.startswith(f"fpns-{pid}-")]
    out += [line.split(": ")[1] for line in devs.splitlines()
            if ": " in line and line.split(": ")[1].startswith(("fpv", "fpbr")) and str(pid) in line]
    return out


def _redis_children() -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True) if "redis-server" in " ".join(p.cmdline())]


@pytest.mark.skipif(NO_NETNS is not None, reason=f"no network namespaces here: {NO_NETNS}")
def test_site_links_carry_one_model_down_and_one_partial_up_per_round(make_config, tmp_path, monkeypatch) -> None:
    """Two sites, an aggregator per site, one client per task (10 MB model, 2 rounds): with a
    store per site each link carries per round the model once down and the site's partial
    once up (within 5%); with one store (on the bridge) the clients' results cross it too."""
    from conftest import read_csv, read_summary, run_quietly

    from flight_parsl.transfer.redis_server import ManagedRedis, count_keys

    left_keys: list[tuple[str, int]] = []
    stop = ManagedRedis.stop

    listed: list[bool] = []  # each server in its run's leftovers.json, for a coordinator killed mid-run

    def counting_stop(self: ManagedRedis) -> None:  # the run's keys, just before its servers go
        if self.running and self._address is not None:
            left_keys.append((str(self._address), count_keys(self._address, password=self.password,
                                                              tls=self.tls, ca=self.ca_pem)))
            if self.netns is not None:
                noted = json.loads((tmp_path / "per_site_True" / "leftovers.json").read_text())
                listed.append({"pid": self.pid, "match": "redis-server"}.items() <= next(
                    (p for p in noted["processes"] if p["pid"] == self.pid), {}).items()
                    and str(self.directory) in noted["directories"]
                    and (self.unix_socket is None or str(Path(self.unix_socket).parent) in noted["directories"]))
        stop(self)

    monkeypatch.setattr(ManagedRedis, "stop", counting_stop)
    rounds = 2
    common = dict(
        backend="parsl", workers=8, rounds=rounds, topology=str(TWO_SITES), train={"mode": "none"},
        model={"name": "mlp", "in_channels": 3, "image_size": 64},  # 2.5M parameters, 10 MB
        plan={"clients_per_task": 1},
    )
    figures = {}
    per_round: dict[bool, list[dict]] = {}  # rounds.csv link_bytes: each round's bytes on each link
    for per_site in (True, False):
        run = run_quietly(make_config, SITES, out=str(tmp_path / f"per_site_{per_site}"),
                          transfer={"kind": "redis", "per_site": per_site}, **common)
        summary = read_summary(run)
        assert summary["status"] == "completed", summary.get("error")
        model = summary["model_bytes"]
        assert model > 9_000_000
        figures[per_site] = summary["site_links"]
        per_round[per_site] = [json.loads(r["link_bytes"]) for r in read_csv(run / "rounds.csv")]
        for label in ("site-a", "site-b"):  # a store on each site's own host, or none
            site = summary["sites"][label]
            if per_site:
                assert site["store"].startswith(f"{site['host_address']}:"), site
            else:
                assert site["store"] is None, site
        for host, counts in summary["site_links"].items():
            for way in ("to_host", "from_host"):
                print(f"per_site={per_site} {host} {way}: {counts[way] / rounds / model:.3f} models per round "
                      f"({counts[way]} bytes over {rounds} rounds)")
    payload = rounds * model  # each way: 1 model down, 1 partial up per round
    for host in ("host-a", "host-b"):
        for way in ("to_host", "from_host"):
            overhead = figures[True][host][way] - payload
            print(f"per_site {host} {way}: overhead {overhead} bytes ({overhead / payload:.2%}) over {rounds} rounds")
            assert 0 < overhead <= 0.05 * payload, (host, way, figures[True][host][way], payload)
        # one store: each site's four results cross up, and come back down to the site's aggregator
        assert figures[False][host]["from_host"] >= 4 * payload, figures[False][host]
        assert figures[False][host]["to_host"] >= 4 * payload, figures[False][host]
        # rounds.csv, round by round: one model each way with a store per site, 4+ with one store
        for way in ("to_host", "from_host"):
            mine = [r[host][way] / model for r in per_round[True]]
            print(f"rounds.csv link_bytes per_site {host} {way}: {', '.join(f'{m:.3f}' for m in mine)} models")
            assert len(mine) == rounds and all(1.0 < m <= 1.05 for m in mine), (host, way, mine)
            assert sum(r[host][way] for r in per_round[True]) <= figures[True][host][way]
            assert all(r[host][way] >= 4 * model for r in per_round[False]), (host, way, per_round[False])
    assert left_keys and all(n == 0 for _, n in left_keys), left_keys
    assert len(left_keys) == 3  # two site servers, then the bridge's
    assert listed == [True, True]
    assert _redis_children() == [] and _leftovers() == []
    import threading

    assert not [t.name for t in threading.enumerate() if t.name.startswith("collect-")]  # the readers went too


def test_the_sites_partials_are_read_at_once_and_fold_bit_identical(tmp_path) -> None:
    """Read ahead (what the engine does as results arrive): each site's partial is read in its
    own site's thread, so two sites' slow reads overlap; collect hands over exactly the bytes
    a direct read gives; a read that fails at one site fails only that site's collect, and
    the other site's partial still folds."""
    import threading
    import time

    import numpy as np

    from flight_parsl.core.errors import TransferError
    from flight_parsl.core.weights import FlatWeights, Layout
    from flight_parsl.fl.aggregate import WeightedMean
    from flight_parsl.transfer.persite import SiteTransfer
    from flight_parsl.transfer.proxy import MappedFileConnector, ProxyTransfer

    delay = 0.5
    labels = ("site-a", "site-b")
    channels = {label: ProxyTransfer("file", MappedFileConnector(str(tmp_path / label)), label) for label in labels}
    readers: dict[str, set[str]] = {label: set() for label in labels}
    for label, channel in channels.items():
        plain = channel.read

        def slow(ref, plain=plain, label=label):  # a link's worth of time per read, noting the thread
            readers[label].add(threading.current_thread().name)
            time.sleep(delay)
            return plain(ref)

        channel.read = slow
    transfer = SiteTransfer(channels)
    layout = Layout.from_shapes([("w", (50_000,), "float32")])
    rng = np.random.default_rng(0)
    try:
        refs = transfer.publish(FlatWeights(np.zeros(50_000, dtype=np.float32), layout), 0)
        parts = {label: FlatWeights(rng.standard_normal(50_000).astype(np.float32), layout) for label in labels}
        results = {label: transfer.for_site(refs, label).reply(parts[label])[0] for label in labels}

        def fold(collected):
            agg = WeightedMean(parts["site-a"])
            for label in labels:
                agg.add(collected[label], 2.0 if label == "site-a" else 3.0)
            return agg.result().buffer

        t0 = time.perf_counter()
        for ref in results.values():
            transfer.prefetch(ref)
            transfer.prefetch(ref)  # a second call starts no second read
        ahead = {label: transfer.collect(results[label]) for label in labels}
        took = time.perf_counter() - t0
        assert took < 1.6 * delay, f"two sites' reads took {took:.2f} s: one after the other"
        assert all(names and all(n.startswith(f"collect-{label}") for n in names) for label, names in readers.items())
        direct = {label: channels[label].collect(results[label]) for label in labels}  # read now, no read ahead
        assert np.array_equal(fold(ahead), fold(direct))
        assert fold(ahead).tobytes() == fold(direct).tobytes()
        assert all(np.array_equal(ahead[label].buffer, parts[label].buffer) for label in labels)

        # a failure at one site: site-a's result is gone from its store; site-b's still folds
        again = {label: transfer.for_site(refs, label).reply(parts[label])[0] for label in labels}
        channels["site-a"].store.connector.evict(again["site-a"].key)
        for ref in again.values():
            transfer.prefetch(ref)
        with pytest.raises(TransferError, match="missing"):
            transfer.collect(again["site-a"])
        agg = WeightedMean(parts["site-b"])
        agg.add(transfer.collect(again["site-b"]), 1.0)
        assert np.array_equal(agg.result().buffer, parts["site-b"].buffer)
        transfer.end_round(0)
        assert all(not list((tmp_path / label).glob("*")) for label in labels)
    finally:
        transfer.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("collect-")]
