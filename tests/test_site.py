"""Tests for flight_parsl.execution.site: site YAML -> Parsl Config (no DataFlowKernel is started)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import MpiExecLauncher, SingleNodeLauncher, SrunLauncher
from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

from flight_parsl.execution import site as site_mod
from flight_parsl.core.errors import ConfigError
from flight_parsl.execution.site import (
    DEFAULT_LOCAL_SITE,
    LAUNCHERS,
    PROVIDERS,
    SITE_DIR,
    build_parsl_config,
    describe_site,
    load_site,
    site_start_timeout,
)

FAKE_IP = "10.11.12.13"


@pytest.fixture
def fake_interfaces(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Resolve any interface name to FAKE_IP and record the names asked for."""
    asked: list[str] = []

    def fake(ifname: str) -> str:
        asked.append(ifname)
        return FAKE_IP

    monkeypatch.setattr(site_mod, "address_by_interface", fake)
    return asked


def _htex(config: Config) -> HighThroughputExecutor:
    assert isinstance(config, Config)
    assert len(config.executors) == 1
    executor = config.executors[0]
    assert isinstance(executor, HighThroughputExecutor)
    return executor


def _site(**top: Any) -> dict[str, Any]:
    """A local site with top-level overrides (deep-copied)."""
    site = load_site(None)
    site.update(top)
    return site


# ------------------------------------------------------------------ local / default


def test_local_yaml_builds_htex_with_workers(tmp_path: Path) -> None:
    site = load_site(SITE_DIR / "local.yaml")
    config = build_parsl_config(site, workers=32, run_dir=tmp_path / "run")
    htex = _htex(config)
    assert htex.label == "htex"
    assert htex.max_workers_per_node == 32
    assert htex.address == "127.0.0.1"
    assert htex.encrypted is False
    assert isinstance(htex.provider, LocalProvider)
    assert isinstance(htex.provider.launcher, SingleNodeLauncher)
    assert htex.provider.init_blocks == 1 and htex.provider.max_blocks == 1
    assert htex.cores_per_worker == pytest.approx(0.0001)
    assert Path(config.run_dir) == tmp_path / "run" / "parsl"
    assert Path(config.run_dir).is_relative_to(tmp_path)
    assert config.strategy == "none"
    assert config.usage_tracking == 0


def test_local_config_disables_app_cache(tmp_path: Path) -> None:
    config = build_parsl_config(load_site(None), 2, tmp_path)
    params = inspect.signature(Config.__init__).parameters
    if "app_cache" in params:
        assert config.app_cache is False
    else:
        assert config.memoizer is not None
        assert config.memoizer.memoize is False


def test_workers_value_changes_worker_count(tmp_path: Path) -> None:
    site = load_site("local")
    assert _htex(build_parsl_config(site, 3, tmp_path)).max_workers_per_node == 3
    assert _htex(build_parsl_config(site, 7, tmp_path)).max_workers_per_node == 7


def test_site_max_workers_wins_over_workers(tmp_path: Path) -> None:
    site = _site(max_workers_per_node=5)
    assert _htex(build_parsl_config(site, 32, tmp_path)).max_workers_per_node == 5


def test_default_site_equals_local_yaml() -> None:
    raw = yaml.safe_load((SITE_DIR / "local.yaml").read_text())
    assert raw == DEFAULT_LOCAL_SITE
    assert load_site(None) == load_site(SITE_DIR / "local.yaml") == load_site("local")


def test_load_site_returns_copies() -> None:
    first = load_site(None)
    first["provider"]["launcher"]["kind"] = "srun"
    first["label"] = "changed"
    assert load_site(None)["provider"]["launcher"]["kind"] == "single_node"
    assert DEFAULT_LOCAL_SITE["label"] == "htex"


def test_build_twice_gives_distinct_configs(tmp_path: Path) -> None:
    site = load_site(None)
    a = build_parsl_config(site, 4, tmp_path)
    b = build_parsl_config(site, 4, tmp_path)
    assert a is not b
    assert a.executors[0] is not b.executors[0]
    assert a.executors[0].provider is not b.executors[0].provider
    assert a.executors[0].provider.launcher is not b.executors[0].provider.launcher


