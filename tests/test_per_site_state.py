"""A store per site with client state and faults (``transfer.per_site=true``).

Without namespaces: each key of the client state (a client's momentum, its residual, an
aggregator's residual) is routed to its site's store, a task gets its site's handle only, a
checkpoint's snapshot restores into the right sites; ``faults.redis_stop`` takes ``ROUND`` or
``SITE@ROUND``. As root in namespaces: a run keeping momentum and error-feedback residuals
gives the rounds of the same run with one store, keeps each client's state in its own site's
store; a SIGKILL of one site's redis-server fails that site's clients, and the run goes on:
without client state, and with it (lost with the server, read back from the site's mirror by
the site's tasks: the rounds of the same run that lost no state); a blob in neither the store
nor the mirror stops it with one message, and ``--resume`` restores every client's state from
the checkpoint.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import time
from pathlib import Path

import pytest

from flight_parsl.core.errors import ConfigError
from flight_parsl.execution.netns import netns_available

REPO = Path(__file__).resolve().parents[1]
TWO_SITES = REPO / "configs" / "topologies" / "example_two_sites.yaml"
SITE_A = REPO / "configs" / "parsl" / "netns" / "site-a.yaml"
SITE_B = REPO / "configs" / "parsl" / "netns" / "site-b.yaml"
SITES = f"sites.files={SITE_A},{SITE_B}"
STATE = ["model.name=logreg", "train.keep_momentum=true", "transfer.codec=int8", "transfer.error_feedback=true"]

NO_NETNS = netns_available()


def _placement():
    from flight_parsl.engine.placement import place
    from flight_parsl.topology.tree import parse_topology

    tree = parse_topology(str(TWO_SITES), 8)
    return tree, place(tree, 8, ["site-a", "site-b"])


def test_each_key_of_the_client_state_lives_in_its_sites_store(tmp_path) -> None:
    from flight_parsl.engine.sync import AggregatorResiduals, _at_site
    from flight_parsl.transfer.persite import SiteState
    from flight_parsl.transfer.state import DirState, VersionBook, feedback_key

    tree, placement = _placement()

    def fresh(name: str) -> tuple[SiteState, dict[str, Path]]:
        dirs = {label: tmp_path / name / label for label in ("site-a", "site-b")}
        for d in dirs.values():
            d.mkdir(parents=True)
        state = SiteState({label: DirState(str(d)) for label, d in dirs.items()}, placement)
        state.name_aggregators(node.name for node in tree.aggregators)
        return state, dirs

    def names(d: Path) -> set[str]:
        return {p.name for p in d.iterdir()}

    state, dirs = fresh("run")
    book = VersionBook(state, momentum=True, residuals=True)
    aggs = AggregatorResiduals(state, tree)
    for clients, site in (([0, 1], "site-a"), ([4, 5], "site-b")):  # what a train task does at its site
        view = _at_site(book.view(clients, 0, 0), site)
        assert view.store is state.stores[site]  # the task carries its own site's store, no other
        for c in clients:
            view.put(c, f"momentum {c}".encode())
            view.put(feedback_key(c), f"residual {c}".encode())
        book.accept(clients, 0, 0)
    for node, site in (("agg-a", "site-a"), ("agg-b", "site-b")):  # an aggregate task at its site
        feedback = _at_site(aggs.feedback(node, 0, 0), site)
        assert feedback.store is state.stores[site]
        feedback.keep(f"residual {node}".encode())
        aggs.accept(node, 0, 0)
    assert names(dirs["site-a"]) == {"0@1.0.bin", "1@1.0.bin", "-1@1.0.bin", "-2@1.0.bin", f"{-(1 << 40)}@1.0.bin"}
    assert names(dirs["site-b"]) == {"4@1.0.bin", "5@1.0.bin", "-5@1.0.bin", "-6@1.0.bin", f"{-(1 << 40) - 1}@1.0.bin"}
    assert state.get(5, "1.0") == b"momentum 5" and state.get(feedback_key(0), "1.0") == b"residual 0"
    assert "site site-b's store" in state.where(5)

    # the checkpoint: read through the routing, restored into a fresh run's stores at the same sites
    saved, residuals, agg_saved = book.snapshot(), book.residual_snapshot(), aggs.snapshot()
    again, again_dirs = fresh("resumed")
    VersionBook(again, momentum=True, residuals=True).restore(saved, residuals)
    AggregatorResiduals(again, tree).restore(agg_saved)
    assert names(again_dirs["site-a"]) == names(dirs["site-a"]) and names(again_dirs["site-b"]) == names(dirs["site-b"])

    # a lost site store: the checkpoint names the site and what to do
    (dirs["site-b"] / "4@1.0.bin").unlink()
    with pytest.raises(Exception, match=r"client 4 is missing from the store \(site site-b's store\).*--resume"):
        book.snapshot()
    # pickled (a reused executor's release task) it keeps the stores only
    shipped = pickle.loads(pickle.dumps(state))
    assert shipped.placement is None and set(shipped.stores) == {"site-a", "site-b"}
    with pytest.raises(Exception, match="no client state for site 'site-c'"):
        state.for_site("site-c")


def test_the_checkpoint_reads_the_sites_mirrors_and_asks_their_stores_only_what_they_lost(tmp_path) -> None:
    """A site's store with a mirror (MirroredState): a task's write goes to both, the coordinator's
    snapshot reads the mirror and asks the store only which accepted keys it lost (key names);
    a blob the store lost is read back from the mirror by the site's task, which puts it back;
    a blob in neither is one message asking for --resume."""
    from dataclasses import replace

    from flight_parsl.engine.sync import NO_CHECKPOINT, _ClientBook
    from flight_parsl.fl.membership import Membership
    from flight_parsl.transfer.persite import SiteState, site_mirrors
    from flight_parsl.transfer.state import DirState, MirroredState, VersionBook

    class Server(DirState):  # a site's server: counts the blobs read from it, tells what it lost
        reads: list[int] = []

        def get(self, client, version=None):
            Server.reads.append(client)
            return super().get(client, version)

        def missing(self, keys):
            return [(c, v) for c, v in keys if DirState.get(self, c, v) is None]

    tree, placement = _placement()
    run = tmp_path / "run"
    with site_mirrors(run, ["site-a", "site-b"]) as mirrors:
        servers = {label: Server(str(tmp_path / label)) for label in mirrors}
        for server in servers.values():
            Path(server.root).mkdir()
        state = SiteState({label: MirroredState(servers[label], mirrors[label]) for label in mirrors}, placement)
        book = VersionBook(state, momentum=True)
        for clients, site in (([0, 1], "site-a"), ([4, 5], "site-b")):
            view = book.view(clients, 0, 0)
            for c in clients:
                state.for_site(site).put(c, f"momentum {c}".encode(), "1.0")
                assert view.get(c) is None  # nothing accepted yet
            book.accept(clients, 0, 0)
        assert sorted(p.name for p in (run / "site_state" / "site-b").iterdir()) == ["4@1.0.bin", "5@1.0.bin"]
        Server.reads.clear()
        assert state.for_site("site-a").get(0, "1.0") == b"momentum 0" and Server.reads == [0]  # a task: its server
        Server.reads.clear()
        assert book.snapshot() == {c: ("1.0", f"momentum {c}".encode()) for c in (0, 1, 4, 5)}
        assert Server.reads == []  # the checkpoint: the mirrors only
        assert state.restorable(book.accepted_keys()) == {}  # no server lost anything

        # site-b's server lost clients 4's and 5's state (stopped, back empty): the mirror holds it
        (tmp_path / "site-b" / "4@1.0.bin").unlink()
        (tmp_path / "site-b" / "5@1.0.bin").unlink()
        assert state.restorable(book.accepted_keys()) == {"site-b": [(4, "1.0"), (5, "1.0")]}
        assert book.snapshot()[5] == ("1.0", b"momentum 5") and Server.reads == []  # the checkpoint goes on
        # the site's next task reads client 5's state from the mirror and puts it back into the server
        view = book.view([5], 1, 0)
        site_b = state.for_site("site-b")
        assert replace(view, store=site_b).get(5) == b"momentum 5"
        assert (tmp_path / "site-b" / "5@1.0.bin").read_bytes() == b"momentum 5"
        assert state.restorable(book.accepted_keys()) == {"site-b": [(4, "1.0")]}
        clients = _ClientBook(Membership(8, 1, 1), None, book)  # the sync loop's: what each checkpoint records
        assert clients.from_mirrors() == {"site-b": [(4, "1.0")]}
        assert clients.from_mirrors() == {}  # still lost, not read back yet: recorded once
        Server.reads.clear()
        assert site_b.get(5, "1.0") == b"momentum 5" and Server.reads == [5]  # local to the server again
        # a blob in neither (the mirror's file gone too): the run cannot go on from it, --resume can
        (run / "site_state" / "site-b" / "4@1.0.bin").unlink()
        with pytest.raises(Exception, match=r"^the accepted state 1\.0 of client 4 is missing from the store \(site "
                                            r"site-b's store, and its mirror .*site_state/site-b\): a Redis that was "
                                            r"stopped lost it and its mirror does not hold it; continue from the last "
                                            r"checkpoint with --resume$"):
            state.restorable(book.accepted_keys())
        with pytest.raises(Exception, match=r"does not hold it; the run keeps no checkpoint to resume from "
                                            r"\(round\.checkpoint=false\): start it again$"):
            clients.from_mirrors(NO_CHECKPOINT)  # the sync loop's, when the run keeps no checkpoint
        assert site_b.get(4, "1.0") is None  # a task finds nothing, as before the mirror
        with pytest.raises(Exception, match=r"state 1\.0 of client 4 is missing from the store \(site site-b's store"):
            book.snapshot()
        book.accept([0], 1, 0)  # a version no longer accepted goes from the server and the mirror
        assert not (tmp_path / "site-a" / "0@1.0.bin").exists()
        assert not (run / "site_state" / "site-a" / "0@1.0.bin").exists()
    assert not (run / "site_state").exists()
    # what a killed coordinator left: removed by `python -m flight_parsl.cleanup RUN_DIR` (and the next start)
    from flight_parsl.processes.leftovers import clean, left

    (run / "site_state" / "site-b").mkdir(parents=True)
    (run / "site_state" / "site-b" / "4@1.0.bin").write_bytes(b"momentum 4")
    assert left(run) == [str(run / "site_state")]  # what --dry-run lists
    assert clean(run) == [str(run / "site_state")] and not (run / "site_state").exists()


@pytest.mark.parametrize(("overrides", "message"), [
    (["faults.redis_stop=0"], r"key 'faults.redis_stop\[0\]' = 0: 0 is not ROUND or SITE@ROUND"),
    (["faults.redis_stop=site-b@0"], r"'site-b@0' is not ROUND or SITE@ROUND \(rounds count from 1"),
    (["faults.redis_stop=site-b@"], r"'site-b@' is not ROUND or SITE@ROUND"),
    (["faults.redis_stop=site-b@2", "transfer.per_site=false"],
     r"^config: key 'faults.redis_stop' = \['site-b@2'\]: SITE@ROUND stops one site's own redis-server, which only "
     r"transfer.per_site=true runs"),
])
def test_bad_redis_stops_are_one_message(make_config, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(SITES, "transfer.per_site=true", *overrides, backend="parsl", workers=8, topology=str(TWO_SITES),
                    transfer={"kind": "redis"})


def test_redis_stop_takes_rounds_and_site_rounds_and_keeps_old_hashes(make_config) -> None:
    from flight_parsl.config.experiment import RedisStop, config_hash

    cfg = make_config(SITES, "transfer.per_site=true", "faults.redis_stop=2,site-b@3", *STATE, backend="parsl",
                      workers=8, topology=str(TWO_SITES), transfer={"kind": "redis"})
    assert cfg.faults.redis_stop == [RedisStop(2), RedisStop(3, "site-b")]
    assert cfg.to_dict()["faults"]["redis_stop"] == [2, "site-b@3"]
    from flight_parsl.config.experiment import build_config

    plain = build_config(overrides=["faults.redis_stop=2,4", "transfer.kind=redis"])
    assert config_hash(plain) == "2bf024029c284f1d"  # the hash main gave before SITE@ROUND existed


def test_a_site_the_run_does_not_have_is_refused_before_anything_is_made(make_config) -> None:
    from flight_parsl.processes.multisite import open_run_sites

    cfg = make_config(SITES, "transfer.per_site=true", "faults.redis_stop=site-c@2", backend="parsl", workers=8,
                      topology=str(TWO_SITES), transfer={"kind": "redis"})
    with pytest.raises(ConfigError, match=r"^config: key 'faults.redis_stop' = \['site-c@2'\]: site\(s\) 'site-c' are "
                                          r"not sites of the run \(sites: site-a, site-b\)$"):
        with open_run_sites(cfg):
            pass


class _Server:
    """What the injector needs of a ManagedRedis."""

    def __init__(self, pid: int) -> None:
        self.pid, self.running, self.address, self.events = pid, True, f"10.0.0.{pid}:6379", []

    def kill(self) -> None:
        self.running = False
        self.events.append("kill")

    def restart(self) -> str:
        self.running = True
        self.events.append("restart")
        return self.address


@pytest.mark.parametrize(("stop", "killed"), [("2", {"site-a", "site-b"}), ("site-b@2", {"site-b"})])
def test_the_injector_stops_every_sites_server_or_one(make_config, tmp_path, stop, killed) -> None:
    import time

    from conftest import read_csv

    from flight_parsl.processes.injector import FaultInjector, SlotCensus

    cfg = make_config(SITES, "transfer.per_site=true", f"faults.redis_stop={stop}", "faults.kill_after_s=0",
                      "faults.redis_down_s=0", backend="parsl", workers=8, topology=str(TWO_SITES),
                      transfer={"kind": "redis"})
    servers = {"site-a": _Server(1), "site-b": _Server(2)}
    injector = FaultInjector(cfg, tmp_path, SlotCensus(4), None, servers)
    injector.start_round(0)
    injector.start_round(1)
    deadline = time.time() + 5
    while time.time() < deadline and sum(len(s.events) for s in servers.values()) < 2 * len(killed):
        time.sleep(0.05)
    injector.close()
    assert {label for label, s in servers.items() if s.events} == killed
    assert all(s.events == ["kill", "restart"] for label, s in servers.items() if label in killed)
    rows = read_csv(tmp_path / "faults.csv")
    assert sorted(r["action"] for r in rows) == sorted(["redis_kill", "redis_restart"] * len(killed))
    assert all(r["round"] == "2" and "of site site-" in r["detail"] for r in rows)


def test_a_restore_is_a_row_of_faults_csv_even_when_nothing_was_injected(make_config, tmp_path) -> None:
    """A site's server that stopped by itself: the run's ``state_restored`` row makes faults.csv."""
    from conftest import read_csv

    from flight_parsl.processes.injector import FaultInjector, SlotCensus

    cfg = make_config(SITES, "transfer.per_site=true", backend="parsl", workers=8, topology=str(TWO_SITES),
                      transfer={"kind": "redis"})
    injector = FaultInjector(cfg, tmp_path, SlotCensus(4))
    assert not injector and not (tmp_path / "faults.csv").exists()  # nothing injected, no file
    injector.start_round(2)
    injector.record("state_restored", "site-b", "2 accepted blobs of site site-b its server lost (clients 4 5)")
    injector.close()
    rows = read_csv(tmp_path / "faults.csv")
    assert [(r["round"], r["action"], r["target"]) for r in rows] == [("3", "state_restored", "site-b")]
    assert rows[0]["detail"].startswith("2 accepted blobs of site site-b")


@pytest.mark.parametrize("checkpoint", [True, False])
def test_every_round_looks_up_lost_client_state_with_or_without_checkpoints(make_config, tmp_path, monkeypatch,
                                                                             checkpoint) -> None:
    """``round.checkpoint=false`` too: each round's end asks the sites' stores what they lost, so a
    restore is recorded and a blob lost from a store and its mirror stops the run (its message then
    says there is no checkpoint), instead of a task starting its client afresh."""
    from conftest import run_quietly

    from flight_parsl.engine import sync

    hints: list[str] = []
    real = sync._ClientBook.from_mirrors

    def spy(self, hint=sync.RESUME_HINT):
        hints.append(hint)
        return real(self, hint)

    monkeypatch.setattr(sync._ClientBook, "from_mirrors", spy)
    run_quietly(make_config, *STATE, f"round.checkpoint={str(checkpoint).lower()}", workers=4, rounds=3,
                out=str(tmp_path / "run"))
    assert hints == [sync.RESUME_HINT if checkpoint else sync.NO_CHECKPOINT] * 3
    assert (tmp_path / "run" / "checkpoint.pkl").exists() == checkpoint


def _leftovers() -> list[str]:
    pid = os.getpid()
    ns = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True).stdout
    return [line.split()[0] for line in ns.splitlines() if line.startswith(f"fpns-{pid}-")]


def _redis_children() -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True) if "redis-server" in " ".join(p.cmdline())]


def _common(tmp_path: Path, name: str) -> dict:
    return dict(backend="parsl", workers=8, rounds=3, topology=str(TWO_SITES), out=str(tmp_path / name),
                transfer={"kind": "redis"})


@pytest.mark.skipif(NO_NETNS is not None, reason=f"no network namespaces here: {NO_NETNS}")
def test_client_state_stays_at_its_site_comes_back_from_its_mirror_and_resumes(make_config, tmp_path,
                                                                               monkeypatch) -> None:
    """Momentum and error feedback (int8, at clients and at the sites' aggregators), 3 rounds.

    The reference, one store on the bridge: site-b's four clients fail in round 2 (their slots
    SIGKILL themselves, no retry), so they keep their round-1 state. The same with a store per site,
    where site-b's clients fail because site-b's redis-server is SIGKILLed in round 2 and comes
    back empty 3 s into the round (clients 4 to 6 have stored their results, client 7 hangs 5 s, so
    agg-b finds its children's results gone): their accepted state (momentum, residuals, agg-b's
    residual) goes with it. Client 7's task reads its state after the restart, from the mirror, and
    puts it back; the checkpoint finds the other 7 blobs in site-b's mirror and the run goes on
    (faults.csv ``state_restored``); in round 3 site-b's tasks read them back from the mirror, and
    the rounds equal the reference's. Then, at round 3's checkpoint, the test stops site-b's server again
    and removes one blob from the mirror too: the run stops with one message, and ``--resume``
    reruns round 3 from round 2's checkpoint (every client's state written back from it) to the
    same round 3. Each client's state was in its own site's store only, and the coordinator read
    none of it from a site's Redis."""
    from conftest import read_csv, read_summary, run_quietly

    from flight_parsl.config.experiment import resume_config
    from flight_parsl.engine import sync
    from flight_parsl.engine.progress import Progress
    from flight_parsl.engine.runner import run_experiment
    from flight_parsl.processes.injector import FaultInjector
    from flight_parsl.transfer import state as state_module

    found: dict[str, set[int]] = {}  # the site store's address -> the keys the run's client state left there
    mirrored: dict[str, set[int]] = {}  # a site's label -> the keys its tasks mirrored in the run directory
    clear = state_module._clear
    run = tmp_path / "per_site"

    def listing_clear(state, admin):  # just before the run's state keys go: what each store holds
        conn = admin()
        try:
            keys = [k.decode().removeprefix(state.prefix) for k in conn.scan_iter(match=f"{state.prefix}*")]
        finally:
            conn.close()
        found[f"{state.host}"] = {int(k.split("@")[0]) for k in keys}
        for site in (run / "site_state").glob("site-*"):  # the mirrors outlive the stores' keys
            mirrored[site.name] = {int(f.name.split("@")[0]) for f in site.iterdir()}
        clear(state, admin)

    read_by_coordinator: list[int] = []  # client state read from a Redis by this process (the coordinator)
    get = state_module.RedisState.get

    def counting_get(self, client, version=None):
        read_by_coordinator.append(client)
        return get(self, client, version)

    monkeypatch.setattr(state_module, "_clear", listing_clear)
    monkeypatch.setattr(state_module.RedisState, "get", counting_get)
    one = run_quietly(make_config, SITES, *STATE, "faults.kill=4@2,5@2,6@2,7@2", "round.retries=0",
                      **_common(tmp_path, "one_store"))
    assert read_summary(one)["status"] == "completed"
    plain = read_csv(one / "rounds.csv")
    assert [(r["round"], r["reported"], r["failed"]) for r in plain] == [("1", "8", "0"), ("2", "4", "4"),
                                                                          ("3", "8", "0")]
    assert read_by_coordinator  # one store: the checkpoint reads each client's state from the store
    found.clear()
    read_by_coordinator.clear()

    injectors: list[FaultInjector] = []
    start_run = FaultInjector.start_run

    def keep_injector(self):
        injectors.append(self)
        start_run(self)

    lookups: list[dict] = []
    from_mirrors = sync._ClientBook.from_mirrors

    def stop_again_at_round_3(self, *hint):  # site-b's server SIGKILLed again, and client 5's blob gone from the mirror
        if len(lookups) == 2:
            injectors[-1].stop_redis("site-b")
            deadline = time.time() + 30
            while sum(f["action"] == "redis_restart" for f in read_csv(run / "faults.csv")) < 2:
                assert time.time() < deadline, "site-b's server did not come back"
                time.sleep(0.05)
            (run / "site_state" / "site-b" / f"5@{self.versions.accepted[5]}.bin").unlink()
        lookups.append(from_mirrors(self, *hint))
        return lookups[-1]

    monkeypatch.setattr(FaultInjector, "start_run", keep_injector)
    monkeypatch.setattr(sync._ClientBook, "from_mirrors", stop_again_at_round_3)
    # site-b's server SIGKILLed 3 s into round 2 (a round takes well under a second here), when
    # clients 4 to 6 have kept their new state and stored their results while client 7 hangs (5 s):
    # agg-b finds its children's results gone and fails (retried once, failed again)
    faulty = ["faults.redis_stop=site-b@2", "faults.kill_after_s=3", "faults.hang=7@2", "faults.hang_s=5",
              "faults.redis_down_s=0", "round.retries=1"]
    with pytest.raises(Exception, match=r"^the accepted state 3\.\d of client 5 is missing from the store \(site "
                                        r"site-b's store at 10\.[0-9.]+:\d+, and its mirror \S+/site_state/site-b\): "
                                        r"a Redis that was stopped lost it and its mirror does not hold it; continue "
                                        r"from the last checkpoint with --resume$"):
        run_quietly(make_config, SITES, "transfer.per_site=true", *STATE, *faulty, **_common(tmp_path, "per_site"))
    rows = read_csv(run / "rounds.csv")
    assert [(r["round"], r["reported"], r["failed"]) for r in rows] == [("1", "8", "0"), ("2", "4", "4"),
                                                                         ("3", "8", "0")]
    # the rounds after the lost store are those of the run that lost nothing (round 2's train_loss
    # is not: it averages the local losses of site-b's clients that trained before their site failed)
    for mine, theirs in zip(rows, plain, strict=True):
        for column in ("test_loss", "test_acc") + (("train_loss",) if mine["round"] != "2" else ()):
            assert float(mine[column]) == pytest.approx(float(theirs[column]), rel=1e-6, abs=1e-9), (column, mine)
    faults = read_csv(run / "faults.csv")
    assert [(f["round"], f["action"]) for f in faults] == [
        ("2", "redis_kill"), ("2", "redis_restart"), ("2", "state_restored"), ("3", "redis_kill"),
        ("3", "redis_restart")]
    # client 7's task, at its site, read its round-1 state after the kill: from the mirror, put back into
    # the restarted server; the checkpoint finds the other 7 accepted blobs lost, all in the mirror
    restored = faults[2]
    assert restored["target"] == "site-b" and restored["detail"].startswith(
        "7 accepted blobs of site site-b its server lost (clients 4 5 6; residuals of clients 4 5 6; "
        "1 aggregator residual)"), restored
    assert [sorted(d) for d in lookups[:2]] == [[], ["site-b"]]
    assert sorted(lookups[1]["site-b"]) == sorted([(c, "1.0") for c in (4, 5, 6)] + [
        (-1 - c, "1.0") for c in (4, 5, 6)] + [(-(1 << 40) - 1, "1.0")])
    failed = [t for t in read_csv(run / "tasks.csv") if t["status"] != "ok"]
    assert failed and {(t["round"], t["site"]) for t in failed} == {("2", "site-b")}
    assert read_summary(run)["status"] == "failed"
    assert _redis_children() == [] and _leftovers() == []
    # a store per site: the checkpoint read the state from the sites' mirrors, never across a link
    assert read_by_coordinator == [] and not (run / "site_state").exists()
    assert {4, 6, 7} <= mirrored["site-b"] and not mirrored["site-b"] & {0, 1, 2, 3}

    found.clear()
    mirrored.clear()
    monkeypatch.setattr(sync._ClientBook, "from_mirrors", from_mirrors)  # no more stops
    cfg = resume_config(run)  # config.yaml, its injected faults dropped: what --resume runs
    assert not cfg.faults.redis_stop and cfg.transfer.per_site and cfg.train.keep_momentum
    run_experiment(cfg, Progress(cfg.rounds, enabled=False), resume=True)
    assert read_summary(run)["status"] == "completed"
    assert len(read_csv(run / "faults.csv")) == 5  # nothing lost, nothing restored
    resumed = read_csv(run / "rounds.csv")
    assert [(r["round"], r["reported"]) for r in resumed] == [("1", "8"), ("2", "4"), ("3", "8")]
    for column in ("test_loss", "test_acc", "train_loss"):  # round 3 again, its state from the checkpoint
        assert float(resumed[2][column]) == pytest.approx(float(rows[2][column]), rel=1e-6, abs=1e-9), column
    hosts = {label: s["host_address"] for label, s in read_summary(run)["sites"].items()}
    a, b = found[hosts["site-a"]], found[hosts["site-b"]]
    assert a == {0, 1, 2, 3, -1, -2, -3, -4, -(1 << 40)}, a  # momentum, residuals, agg-a's residual
    assert b == {4, 5, 6, 7, -5, -6, -7, -8, -(1 << 40) - 1}, b
    assert mirrored == {"site-a": a, "site-b": b}  # each site's mirror: its own keys (and versions in use)
    assert read_by_coordinator == [] and not (run / "site_state").exists()
    assert _redis_children() == [] and _leftovers() == []


