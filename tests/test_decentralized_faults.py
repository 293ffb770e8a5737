"""Decentralized runs under the round policy: retries from the last accepted state, quorum close,
the exchange graph re-formed over the members, re-admission; a real HTEX worker SIGKILLed mid-round."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import read_csv, read_summary, run_quietly

from flight_parsl.core.errors import RoundError
from flight_parsl.topology.peers import exponential_routes
from flight_parsl.transfer.state import DirState, VersionBook

pytestmark = pytest.mark.timeout(180)

SMALL = (
    "partition.kind=majority", "partition.samples_per_client=60", "peer.test_samples=20", "peer.batch_size=20",
    "model.name=logreg", "plan.clients_per_task=1", "slots=4",
)
PEER = {"mode": "decentralized", "strategy": {"name": "proxyfl"}}


def _accs(run: Path) -> dict[tuple[str, str], tuple[str, str, str]]:
    """(round, client) -> what the accepted attempt measured."""
    return {
        (t["round"], t["client"]): (t["private_test_acc"], t["proxy_test_acc"], t["epsilon"])
        for t in read_csv(run / "tasks.csv") if t["status"] == "ok"
    }


def _patch(monkeypatch, fail) -> None:
    """Make peer tasks fail when ``fail(round_idx, clients, attempt)`` says how: 'after' (the state
    is written, then the task raises), 'hang' (the task sleeps, then runs)."""
    import flight_parsl.engine.decentralized as engine

    real = engine.peer_task

    def task(channel, round_idx, items, workload, state, faults, attempt):
        how = fail(round_idx, [c for c, _, _ in items], attempt)
        if how == "hang":
            time.sleep(5.0)
        res = real(channel, round_idx, items, workload, state, faults, attempt)
        if how == "after":
            raise RuntimeError("injected failure after the state was written")
        return res

    monkeypatch.setattr(engine, "peer_task", task)


def test_the_graph_is_re_formed_over_the_members() -> None:
    assert exponential_routes(0, [0, 1, 2, 3]) == exponential_routes(0, 4)
    assert exponential_routes(1, [0, 2, 5]) == {0: 5, 2: 0, 5: 2}  # shift 2 over three members
    assert exponential_routes(0, [4]) == {}


def test_versions_switch_only_when_a_result_is_accepted(tmp_path) -> None:
    book = VersionBook(DirState(str(tmp_path)))
    book.view([0], 0, 0).put(0, b"round 1")
    book.accept([0], 0, 0)
    book.view([0], 1, 0).put(0, b"half of round 2")  # this attempt is lost: never accepted
    assert book.view([0], 1, 1).get(0) == b"round 1"  # the retry starts from round 1
    book.view([0], 1, 1).put(0, b"round 2")
    book.accept([0], 1, 1)
    assert book.view([0], 2, 0).get(0) == b"round 2"
    assert not (tmp_path / "0@1.0.bin").exists()  # the version it replaced is gone
    assert not (tmp_path / "0@2.0.bin").exists()  # and so is what the lost attempt wrote
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0@2.1.bin"]
    assert book.snapshot() == {0: ("2.1", b"round 2")}


def test_a_retried_client_starts_from_its_last_accepted_round(make_config, monkeypatch, tmp_path) -> None:
    clean = run_quietly(make_config, *SMALL, workers=4, rounds=3, out=str(tmp_path / "clean"), **PEER)
    _patch(monkeypatch, lambda r, clients, attempt: "after" if r == 1 and 1 in clients and attempt == 0 else None)
    out = run_quietly(make_config, *SMALL, "round.retries=1", "round.backoff_s=0", workers=4, rounds=3,
                      out=str(tmp_path / "retried"), **PEER)
    tasks = read_csv(out / "tasks.csv")
    assert [(t["round"], t["client"], t["attempt"], t["status"]) for t in tasks if t["client"] == "1"
            and t["round"] == "2"] == [("2", "1", "0", "error"), ("2", "1", "1", "ok")]
    assert [r["retries"] for r in read_csv(out / "rounds.csv")] == ["0", "1", "0"]
    # the first attempt wrote client 1's state and failed; the retry did not start from it
    assert _accs(out) == _accs(clean)
    assert read_summary(out)["final_epsilon"] == read_summary(clean)["final_epsilon"]


def test_a_late_client_starts_the_next_round_from_its_last_accepted_state(make_config, monkeypatch, tmp_path) -> None:
    clean = run_quietly(make_config, *SMALL, workers=4, rounds=3, out=str(tmp_path / "clean"), **PEER)
    _patch(monkeypatch, lambda r, clients, attempt: "hang" if r == 1 and 3 in clients else None)
    out = run_quietly(make_config, *SMALL, "round.deadline_s=2.5", "round.retries=0", workers=4, rounds=3,
                      out=str(tmp_path / "late"), **PEER)
    rounds = read_csv(out / "rounds.csv")
    assert [(r["reported"], r["late"]) for r in rounds] == [("4", "0"), ("3", "1"), ("4", "0")]
    late = [t for t in read_csv(out / "tasks.csv") if t["status"] != "ok"]
    assert [(t["round"], t["client"], t["status"]) for t in late] == [("2", "3", "deadline")]
    # its round-2 work came too late and was not accepted: in round 3 it has spent the privacy
    # budget of two rounds (the clean run's round 2), not three
    assert _accs(out)[("3", "3")][2] == _accs(clean)[("2", "3")][2] != _accs(clean)[("3", "3")][2]
    assert read_summary(out)["status"] == "completed"


def test_a_peer_that_keeps_missing_leaves_the_graph_and_is_readmitted(make_config, monkeypatch) -> None:
    _patch(monkeypatch, lambda r, clients, attempt: "after" if r in (0, 1) and 3 in clients else None)
    out = run_quietly(make_config, *SMALL, "round.retries=0", "round.max_missed=1", "round.readmit_after=1",
                      "round.min_fraction=0.5", workers=4, rounds=5, **PEER)
    rounds = read_csv(out / "rounds.csv")
    assert [(r["members"], r["reported"], r["removed"], r["readmitted"]) for r in rounds] == [
        ("4", "3", "", ""), ("4", "3", "3", ""), ("3", "3", "", ""), ("4", "4", "", "3"), ("4", "4", "", "")]
    tasks = read_csv(out / "tasks.csv")
    assert not [t for t in tasks if t["client"] == "3" and t["round"] == "3"]  # out of the graph
    # the graph over the three members: each of them received a model in rounds 3 and 4 (over all
    # four clients, client 3 would have been client 1's sender in round 3 and client 0's in round 4)
    for r in ("3", "4"):
        got = {t["client"]: int(t["client_bytes_in"]) for t in tasks if t["round"] == r and t["client"] != "3"}
        assert len(got) == 3 and len(set(got.values())) == 1, got
    assert read_summary(out)["status"] == "completed"


def test_below_min_fraction_the_run_stops_with_every_finished_row(make_config, monkeypatch) -> None:
    _patch(monkeypatch, lambda r, clients, attempt: "after" if r == 1 and min(clients) < 3 else None)
    with pytest.raises(RoundError, match=r"round 2: 1/4 clients reported .* below the quorum of 2"):
        run_quietly(make_config, *SMALL, "round.retries=0", workers=4, rounds=3, **PEER)


@pytest.mark.timeout(300)
def test_a_sigkilled_htex_worker_mid_round_costs_one_attempt(make_config, tmp_path) -> None:
    """Client 1's worker process SIGKILLs itself in round 2 after client 0's step wrote its state (two
    clients per task): both are retried on a live slot from round 1's state, and every accepted
    measurement equals a run without the kill."""
    common = (*SMALL[:-2], "plan.clients_per_task=2", "slots=2", "transfer.kind=file",
              f"transfer.file_dir={tmp_path}")
    clean = run_quietly(make_config, *common, workers=4, rounds=3, out=str(tmp_path / "clean"), **PEER)
    out = run_quietly(make_config, *common, "faults.kill=1@2", "round.retries=1", workers=4, rounds=3,
                      backend="parsl", out=str(tmp_path / "killed"), **PEER)
    tasks = read_csv(out / "tasks.csv")
    lost = [t for t in tasks if t["status"] != "ok"]
    assert len(lost) == 2 and {(t["round"], t["attempt"], t["status"]) for t in lost} == {("2", "0", "lost")}
    assert "1" in {t["client"] for t in lost} and "WorkerLost" in lost[0]["error"]
    killed = {t["client"] for t in lost}
    retried = [t for t in tasks if t["round"] == "2" and t["client"] in killed and t["status"] == "ok"]
    assert sorted(t["attempt"] for t in retried) == ["1", "1"]
    assert [r["reported"] for r in read_csv(out / "rounds.csv")] == ["4", "4", "4"]
    assert _accs(out) == _accs(clean)
    assert read_summary(out)["status"] == "completed"
    assert list(tmp_path.glob("flight_parsl-*")) == []


def test_a_run_stopped_below_quorum_resumes_through_the_api(make_config, monkeypatch, tmp_path) -> None:
    import flight_parsl

    clean = run_quietly(make_config, *SMALL, workers=4, rounds=4, out=str(tmp_path / "clean"), **PEER)
    _patch(monkeypatch, lambda r, clients, attempt: "after" if r == 2 else None)
    with pytest.raises(RoundError, match="round 3: 0/4 clients reported"):
        run_quietly(make_config, *SMALL, "round.retries=0", workers=4, rounds=4, out=str(tmp_path / "run"), **PEER)
    monkeypatch.undo()
    done = flight_parsl.run(str(tmp_path / "run"), resume=True)
    assert done.summary["status"] == "completed" and done.summary["resumed_from_round"] == 3
    accs = _accs(tmp_path / "run")
    assert {k: v for k, v in accs.items() if k[0] in ("3", "4")} == {
        k: v for k, v in _accs(clean).items() if k[0] in ("3", "4")}


@pytest.mark.timeout(300)
def test_a_timed_slot_kill_on_htex_costs_one_attempt(make_config, tmp_path) -> None:
    """``faults.kill_slots=1@1.5s`` for real on a decentralized (ProxyFL) run on HTEX: the coordinator
    SIGKILLs one primed worker process 1.5 s after the first round started; the task it ran is lost and
    retried on a live slot from the client's last accepted state, and every accepted measurement equals
    a run without the kill."""
    hangs = ",".join(f"{c}@1" for c in range(4))  # 4 clients x 1 s on 2 slots: a 2 s first round
    common = (*SMALL[:-1], "slots=2", "transfer.kind=file", f"transfer.file_dir={tmp_path}")
    clean = run_quietly(make_config, *common, workers=4, rounds=3, out=str(tmp_path / "clean"), **PEER)
    out = run_quietly(make_config, *common, f"faults.hang={hangs}", "faults.hang_s=1", "faults.kill_slots=1@1.5s",
                      "round.retries=1", "round.backoff_s=0", workers=4, rounds=3, backend="parsl",
                      out=str(tmp_path / "killed"), **PEER)
    faults = read_csv(out / "faults.csv")
    assert [f["action"] for f in faults] == ["kill_slot"], faults
    killed = int(faults[0]["target"])
    summary = read_summary(out)
    assert killed in {int(slot.split(":")[1]) for slot in summary["slot_pids"]}  # a primed worker
    first_start = float(read_csv(out / "rounds.csv")[0]["start"])
    assert 1.5 <= float(faults[0]["time"]) - first_start < 4.0 and faults[0]["round"] == "1"
    tasks = read_csv(out / "tasks.csv")
    lost = [t for t in tasks if t["status"] != "ok"]
    assert len(lost) == 1 and lost[0]["status"] == "lost" and int(lost[0]["pid"]) == killed, lost
    assert lost[0]["round"] == faults[0]["round"] and "WorkerLost" in lost[0]["error"]
    retried = [t for t in tasks if (t["round"], t["client"]) == (lost[0]["round"], lost[0]["client"])
               and t["status"] == "ok"]
    assert [t["attempt"] for t in retried] == ["1"] and int(retried[0]["pid"]) != killed
    assert [r["reported"] for r in read_csv(out / "rounds.csv")] == ["4", "4", "4"]
    assert [r["killed_slots"] for r in read_csv(out / "rounds.csv")][int(faults[0]["round"]) - 1] == "1"
    assert _accs(out) == _accs(clean)
    assert summary["status"] == "completed"
    assert list(tmp_path.glob("flight_parsl-*")) == []