def test_start_timeout_and_describe() -> None:
    site = load_site(None)
    assert site_start_timeout(site) == 300.0
    assert site_start_timeout(_site(start_timeout=12)) == 12.0
    line = describe_site(site, workers=9)
    assert "\n" not in line
    for part in ("provider=local", "launcher=single_node", "9", "encrypted=False"):
        assert part in line


# ----------------------------------------------------------------- cluster sites


def test_polaris_builds_pbspro_mpiexec(tmp_path: Path, fake_interfaces: list[str]) -> None:
    site = load_site("polaris")
    htex = _htex(build_parsl_config(site, 8, tmp_path))
    provider = htex.provider
    assert isinstance(provider, PBSProProvider)
    assert provider.account == "YOUR_ACCOUNT"
    assert provider.queue == "debug"
    assert provider.cpus_per_node == 64
    assert isinstance(provider.launcher, MpiExecLauncher)
    assert provider.launcher.bind_cmd == "--cpu-bind"
    assert provider.launcher.overrides == "--depth=64 --ppn 1"
    assert htex.max_workers_per_node == 4
    assert htex.available_accelerators == ["0", "1", "2", "3"]
    assert htex.address == FAKE_IP
    assert fake_interfaces == ["bond0"]


def test_expanse_builds_local_srun(tmp_path: Path, fake_interfaces: list[str]) -> None:
    site = load_site("expanse")
    htex = _htex(build_parsl_config(site, 2, tmp_path))
    assert isinstance(htex.provider, LocalProvider)
    assert isinstance(htex.provider.launcher, SrunLauncher)
    assert "--exclude=" in htex.provider.launcher.overrides
    assert htex.max_workers_per_node == 128  # the site value, not --workers
    assert fake_interfaces == ["ib0"]


def test_perlmutter_builds_slurm(tmp_path: Path, fake_interfaces: list[str]) -> None:
    site = load_site("perlmutter")
    htex = _htex(build_parsl_config(site, 2, tmp_path))
    provider = htex.provider
    assert isinstance(provider, SlurmProvider)
    assert provider.qos == "regular"
    assert provider.constraint == "cpu"
    assert provider.partition is None
    assert provider.account == "YOUR_ACCOUNT"
    assert isinstance(provider.launcher, SrunLauncher)
    assert fake_interfaces == ["hsn0"]


def test_missing_interface_is_config_error(tmp_path: Path) -> None:
    site = _site(address=None, interface="no_such_if0")
    with pytest.raises(ConfigError, match="no_such_if0"):
        build_parsl_config(site, 1, tmp_path)


def test_schema_matches_parsl_signatures() -> None:
    for kind, (cls, keys) in PROVIDERS.items():
        params = inspect.signature(cls.__init__).parameters
        for key in keys:
            if key not in ("kind", "pending_timeout_s", "status_polling_s"):  # the harness's own
                assert key in params, f"{kind}: {cls.__name__} takes no {key!r}"
    for kind, (cls, keys) in LAUNCHERS.items():
        params = inspect.signature(cls.__init__).parameters
        for key in keys:
            if key != "kind":
                assert key in params, f"{kind}: {cls.__name__} takes no {key!r}"


def test_status_polling_s_sets_how_often_parsl_asks_the_batch_system(tmp_path: Path) -> None:
    from flight_parsl.execution.site import build_parsl_config

    site = load_site("slurm-elastic")
    site["address"] = "127.0.0.1"  # no cluster needed to build it
    provider = build_parsl_config(site, 4, tmp_path).executors[0].provider
    assert isinstance(provider, SlurmProvider) and provider.status_polling_interval == 5
    site["provider"]["status_polling_s"] = None
    assert build_parsl_config(site, 4, tmp_path).executors[0].provider.status_polling_interval == 60  # Parsl's