@pytest.mark.skipif(NO_NETNS is not None, reason=f"no network namespaces here: {NO_NETNS}")
def test_a_killed_site_store_fails_its_sites_clients_and_the_run_goes_on(make_config, tmp_path) -> None:
    """No client state: a SIGKILL of site-b's redis-server in round 2 fails site-b's clients
    (recorded in rounds.csv and tasks.csv), the round closes with site-a's, the server comes
    back with the run's user and round 3 has every client again."""
    from conftest import read_csv, read_summary, run_quietly

    run = run_quietly(make_config, SITES, "transfer.per_site=true", "model.name=logreg", "train.mode=none",
                      "faults.redis_stop=site-b@2", "faults.kill_after_s=0", "faults.hang=4@2,5@2,6@2,7@2",
                      "faults.hang_s=0.5", "faults.redis_down_s=0", "round.retries=1", **_common(tmp_path, "run"))
    assert read_summary(run)["status"] == "completed"
    rows = read_csv(run / "rounds.csv")
    assert [(r["round"], r["reported"], r["failed"]) for r in rows] == [("1", "8", "0"), ("2", "4", "4"),
                                                                         ("3", "8", "0")]
    faults = read_csv(run / "faults.csv")
    assert [f["action"] for f in faults] == ["redis_kill", "redis_restart"]
    for f in faults:
        with pytest.raises(ProcessLookupError):
            os.kill(int(f["target"]), 0)  # neither the killed nor the restarted server is left
    failed = [t for t in read_csv(run / "tasks.csv") if t["status"] != "ok"]
    assert failed and {(t["round"], t["site"]) for t in failed} == {("2", "site-b")}
    assert _redis_children() == [] and _leftovers() == []


