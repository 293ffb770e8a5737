"""Resume in every mode: a coordinator SIGKILLed in a subprocess mid-run (thread backend), then
``--resume``, ends bit-identical to a run that was never stopped (sync with keep_momentum and AIMD,
sync on a tree and FedAsync with top-k and error feedback, async FedAsync and FedBuff, decentralized
ProxyFL, also with int8 proxies); on HTEX a resumed ProxyFL run's accuracy matches."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_csv, read_summary

from flight_parsl.cli.scale import main
from flight_parsl.engine.checkpoint import load
from flight_parsl.worker.peer_training import load_state

pytestmark = pytest.mark.timeout(300)

PEER = ["partition.kind=majority", "partition.samples_per_client=60", "peer.test_samples=20", "peer.batch_size=20"]

MODES = {
    "sync": ["--workers", "3", "--rounds", "5", "slots=1", "round.quorum=0.67", "strategy.aimd=true",
             "train.keep_momentum=true"],
    "sync-feedback": ["--workers", "4", "--rounds", "5", "slots=1", "strategy.clients_per_round=3",
                      "plan.clients_per_task=1", "topology=tree:2", "transfer.codec=topk:0.1",
                      "transfer.error_feedback=true"],
    "fedasync": ["--mode", "async", "--strategy", "fedasync", "--workers", "4", "--rounds", "5", "slots=1"],
    "fedasync-feedback": ["--mode", "async", "--strategy", "fedasync", "--workers", "4", "--rounds", "5", "slots=1",
                          "transfer.codec=topk:0.1", "transfer.error_feedback=true", "transfer.codec_down=fp16"],
    "fedbuff": ["--mode", "async", "--strategy", "fedbuff", "--workers", "4", "--rounds", "5", "slots=1",
                "strategy.buffer_size=3"],
    "proxyfl": ["--mode", "decentralized", "--strategy", "proxyfl", "--workers", "4", "--rounds", "5", "slots=2",
                *PEER],
    "proxyfl-int8": ["--mode", "decentralized", "--strategy", "proxyfl", "--workers", "4", "--rounds", "5",
                     "slots=2", "transfer.codec=int8", *PEER],
}


def _kill_after_first_checkpoint(args: list[str], out: Path, rounds: int) -> None:
    """Run ``args`` in a subprocess and SIGKILL it once a checkpoint of round 1 or later is on disk."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "flight_parsl.scale", *args, "--out", str(out)], env=env)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            point = out / "checkpoint.pkl"
            try:
                done = pickle.loads(point.read_bytes()).next_round if point.exists() else 0
            except Exception:  # noqa: BLE001 - read while being replaced: try again
                done = 0
            if 1 <= done < rounds:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert read_summary(out)["status"] == "running"  # SIGKILL: nobody wrote an ending


