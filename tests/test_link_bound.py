"""artifacts/link_bound/run.py: the link bound of a round, the sites it builds, and a dry run that
checks every config and writes nothing (the study itself needs root and minutes: see its README)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "artifacts" / "link_bound" / "run.py"


def _study():
    spec = importlib.util.spec_from_file_location("link_bound_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bound_is_the_busiest_link_both_ways_over_its_rate() -> None:
    study = _study()
    assert study.rate_bit_s(study.parse_link("1gbit,5ms")) == 1e9
    assert study.rate_bit_s(study.parse_link("100mbit/s,20ms")) == 1e8
    assert study.rate_bit_s(study.parse_link("unshaped")) is None
    per_round = {"host-a": {"to_host": 50e6, "from_host": 50e6}, "host-b": {"to_host": 50e6, "from_host": 75e6}}
    assert study.link_bound(per_round, 1e9, "redis") == pytest.approx(8 * 125e6 / 1e9)
    assert math.isnan(study.link_bound(per_round, 1e9, "file"))  # the model crosses no link
    assert math.isnan(study.link_bound(per_round, None, "parsl"))  # unshaped: no rate
    with pytest.raises(ValueError, match="expected unshaped"):
        study.parse_link("1gbit,5ms,1ms")


def test_sites_carry_the_link_and_pack_one_task_a_site(tmp_path: Path) -> None:
    study = _study()
    files, topology = study.write_sites(tmp_path / "s", study.parse_link("100mbit,20ms"), 2)
    sites = [yaml.safe_load(Path(f).read_text()) for f in files]
    assert [s["virtual_host"] for s in sites] == ["host-a", "host-b"]
    assert all(s["link"] == {"rate": "100mbit", "delay": "20ms"} for s in sites)
    workers = [n for n in yaml.safe_load(Path(topology).read_text())["nodes"] if n["kind"] == "worker"]
    assert [n["site"] for n in workers] == ["site-a", "site-a", "site-b", "site-b"]
    plain, _ = study.write_sites(tmp_path / "u", study.parse_link("unshaped"), 2)
    assert all("link" not in yaml.safe_load(Path(f).read_text()) for f in plain)
    cfg = study.values((files, topology), "redis", 4, 2, "resnet18", tmp_path / "run")
    assert cfg["plan"] == {"clients_per_task": 2} and cfg["train"] == {"mode": "none"} and cfg["workers"] == 4
    assert study.values((files, topology), "redis-per-site", 4, 2, "resnet18", tmp_path / "run")["transfer"] == {
        "kind": "redis", "per_site": True}


def test_a_rounds_bytes_are_the_median_of_the_warm_rounds_link_bytes() -> None:
    study = _study()
    cells = ['{"host-a":{"from_host":10,"to_host":100},"host-b":{"from_host":1,"to_host":2}}',
             '{"host-a":{"from_host":30,"to_host":300},"host-b":{"from_host":1,"to_host":2}}',
             '{"host-a":{"from_host":20,"to_host":200},"host-b":{"from_host":1,"to_host":2}}', float("nan")]
    assert study.per_round_links(cells) == {"host-a": {"to_host": 200.0, "from_host": 20.0},
                                            "host-b": {"to_host": 2.0, "from_host": 1.0}}
    assert study.per_round_links([]) == {}


def test_dry_run_checks_every_cell_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = _study()
    out = tmp_path / "out"
    assert study.main(["--dry-run", "--out", str(out)]) == 0
    assert "dry run: 12 cells, 12 runs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:  # tc reads mbps as bytes a second: the site loader refuses it
        study.main(["--dry-run", "--links", "100mbps,20ms", "--out", str(out)])
    assert stop.value.code == 2 and "100mbps" in capsys.readouterr().err
    assert not out.exists()


def test_the_cpu_sampler_counts_each_kind_of_process_over_a_stretch_of_time() -> None:
    """--cpu: CPU seconds of this process (the coordinator, less the sampler's own) and of the
    processes below it, by kind (a delay line's from its command line), between two times."""
    import subprocess
    import sys
    import time

    _study()  # puts the script's folder on sys.path
    import cpu_time

    assert cpu_time.classify("/usr/bin/redis-server 10.231.87.1:51957", False) == "redis"
    assert cpu_time.classify("parsl: HTEX interchange", False) == "interchange"
    assert cpu_time.classify("python3 -m flight_parsl.execution.primed_pool process_worker_pool.py", False) == "workers"
    assert cpu_time.classify("python3 -c from multiprocessing.forkserver import main", True) == "workers"
    assert cpu_time.classify("python -I delayline.py [] --die-with-parent", False) == "delay_line"
    assert cpu_time.classify("ip netns exec x tc", False) == "other"
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"
    with cpu_time.CpuSampler(interval=0.05) as sampler:
        time.sleep(0.1)
        t0, c0 = time.time(), time.process_time()
        child = subprocess.Popen([sys.executable, "-c", burn, "delayline"])
        while time.process_time() - c0 < 0.3:
            pass
        child.wait(timeout=30)
        time.sleep(0.2)
        t1 = time.time()
    spent = sampler.between(t0, t1)
    assert 0.2 < spent["coordinator"] < 0.6 and 0.3 < spent["delay_line"] < 0.6, spent
    assert spent["machine"] >= spent["coordinator"] and "softirq" in spent
    assert sampler.between(t1 + 5, t1 + 6)["coordinator"] == 0  # after the last sample: nothing
