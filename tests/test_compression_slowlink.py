"""artifacts/compression/run.py --link: the slow-link study builds two sites whose links are
shaped as asked, records the bytes the kernel counted on them, and writes only into --out."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flight_parsl.execution import links as links_mod
from flight_parsl.execution.netns import netns_available

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "artifacts" / "compression" / "run.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

NO_NETNS = netns_available() or links_mod.tc_available()


def _study():
    spec = importlib.util.spec_from_file_location("compression_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _committed() -> dict[str, str]:
    """Hash of every file committed beside run.py (README, tables, figures, CSVs)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(SCRIPT.parent.iterdir()) if p.is_file()}


def _run(*argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=ENV)


def test_the_sites_carry_the_link_and_split_the_clients(tmp_path: Path) -> None:
    study = _study()
    files, topology = study.write_sites(tmp_path, study.parse_link("100mbit,20ms"), 10)
    sites = [yaml.safe_load(Path(f).read_text()) for f in files]
    assert [s["label"] for s in sites] == ["site-a", "site-b"]
    assert [s["virtual_host"] for s in sites] == ["host-a", "host-b"]
    assert all(s["link"] == {"rate": "100mbit", "delay": "20ms"} for s in sites)
    nodes = yaml.safe_load(Path(topology).read_text())["nodes"]
    workers = [n for n in nodes if n["kind"] == "worker"]
    assert [n["site"] for n in workers] == ["site-a"] * 5 + ["site-b"] * 5
    with pytest.raises(ValueError, match="expected unshaped, RATE or RATE,DELAY"):
        study.parse_link("100mbit,20ms,1ms")


def test_dry_run_checks_every_run_and_writes_nothing(tmp_path: Path) -> None:
    before = _committed()
    out = tmp_path / "out"
    done = _run("--link", "100mbit,20ms", "--out", str(out), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "each site link {'rate': '100mbit', 'delay': '20ms'}" in done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith("dry run: 16 runs (8 arms x 2 seeds, 20 rounds each)")
    assert not out.exists() and _committed() == before
    bad = _run("--link", "100mbps,20ms", "--out", str(out), "--dry-run")
    assert bad.returncode == 2 and "key 'link.rate' = '100mbps': unit 'mbps' is ambiguous" in bad.stderr, bad.stderr
    assert "/tmp" not in bad.stderr.splitlines()[-1]  # the temporary site file's directory is not shown


def test_time_to_target_is_the_end_of_the_first_round_at_the_target() -> None:
    study = _study()
    rounds = pd.DataFrame({"round": [1, 2, 3, 4], "start": [100.0, 102.0, 104.0, 106.0],
                           "end": [101.5, 103.5, 105.5, 107.5], "test_acc": [0.5, 0.91, 0.89, 0.95]})
    assert study.time_to_target(rounds, 0.9) == (3.5, 2)
    assert study.time_to_target(rounds, 0.95) == (7.5, 4)
    seconds, at = study.time_to_target(rounds, 0.99)
    assert seconds != seconds and at == 0


@pytest.mark.skipif(NO_NETNS is not None, reason=f"no network namespaces or tc here: {NO_NETNS}")
def test_a_two_round_slow_link_run_records_the_link_bytes(tmp_path: Path) -> None:
    """One arm, 2 rounds, 2 clients (one a site) over 100 Mbit/s, 20 ms links: both links are
    shaped and checked, the kernel counted at least every model sent down on them and far less
    up (top-k 1%), and nothing beside run.py changed."""
    before = _committed()
    out = tmp_path / "out"
    done = _run("--link", "100mbit,20ms", "--arms", "topk:0.01+ef", "--seeds", "1", "--rounds", "2",
                "--model", "mlp", "--clients", "2", "--target", "0.2", "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    with open(out / "slowlink.csv") as f:
        (row,) = list(csv.DictReader(f))
    summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
    assert summary["status"] == "completed"
    for label in ("site-a", "site-b"):
        assert summary["sites"][label]["link"]["rate_bit_s"] == 100 * 10**6
        assert summary["sites"][label]["link"]["delay_ms"] == 20.0
    assert set(summary["links"]) == {"host-a", "host-b"}
    model = summary["model_bytes"]
    down, up = int(row["link_bytes_down"]), int(row["link_bytes_up"])
    assert down == sum(v["to_host"] for v in summary["site_links"].values())
    assert down >= 2 * 2 * model  # 2 rounds x 2 clients, a whole model down each
    assert 0 < up < 0.25 * down  # 1% of the update up (values and indices) plus Parsl's messages
    assert float(row["compression_ratio"]) > 10
    rounds = pd.read_csv(out / "slowlink_rounds.csv")
    assert list(rounds["round"]) == [1, 2] and (rounds["wall_s"] > 0).all()
    assert (out / "slowlink_table.md").read_text().count("| topk:0.01+ef |") == 1
    assert (out / "slowlink.png").stat().st_size > 10_000
    assert _committed() == before  # the committed README, tables and figures are not rewritten