def _same_peer_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for c in a:
        sa, sb = load_state(a[c][1]), load_state(b[c][1])
        assert sa["steps"] == sb["steps"]
        for role in ("private", "shared"):
            for k, v in sa[role].items():
                assert torch.equal(v, sb[role][k]), (c, role, k)
        for role in ("private_opt", "shared_opt"):
            for i, st in sa[role]["state"].items():
                for k, v in st.items():
                    assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb[role]["state"][i][k])), (c, role, k)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_sigkilled_coordinator_resumes_bit_identical(mode: str, tmp_path) -> None:
    common = ["--backend", "thread", "--model", "logreg", "-q", f"transfer.file_dir={tmp_path}", *MODES[mode]]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    _kill_after_first_checkpoint(common, killed, 5)
    stopped_at = load(killed).next_round
    assert main(["--resume", str(killed), "-q"]) == 0
    assert main([*common, "--out", str(whole)]) == 0
    a, b = load(whole), load(killed)
    assert a.next_round == b.next_round == 5
    assert np.array_equal(a.weights.buffer, b.weights.buffer)
    if mode == "sync":  # the momentum each client carries, and AIMD's epochs
        assert a.clients["aimd"] == b.clients["aimd"]
        assert {c: np.frombuffer(m[1], np.uint8).tobytes() for c, m in a.clients["momentum"].items()} == {
            c: m[1] for c, m in b.clients["momentum"].items()}
        assert len(a.clients["momentum"]) == 3
    if mode.endswith("-feedback"):  # every client's residual, from the version it last reported with
        saved = (a.clients, b.clients) if mode == "sync-feedback" else (a.loop, b.loop)
        assert saved[0]["residuals"].keys() == saved[1]["residuals"].keys() == {0, 1, 2, 3}
        for c, (_, blob) in saved[0]["residuals"].items():
            assert blob == saved[1]["residuals"][c][1] and np.count_nonzero(np.frombuffer(blob, np.float32))
    if mode == "sync-feedback":  # and the tree's two aggregators' own
        assert a.clients["aggregator_residuals"].keys() == {"agg-1-0", "agg-1-1"}
        assert a.clients["aggregator_residuals"] == b.clients["aggregator_residuals"]
    if mode == "fedbuff":
        assert a.loop["strategy"]["count"] == b.loop["strategy"]["count"] == 5 * 4 % 3
        assert np.array_equal(a.loop["strategy"]["acc"], b.loop["strategy"]["acc"])
    if mode.startswith("proxyfl"):  # every client's models, Adam states and DP steps; epsilon continues
        _same_peer_states(a.loop["states"], b.loop["states"])
        sa, sb = read_summary(whole), read_summary(killed)
        assert sa["epsilon_per_client"] == sb["epsilon_per_client"] and sb["final_epsilon"] > 0
        last = {(t["client"], t["private_test_acc"], t["epsilon"]) for t in read_csv(whole / "tasks.csv")
                if t["round"] == "5"}
        assert last == {(t["client"], t["private_test_acc"], t["epsilon"]) for t in read_csv(killed / "tasks.csv")
                        if t["round"] == "5"}
    rounds = read_csv(killed / "rounds.csv")
    assert [r["round"] for r in rounds] == ["1", "2", "3", "4", "5"]
    assert [r["test_acc"] for r in rounds] == [r["test_acc"] for r in read_csv(whole / "rounds.csv")]
    summary = read_summary(killed)
    assert summary["status"] == "completed" and summary["resumed_from_round"] == stopped_at + 1
    assert list(tmp_path.glob("flight_parsl-*")) == []  # the killed run's store was removed by the resume


def test_a_sigkilled_coordinator_on_htex_resumes_to_the_same_accuracy(tmp_path) -> None:
    """ProxyFL on real HTEX worker processes: the coordinator SIGKILLed after a round, the resume
    removes what it left (interchange, worker pool, workers, state directory) and ends with the
    accuracies of a run that was never stopped."""
    common = ["--model", "logreg", "-q", f"transfer.file_dir={tmp_path}", "transfer.kind=file", *MODES["proxyfl"]]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    _kill_after_first_checkpoint(["--backend", "parsl", *common], killed, 5)
    left = (killed / "leftovers.json").read_text()
    assert "interchange" in left and "flight_parsl-state-" in left
    assert main(["--resume", str(killed), "-q"]) == 0
    assert main(["--backend", "thread", *common, "--out", str(whole)]) == 0
    a, b = read_summary(whole), read_summary(killed)
    assert b["status"] == "completed" and b["final_test_acc"] == a["final_test_acc"]
    assert b["epsilon_per_client"] == a["epsilon_per_client"]
    assert not (killed / "leftovers.json").exists() and list(tmp_path.glob("flight_parsl-*")) == []


def test_async_work_still_out_at_the_checkpoint_is_reissued_on_resume(tmp_path) -> None:
    """On two slots a window closes with one update still out: the checkpoint keeps its client and
    model version, and the resumed run sends it again first, from that version."""
    common = ["--backend", "thread", "--model", "logreg", "-q", f"transfer.file_dir={tmp_path}", "--mode", "async",
              "--strategy", "fedasync", "--workers", "4", "--rounds", "6", "slots=2"]
    killed = tmp_path / "killed"
    _kill_after_first_checkpoint(common, killed, 6)
    point = load(killed)
    (client, version), = point.loop["out"]
    assert version in point.loop["models"] or version == point.loop["version"]
    assert main(["--resume", str(killed), "-q"]) == 0
    resumed = [t for t in read_csv(killed / "tasks.csv") if t["segment"] == "1"]
    first = min(resumed, key=lambda t: float(t["task_submitted"]))
    assert (first["client"], first["model_version"]) == (str(client), str(version))
    assert len([t for t in read_csv(killed / "rounds.csv")]) == 6
    assert read_summary(killed)["status"] == "completed"
