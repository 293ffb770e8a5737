"""Site YAML, job specs and topology YAML go through the one schema idiom of
flight_parsl.config.schema: pydantic models, one ConfigError format, exit status 2.

tests/data/schema_before.json pins what the loaders returned before they moved to the
pydantic schemas; valid input must still load to exactly that (values, types and keys),
and input refused then must still be refused, now in the one format.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from schema_cases import GLOBUS_VARIANTS, SITE_VARIANTS, TOPOLOGY_VARIANTS

from flight_parsl.config.schema import json_schema
from flight_parsl.core.errors import ConfigError, FlightParslError
from flight_parsl.execution import globus
from flight_parsl.execution.site import SiteSchema, load_site, normalize_site
from flight_parsl.execution.sites import load_any_site, load_sites
from flight_parsl.topology.tree import Topology, TopologySchema, load_topology

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jobs.render import SpecError, SpecSchema, load_spec, validate_spec  # noqa: E402

BEFORE = json.loads((ROOT / "tests" / "data" / "schema_before.json").read_text())

#: ``SOURCE: key 'KEY' = VALUE: PROBLEM``, ``SOURCE: key 'KEY' is missing (required)`` or
#: ``SOURCE: unknown key 'KEY'; allowed keys[ in SECTION]: A, B``.
KEY_ERROR = re.compile(
    r"^(?P<source>.+?): (key '(?P<key>[^']+)' (= .+: .+|is missing \(required\))"
    r"|unknown key '(?P<unknown>[^']+)'; allowed keys( in [\w.\[\]]+)?: \w+(, \w+)*)$",
    re.DOTALL,
)


def typed(value: Any) -> Any:
    """``value`` with every leaf tagged by its type (1 and 1.0 differ; key order ignored)."""
    if isinstance(value, dict):
        return ("dict", sorted((k, typed(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("list", [typed(v) for v in value])
    return (type(value).__name__, value)


def assert_key_error(exc: BaseException, source: str) -> re.Match[str]:
    assert isinstance(exc, ConfigError) and isinstance(exc, FlightParslError)
    match = KEY_ERROR.match(str(exc))
    assert match, f"not in the one format: {exc}"
    assert match["source"] == source, str(exc)
    return match


# ------------------------------------------------------------ valid input loads as before


@pytest.mark.parametrize("path", sorted(BEFORE["files"]))
def test_every_site_file_loads_to_the_same_dict(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    if path == "<none>":
        site = load_site(None)
    elif "/" in path:
        site = load_any_site(path)
    else:
        site = load_site(path)  # a bare name
    assert typed(site) == typed(BEFORE["files"][path])
    if not globus.is_globus(site):
        assert normalize_site(site) == site  # normalising is idempotent


def test_the_pinned_files_are_all_the_site_files() -> None:
    on_disk = {str(p.relative_to(ROOT)) for pattern in (
        "configs/parsl/*.yaml", "configs/parsl/netns/*.yaml", "jobs/sites/*.yaml",
        "artifacts/*/site.yaml", "artifacts/*/sites/*.yaml") for p in ROOT.glob(pattern)}
    assert on_disk and on_disk <= set(BEFORE["files"])


@pytest.mark.parametrize("index", range(len(SITE_VARIANTS)))
def test_site_mappings_load_as_before_or_are_refused_in_the_one_format(index: int) -> None:
    data, expected = SITE_VARIANTS[index], BEFORE["variants"][index]
    if "error" not in expected:
        site = normalize_site(data)
        assert typed(site) == typed(expected)
        assert normalize_site(site) == site
        return
    with pytest.raises(ConfigError) as info:
        normalize_site(data, "site file 'x.yaml'")
    if isinstance(data, dict):
        assert_key_error(info.value, "site file 'x.yaml'")


@pytest.mark.parametrize("index", range(len(GLOBUS_VARIANTS)))
def test_globus_sites_load_as_before_or_are_refused_in_the_one_format(index: int) -> None:
    data, expected = GLOBUS_VARIANTS[index], BEFORE["globus"][index]
    assert globus.is_globus(data)
    if "error" not in expected:
        assert typed(globus.normalize(data)) == typed(expected)
        return
    with pytest.raises(ConfigError) as info:
        globus.normalize(data, "site file 'gc.yaml'")
    assert_key_error(info.value, "site file 'gc.yaml'")


@pytest.mark.parametrize("path", sorted(BEFORE["topology_files"]))
def test_every_topology_file_loads_as_before(path: str) -> None:
    assert load_topology(ROOT / path).to_dict() == BEFORE["topology_files"][path]


@pytest.mark.parametrize("index", range(len(TOPOLOGY_VARIANTS)))
def test_topologies_load_as_before_or_are_refused(index: int) -> None:
    data, expected = TOPOLOGY_VARIANTS[index], BEFORE["topology_variants"][index]
    if "error" not in expected:
        assert Topology.from_dict(data).to_dict() == expected
        return
    with pytest.raises(ConfigError) as info:
        Topology.from_dict(data, source="t.yaml")
    assert str(info.value).startswith("topology file 't.yaml': ")


@pytest.mark.parametrize("path", sorted(BEFORE["specs"]))
def test_every_job_spec_loads_as_before(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    spec = load_spec(path, check_models=False)
    assert typed(dataclasses.asdict(spec)) == typed(BEFORE["specs"][path])


# ----------------------------------------------------- a bad key: one error, one format


def _write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _local_site(**top: Any) -> dict[str, Any]:
    return {"label": "t", "provider": {"kind": "local", "init_blocks": 1}, **top}


@pytest.mark.parametrize(("data", "key", "text"), [
    (_local_site(heartbeat_period=0), "heartbeat_period", "= 0: must be >= 1"),
    (_local_site(encrypted="yes"), "encrypted", "= 'yes': must be true or false"),
    (_local_site(provider={"kind": "slurm", "walltime": 3600}), "provider.walltime", "quote it in YAML"),
    (_local_site(provider={"kind": "local", "partition": "gpu"}), "provider.partition",
     "is not used by provider 'local' (LocalProvider); remove it or set it to null"),
    (_local_site(provider={"launcher": {"kind": "torchrun"}}), "provider.launcher.kind",
     "= 'torchrun': must be one of: single_node, simple, srun"),
    (_local_site(heartbeat_perod=3), None, "unknown key 'heartbeat_perod'; allowed keys: label, "),
    (_local_site(provider={"kind": "local", "init_blockz": 2}), None,
     "unknown key 'provider.init_blockz'; allowed keys in provider: kind, init_blocks"),
])
def test_a_bad_site_file_is_one_config_error(tmp_path: Path, data: dict[str, Any], key: str | None,
                                             text: str) -> None:
    path = _write(tmp_path / "site.yaml", data)
    with pytest.raises(ConfigError) as info:
        load_site(path)
    match = assert_key_error(info.value, f"site file {str(path)!r}")
    assert match["key"] == key if key else match["unknown"]
    assert text in str(info.value)
    with pytest.raises(ConfigError) as again:  # the same through the several-sites loader
        load_sites([str(path)])
    assert str(again.value) == str(info.value)


def test_a_bad_job_spec_is_one_config_error(tmp_path: Path) -> None:
    good = yaml.safe_load((ROOT / "jobs" / "specs" / "expanse_scaling.yaml").read_text())
    path = _write(tmp_path / "spec.yaml", {**good, "trials": 0})
    with pytest.raises(SpecError) as info:
        load_spec(path, check_models=False)
    match = assert_key_error(info.value, f"job spec {str(path)!r}")
    assert match["key"] == "trials" and str(info.value).endswith("= 0: must be >= 1")
    unknown = _write(tmp_path / "typo.yaml", {**good, "trails": 3})
    with pytest.raises(ConfigError) as info:
        load_spec(unknown, check_models=False)
    assert assert_key_error(info.value, f"job spec {str(unknown)!r}")["unknown"] == "trails"
    with pytest.raises(ConfigError) as info:
        validate_spec({**good, "workers": [2, 0]}, "s.yaml", check_models=False)
    assert assert_key_error(info.value, "job spec 's.yaml'")["key"] == "workers[1]"


def test_a_job_spec_reuses_the_site_schema(tmp_path: Path) -> None:
    """The spec's site file is checked by the harness's site schema (no fork of it in jobs/)."""
    from jobs.render import render_jobs

    good = yaml.safe_load((ROOT / "jobs" / "specs" / "expanse_scaling.yaml").read_text())
    site = yaml.safe_load((ROOT / "configs" / "parsl" / "expanse.yaml").read_text())
    site["provider"]["launcher"]["bind_cmd"] = "--cpu-bind"  # srun takes no bind_cmd
    site_path = _write(tmp_path / "site.yaml", site)
    spec = validate_spec({**good, "parsl_config": str(site_path)}, "s.yaml", check_models=False)
    with pytest.raises(ConfigError) as info:
        render_jobs(spec, tmp_path / "out", cwd=tmp_path)
    match = assert_key_error(info.value, f"site file {str(site_path)!r}")
    assert match["key"] == "provider.launcher.bind_cmd" and "launcher 'srun'" in str(info.value)


def test_a_bad_topology_file_is_one_config_error(tmp_path: Path) -> None:
    nodes = [{"name": "c", "kind": "coordinator", "children": ["w0"]}, {"name": "w0", "kind": "relay"}]
    path = _write(tmp_path / "topo.yaml", {"nodes": nodes})
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    match = assert_key_error(info.value, f"topology file {str(path)!r}")
    assert match["key"] == "nodes[1].kind" and "= 'relay': must be one of" in str(info.value)
    nodes[1] = {"name": "w0", "kind": "worker", "weight": 2}
    path = _write(tmp_path / "topo.yaml", {"nodes": nodes})
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert assert_key_error(info.value, f"topology file {str(path)!r}")["unknown"] == "nodes[1].weight"


# -------------------------------------------------------------- sites.files as a list


def test_load_sites_takes_a_list_and_still_a_comma_string() -> None:
    a, b = ROOT / "configs" / "parsl" / "netns" / "site-a.yaml", ROOT / "configs" / "parsl" / "netns" / "site-b.yaml"
    as_list = load_sites([str(a), str(b)])
    assert [s["label"] for s in as_list] == ["site-a", "site-b"]
    assert load_sites(f"{a},{b}") == as_list
    assert load_sites((a, b)) == as_list
    with pytest.raises(ConfigError, match=r"^config: key 'sites.files' = \[\]: no site file given"):
        load_sites([])
    with pytest.raises(ConfigError, match=r"^config: key 'sites.files' = .*share the label 'site-a'"):
        load_sites([str(a), str(a)])


def test_every_schema_has_a_json_schema() -> None:
    for schema, keys in [(SiteSchema, {"label", "provider", "virtual_host"}),
                         (globus.GlobusSiteSchema, {"label", "slots", "provider"}),
                         (TopologySchema, {"nodes", "description"}),
                         (SpecSchema, {"scheduler", "workers", "parsl_config"})]:
        assert keys <= set(json_schema(schema)["properties"])


# ------------------------------------------------------------- the command lines: exit 2


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess[str], source: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {source}: "), lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_submit_exits_2_with_one_line_for_a_bad_spec(tmp_path: Path) -> None:
    good = yaml.safe_load((ROOT / "jobs" / "specs" / "expanse_scaling.yaml").read_text())
    spec = _write(tmp_path / "bad.yaml", {**good, "walltime": 7200})
    proc = _run([str(ROOT / "jobs" / "submit.py"), str(spec), "--dry-run"], tmp_path)
    line = _one_error_line(proc, f"job spec {str(spec)!r}")
    assert "key 'walltime' = 7200: must be a string; quote it in YAML" in line
    assert proc.stdout == ""


def test_scale_exits_2_with_one_line_for_a_bad_site(tmp_path: Path) -> None:
    site = _write(tmp_path / "bad-site.yaml", _local_site(max_workers_per_node=0))
    proc = _run(["-m", "flight_parsl.scale", "--parsl-config", str(site)], tmp_path)
    line = _one_error_line(proc, f"site file {str(site)!r}")
    assert line.endswith("key 'max_workers_per_node' = 0: must be >= 1")
    assert not (tmp_path / "runs").exists()