def test_the_bulk_reader_drops_sockets_a_restarted_server_closed() -> None:
    """After faults.redis_stop restarts a server, the coordinator's idle reading sockets are closed
    at the other end: the next read takes a fresh socket instead of failing on the dead one."""
    from redis_fixtures import require_redis_server

    from flight_parsl.transfer.bulk import BulkReader
    from flight_parsl.transfer.redis_server import ManagedRedis

    require_redis_server()
    with ManagedRedis(password="pw-for-this-test-only") as server:
        admin = server.admin(5.0)
        admin.set("k", b"before")
        admin.close()
        address = server.address
        reader = BulkReader(address.host, address.port, 5.0, "pw-for-this-test-only", reconnect=True)
        plain = BulkReader(address.host, address.port, 5.0, "pw-for-this-test-only")  # one store's, as before
        assert bytes(reader.get("k")) == b"before" and bytes(plain.get("k")) == b"before"
        server.kill()
        server.restart()
        admin = server.admin(5.0)
        admin.set("k", b"after")
        admin.close()
        assert bytes(reader.get("k")) == b"after"
        with pytest.raises(Exception):  # noqa: B017 - the dead socket's end, however the kernel words it
            plain.get("k")
        reader.close()
        plain.close()


@pytest.mark.skipif(NO_NETNS is not None, reason=f"no network namespaces here: {NO_NETNS}")
def test_every_sites_server_killed_in_a_round_and_the_run_goes_on(make_config, tmp_path) -> None:
    """``faults.redis_stop=2`` with a store per site: every site's redis-server is SIGKILLed 3 s into
    round 2 (a round takes well under a second here), when site-a's clients and their aggregator
    are done and three of site-b's clients have stored their results, while client 7 hangs (5 s).
    Both servers come back empty: client 7 replies into site-b's new server, but agg-b finds its
    other children's results gone and fails (retried once, failed again), so the round closes
    with site-a's four; round 3 publishes into both restarted servers and has every client again.
    Nothing is left: no Redis process (the sites' servers go with their keys) or namespace."""
    from conftest import read_csv, read_summary, run_quietly

    run = run_quietly(make_config, SITES, "transfer.per_site=true", "model.name=logreg", "train.mode=none",
                      "faults.redis_stop=2", "faults.kill_after_s=3", "faults.hang=7@2",
                      "faults.hang_s=5", "faults.redis_down_s=0", "round.retries=1", **_common(tmp_path, "run"))
    summary = read_summary(run)
    assert summary["status"] == "completed"
    rows = read_csv(run / "rounds.csv")
    assert [(r["round"], r["reported"], r["failed"]) for r in rows] == [("1", "8", "0"), ("2", "4", "4"),
                                                                         ("3", "8", "0")]
    faults = read_csv(run / "faults.csv")
    assert sorted(f["action"] for f in faults) == ["redis_kill", "redis_kill", "redis_restart", "redis_restart"]
    assert all(f["round"] == "2" for f in faults)
    assert {f["detail"].split(" of site ")[1].split()[0] for f in faults} == {"site-a", "site-b"}
    for f in faults:
        with pytest.raises(ProcessLookupError):
            os.kill(int(f["target"]), 0)  # neither the killed nor the restarted servers are left
    failed = [t for t in read_csv(run / "tasks.csv") if t["status"] != "ok"]
    assert failed and {(t["round"], t["site"]) for t in failed} == {("2", "site-b")}
    assert _redis_children() == [] and _leftovers() == []  # the sites' servers went with their keys