# ------------------------------------------------------------------------ errors


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = _write(tmp_path, _site(max_wrkers=3))
    with pytest.raises(ConfigError, match="max_wrkers") as info:
        load_site(path)
    assert "allowed keys" in str(info.value) and "max_workers_per_node" in str(info.value)


def test_unknown_provider_key(tmp_path: Path) -> None:
    site = _site()
    site["provider"]["init_blockz"] = 2
    with pytest.raises(ConfigError, match="init_blockz") as info:
        load_site(_write(tmp_path, site))
    assert "provider" in str(info.value) and "init_blocks" in str(info.value)


def test_pbspro_key_under_slurm(fake_interfaces: list[str]) -> None:
    site = load_site("perlmutter")
    site["provider"]["select_options"] = "ngpus=4"
    with pytest.raises(ConfigError, match="select_options") as info:
        build_parsl_config(site, 1, "/tmp/unused")
    assert "slurm" in str(info.value)


def test_slurm_key_under_pbspro() -> None:
    site = load_site("polaris")
    site["provider"]["partition"] = "gpu"
    with pytest.raises(ConfigError, match="partition.*pbspro"):
        describe_site(site)


def test_batch_key_under_local_rejected_but_null_allowed() -> None:
    site = _site()
    site["provider"]["walltime"] = None
    assert site_mod._normalize(site)["provider"] == load_site(None)["provider"]
    site["provider"]["walltime"] = "01:00:00"
    with pytest.raises(ConfigError, match="walltime.*local"):
        site_start_timeout(site)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("encrypted", "no", "must be true or false"),
        ("max_workers_per_node", 2.5, "must be an integer"),
        ("cores_per_worker", "tiny", "must be a number"),
        ("heartbeat_period", True, "must be an integer"),
        ("label", 7, "must be a string"),
    ],
)
def test_wrong_top_level_type(tmp_path: Path, key: str, value: Any, expected: str) -> None:
    path = _write(tmp_path, _site(**{key: value}))
    with pytest.raises(ConfigError) as info:
        load_site(path)
    assert str(info.value) == f"site file {str(path)!r}: key {key!r} = {value!r}: {expected}"


def test_unquoted_walltime_is_type_error(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    text = (SITE_DIR / "perlmutter.yaml").read_text().replace('"00:30:00"', "1:00:00")
    path.write_text(text)
    with pytest.raises(ConfigError, match="walltime.*3600.*quote"):
        load_site(path)


def test_unknown_launcher_kind(tmp_path: Path) -> None:
    site = _site()
    site["provider"]["launcher"]["kind"] = "torchrun"
    with pytest.raises(ConfigError, match="key 'provider.launcher.kind' = 'torchrun': must be one of") as info:
        load_site(_write(tmp_path, site))
    assert "srun" in str(info.value)


def test_unknown_provider_kind(tmp_path: Path) -> None:
    site = _site()
    site["provider"]["kind"] = "lsf"
    with pytest.raises(ConfigError, match="key 'provider.kind' = 'lsf': must be one of: local, pbspro, slurm"):
        load_site(_write(tmp_path, site))


def test_launcher_key_for_other_launcher(tmp_path: Path) -> None:
    site = _site()
    site["provider"]["launcher"]["bind_cmd"] = "--cpu-bind"
    with pytest.raises(ConfigError, match="bind_cmd.*single_node"):
        load_site(_write(tmp_path, site))


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "site.yaml"
    with pytest.raises(ConfigError, match=str(missing)):
        load_site(missing)
    with pytest.raises(ConfigError, match="no_such_site"):
        load_site("no_such_site")


def test_bad_yaml_and_empty_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("label: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_site(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_site(empty)


def test_address_and_interface_both_set() -> None:
    with pytest.raises(ConfigError, match="address.*interface"):
        describe_site(_site(interface="eth0"))


def test_bad_workers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="workers"):
        build_parsl_config(load_site(None), 0, tmp_path)
