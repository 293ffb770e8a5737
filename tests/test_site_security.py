"""Site defaults for clusters: HTEX encryption off this host, Parsl monitoring, the Slurm site.

No DataFlowKernel is started here; tests/test_local_slurm.py runs these sites for real.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

from flight_parsl.core.errors import ConfigError
from flight_parsl.execution.site import (
    SITE_DIR,
    build_parsl_config,
    describe_site,
    load_site,
    monitoring_db_path,
)


def _local(**top: object) -> dict:
    site = load_site(None)
    site.pop("encrypted")
    site.update(top)
    return site


def _encrypted(site: dict, tmp_path: Path) -> bool:
    return build_parsl_config(site, 2, tmp_path).executors[0].encrypted


def test_encryption_defaults_on_unless_the_site_stays_on_this_host(tmp_path: Path) -> None:
    assert load_site(None)["encrypted"] is False  # local.yaml / the built-in site say so
    assert _encrypted(_local(), tmp_path) is False  # local + single_node: loopback only
    srun = _local(provider={"kind": "local", "launcher": {"kind": "srun"}})
    assert _encrypted(srun, tmp_path) is True
    two_nodes = _local(provider={"kind": "local", "nodes_per_block": 2})
    assert _encrypted(two_nodes, tmp_path) is True
    slurm = _local(provider={"kind": "slurm"})
    assert _encrypted(slurm, tmp_path) is True
    assert _encrypted({**slurm, "encrypted": False}, tmp_path) is False  # explicit wins
    assert "encrypted=True" in describe_site(slurm)


@pytest.mark.parametrize("name", ["expanse", "perlmutter", "polaris", "slurm-local"])
def test_multi_node_sites_shipped_encrypted(name: str) -> None:
    assert load_site(name)["encrypted"] is True
    for path in sorted((SITE_DIR.parents[1] / "jobs" / "sites").glob("*.yaml")):
        assert load_site(path)["encrypted"] is True, path


def test_slurm_local_site_builds_slurm_provider_with_srun(tmp_path: Path) -> None:
    site = load_site(SITE_DIR / "slurm-local.yaml")
    config = build_parsl_config(site, 3, tmp_path)
    htex = config.executors[0]
    provider = htex.provider
    assert isinstance(provider, SlurmProvider)
    assert isinstance(provider.launcher, SrunLauncher)
    assert provider.partition == "local"
    assert provider.exclusive is False
    assert provider.cores_per_node == 1 and provider.mem_per_node == 2
    assert htex.max_workers_per_node == 3  # null + one node per block: the run's slots
    assert htex.encrypted is True
    assert config.monitoring is None
    assert "provider=slurm(partition=local)" in describe_site(site, 3)


def test_monitoring_true_adds_hub_writing_run_dir(tmp_path: Path) -> None:
    config = build_parsl_config(_local(monitoring=True), 2, tmp_path / "run")
    hub = config.monitoring
    assert hub is not None
    assert hub.logging_endpoint == f"sqlite:///{tmp_path / 'run' / 'monitoring.db'}"
    assert monitoring_db_path(tmp_path / "run") == tmp_path / "run" / "monitoring.db"
    assert "monitoring=on" in describe_site(_local(monitoring=True))
    with pytest.raises(ConfigError, match="'monitoring' = 'yes'"):
        build_parsl_config(_local(monitoring="yes"), 2, tmp_path)


def test_config_hash_keys_a_site_file_by_content_not_path(tmp_path: Path) -> None:
    from dataclasses import replace

    from flight_parsl.config.experiment import ExperimentConfig, config_hash

    text = (SITE_DIR / "slurm-local.yaml").read_text()
    first, second, other = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"
    first.write_text(text)
    second.write_text("# a job's copy\n" + text)
    other.write_text(text.replace("cores_per_node: 1", "cores_per_node: 2"))
    base = ExperimentConfig()

    def hashed(path: Path) -> str:
        cfg = replace(base, parsl_config=str(path))
        return config_hash(cfg)

    assert hashed(first) == hashed(second)  # a resubmitted job's site copy: same experiment
    assert hashed(first) != hashed(other)


def test_sweep_keys_cells_by_the_slots_a_fixed_site_starts() -> None:
    from dataclasses import replace

    from flight_parsl.cli.sweep import _fixed_slots
    from flight_parsl.config.experiment import ExperimentConfig
    from flight_parsl.execution.site import site_fixed_slots

    job_site = SITE_DIR.parents[1] / "jobs" / "sites" / "slurm-local.yaml"
    assert site_fixed_slots(load_site(job_site)) == 8  # 8 per node x 1 node x 1 block
    assert site_fixed_slots(load_site("perlmutter")) == 256  # 128 x 2 nodes
    assert site_fixed_slots(load_site(None)) is None  # local: the run's slots
    base = ExperimentConfig()
    assert _fixed_slots(replace(base, parsl_config=str(job_site))) == 8
    assert _fixed_slots(replace(base, parsl_config=str(job_site), backend="thread")) is None
    assert _fixed_slots(base) is None
