"""Parsl site files: load, validate, and turn into a fresh ``parsl.config.Config``.

This module owns the site YAML schema (``configs/parsl/*.yaml``), its strict
validation, the built-in local site, and the translation of a site into a Parsl
``Config`` holding exactly one ``HighThroughputExecutor``. A loaded Parsl Config
cannot be reused, so :func:`build_parsl_config` builds new objects on every call.

A site is normalised on load: every top-level key is present (defaults filled),
and the ``provider`` and ``provider.launcher`` sections hold exactly the keys
their ``kind`` uses. A key that belongs to another provider or launcher is an
error when set (not null and not ``""``) and is dropped when unset.

``encrypted: null`` (the default) turns HTEX's CurveZMQ encryption on for every site that
reaches beyond this host (any provider but ``local``, a launcher other than ``single_node`` /
``simple``, or more than one node per block) and off for a local site. ``monitoring: true``
adds Parsl's MonitoringHub, which writes ``<run_dir>/monitoring.db`` (SQLite).
"""

from __future__ import annotations

import copy
import inspect
import math
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from parsl.addresses import address_by_interface
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import (
    AprunLauncher,
    GnuParallelLauncher,
    MpiExecLauncher,
    MpiRunLauncher,
    SimpleLauncher,
    SingleNodeLauncher,
    SrunLauncher,
)
from parsl.launchers.base import Launcher
from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider
from parsl.providers.base import ExecutionProvider

from flight_parsl.core.errors import ConfigError, unknown_name

__all__ = [
    "DEFAULT_LOCAL_SITE",
    "LAUNCHERS",
    "PROVIDERS",
    "SITE_DIR",
    "build_parsl_config",
    "monitoring_db_path",
    "site_fixed_slots",
    "describe_site",
    "load_site",
    "site_start_timeout",
]

#: Repository root (``<repo>/flight_parsl/execution/site.py`` -> ``<repo>``).
REPO_ROOT: Path = Path(__file__).resolve().parents[2]
#: Where bare site names such as ``"polaris"`` are looked up.
SITE_DIR: Path = REPO_ROOT / "configs" / "parsl"

#: The built-in local site; identical to ``configs/parsl/local.yaml``.
DEFAULT_LOCAL_SITE: dict[str, Any] = {
    "label": "htex",
    "max_workers_per_node": None,
    "cores_per_worker": 0.0001,
    "mem_per_worker": None,
    "address": "127.0.0.1",
    "interface": None,
    "encrypted": False,
    "heartbeat_threshold": 30,
    "heartbeat_period": 2,
    "prefetch_capacity": 0,
    "cpu_affinity": "none",
    "available_accelerators": None,
    "worker_logdir_root": None,
    "strategy": "none",
    "max_idletime": None,
    "start_timeout": 300.0,
    "provider": {
        "kind": "local",
        "init_blocks": 1,
        "min_blocks": 0,
        "max_blocks": 1,
        "nodes_per_block": 1,
        "worker_init": "",
        "launcher": {"kind": "single_node"},
    },
}


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class _Key:
    """One schema key: accepted types, nullability, default and an extra check."""

    types: tuple[type, ...]
    type_name: str
    default: Any = None
    nullable: bool = False
    check: Callable[[Any], str | None] | None = None


def _at_least(low: float) -> Callable[[Any], str | None]:
    """Return a check that a number is >= ``low``."""
    return lambda v: None if v >= low else f"must be >= {low:g}"


def _positive(v: Any) -> str | None:
    """Check that a number is > 0 (and finite)."""
    return None if v > 0 and math.isfinite(v) else "must be > 0"


def _check_affinity(v: str) -> str | None:
    """Check an HTEX ``cpu_affinity`` value."""
    if v in ("none", "block", "block-reverse", "alternating") or v.startswith("list:"):
        return None
    return "must be none, block, block-reverse, alternating or list:<ranks>"


def _check_strategy(v: str | None) -> str | None:
    """Check a Parsl scaling strategy name."""
    return None if v in (None, "none", "simple", "htex_auto_scale") else (
        "must be none, simple or htex_auto_scale"
    )


def _check_accelerators(v: Any) -> str | None:
    """Check ``available_accelerators``: a count or a list of device ids."""
    if isinstance(v, int):
        return None if v >= 0 else "must be >= 0"
    if all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
        return None
    return "list items must be device ids (str or int)"


_INT = ((int,), "int")
_FLOAT = ((int, float), "float")
_STR = ((str,), "str")
_BOOL = ((bool,), "bool")

_TOP_KEYS: dict[str, _Key] = {
    "label": _Key(*_STR, default="htex", check=lambda v: None if v else "must not be empty"),
    "max_workers_per_node": _Key(*_INT, nullable=True, check=_at_least(1)),
    "cores_per_worker": _Key(*_FLOAT, default=0.0001, check=_positive),
    "mem_per_worker": _Key(*_FLOAT, nullable=True, check=_positive),
    "address": _Key(*_STR, nullable=True),
    "interface": _Key(*_STR, nullable=True),
    "encrypted": _Key(*_BOOL, nullable=True),
    "monitoring": _Key(*_BOOL, default=False),
    "heartbeat_threshold": _Key(*_INT, default=120, check=_at_least(1)),
    "heartbeat_period": _Key(*_INT, default=30, check=_at_least(1)),
    "prefetch_capacity": _Key(*_INT, default=0, check=_at_least(0)),
    "cpu_affinity": _Key(*_STR, default="none", check=_check_affinity),
    "available_accelerators": _Key(
        (int, list), "int or list", nullable=True, check=_check_accelerators
    ),
    "worker_logdir_root": _Key(*_STR, nullable=True),
    "strategy": _Key(*_STR, default="none", nullable=True, check=_check_strategy),
    "max_idletime": _Key(*_FLOAT, nullable=True, check=_at_least(0)),
    "start_timeout": _Key(*_FLOAT, default=300.0, check=_positive),
    "provider": _Key((dict,), "mapping", nullable=True),
    # Run this site's worker pools on a virtual host (a network namespace of this name that a
    # multi-site run creates; see flight_parsl.execution.sites). Null: on the provider's hosts.
    "virtual_host": _Key(*_STR, nullable=True),
}

_WALLTIME_HINT = 'str (quote it in YAML, e.g. "00:30:00")'

_PROVIDER_KEYS: dict[str, _Key] = {
    "kind": _Key(*_STR, default="local"),
    "init_blocks": _Key(*_INT, default=1, check=_at_least(0)),
    "min_blocks": _Key(*_INT, default=0, check=_at_least(0)),
    "max_blocks": _Key(*_INT, default=1, check=_at_least(1)),
    "nodes_per_block": _Key(*_INT, default=1, check=_at_least(1)),
    "worker_init": _Key(*_STR, default=""),
    "walltime": _Key((str,), _WALLTIME_HINT, default="00:30:00"),
    "account": _Key(*_STR, nullable=True),
    "queue": _Key(*_STR, nullable=True),
    "partition": _Key(*_STR, nullable=True),
    "qos": _Key(*_STR, nullable=True),
    "constraint": _Key(*_STR, nullable=True),
    "exclusive": _Key(*_BOOL, default=True),
    "scheduler_options": _Key(*_STR, default=""),
    "select_options": _Key(*_STR, default=""),
    "cpus_per_node": _Key(*_INT, nullable=True, check=_at_least(1)),
    "cores_per_node": _Key(*_INT, nullable=True, check=_at_least(1)),
    "mem_per_node": _Key(*_INT, nullable=True, check=_at_least(1)),
    "launcher": _Key((dict,), "mapping", nullable=True),
}

_LAUNCHER_KEYS: dict[str, _Key] = {
    "kind": _Key(*_STR, default="single_node"),
    "overrides": _Key(*_STR, default=""),
    "bind_cmd": _Key(*_STR, default="--bind-to"),
}

_COMMON_PROVIDER = ("kind", "init_blocks", "min_blocks", "max_blocks", "nodes_per_block",
                    "worker_init", "launcher")

#: provider kind -> (Parsl class, keys of the provider section it uses).
PROVIDERS: dict[str, tuple[type[ExecutionProvider], tuple[str, ...]]] = {
    "local": (LocalProvider, _COMMON_PROVIDER),
    "pbspro": (PBSProProvider, _COMMON_PROVIDER + (
        "walltime", "account", "queue", "scheduler_options", "select_options", "cpus_per_node")),
    "slurm": (SlurmProvider, _COMMON_PROVIDER + (
        "walltime", "account", "partition", "qos", "constraint", "exclusive",
        "scheduler_options", "cores_per_node", "mem_per_node")),
}

#: launcher kind -> (Parsl class, keys of the launcher section it uses).
LAUNCHERS: dict[str, tuple[type[Launcher], tuple[str, ...]]] = {
    "single_node": (SingleNodeLauncher, ("kind",)),
    "simple": (SimpleLauncher, ("kind",)),
    "srun": (SrunLauncher, ("kind", "overrides")),
    "mpiexec": (MpiExecLauncher, ("kind", "bind_cmd", "overrides")),
    "mpirun": (MpiRunLauncher, ("kind", "overrides")),
    "aprun": (AprunLauncher, ("kind", "overrides")),
    "gnu_parallel": (GnuParallelLauncher, ("kind",)),
}


# ----------------------------------------------------------------------- validation


def _check_value(section: str, key: str, value: Any, spec: _Key, source: str) -> Any:
    """Type-check one value and return it normalised (ints widened to float).

    Raises:
        ConfigError: the value has the wrong type or fails the key's check.
    """
    where = f"{section}.{key}" if section != "site" else key
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(
            f"{source}: key {where!r} = null; expected {spec.type_name}"
        )
    ok = isinstance(value, spec.types) and not (
        isinstance(value, bool) and bool not in spec.types
    )
    if not ok:
        raise ConfigError(
            f"{source}: key {where!r} = {value!r} ({type(value).__name__}); "
            f"expected {spec.type_name}{' or null' if spec.nullable else ''}"
        )
    if spec.types == _FLOAT[0]:
        value = float(value)
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise ConfigError(f"{source}: key {where!r} = {value!r} {problem}")
    return copy.deepcopy(value)


def _unknown_keys(
    section: str, data: Mapping[str, Any], allowed: Mapping[str, Any], source: str
) -> None:
    """Raise on keys outside ``allowed``, listing the allowed keys.

    Raises:
        ConfigError: a key is not part of the section's schema.
    """
    for key in data:
        if key not in allowed:
            raise ConfigError(
                f"{source}: unknown key {key!r} in section {section!r}; "
                f"allowed keys: {', '.join(sorted(allowed))}"
            )


def _is_set(value: Any) -> bool:
    """True when a value counts as set (not null and not the empty string)."""
    return value is not None and value != ""


def _normalize_section(
    section: str,
    data: Mapping[str, Any],
    schema: Mapping[str, _Key],
    used: tuple[str, ...],
    owner: str,
    source: str,
) -> dict[str, Any]:
    """Validate a provider/launcher section and keep only the keys ``owner`` uses.

    Raises:
        ConfigError: unknown key, wrong type, or a key set that ``owner`` does not use.
    """
    _unknown_keys(section, data, schema, source)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in used:
            if _is_set(value):
                raise ConfigError(
                    f"{source}: key {section}.{key!r} = {value!r} is not used by {owner}; "
                    f"remove it or set it to null (keys {owner} uses: {', '.join(used)})"
                )
            continue
        out[key] = value
    for key in used:
        if key in ("launcher",):
            continue
        out[key] = _check_value(section, key, out.get(key, schema[key].default), schema[key],
                                source)
    return out


def _normalize(site: Any, source: str = "site") -> dict[str, Any]:
    """Validate a site mapping and return a full, normalised deep copy.

    Raises:
        ConfigError: the site breaks the schema.
    """
    if not isinstance(site, Mapping):
        raise ConfigError(
            f"{source}: a site must be a mapping of keys, got {type(site).__name__}"
        )
    _unknown_keys("site", site, _TOP_KEYS, source)
    out: dict[str, Any] = {}
    for key, spec in _TOP_KEYS.items():
        if key != "provider":
            out[key] = _check_value("site", key, site.get(key, spec.default), spec, source)
    if out["strategy"] is None:
        out["strategy"] = "none"
    if out["address"] is not None and out["interface"] is not None:
        raise ConfigError(
            f"{source}: set either 'address' ({out['address']!r}) or 'interface' "
            f"({out['interface']!r}), not both"
        )

    provider = _check_value("site", "provider", site.get("provider"), _TOP_KEYS["provider"],
                            source) or {}
    kind = _check_value("provider", "kind", provider.get("kind", "local"),
                        _PROVIDER_KEYS["kind"], source)
    if kind not in PROVIDERS:
        raise unknown_name("provider", kind, PROVIDERS)
    cls, used = PROVIDERS[kind]
    prov = _normalize_section("provider", provider, _PROVIDER_KEYS, used,
                              f"provider {kind!r} ({cls.__name__})", source)
    if prov["min_blocks"] > prov["max_blocks"] or prov["init_blocks"] > prov["max_blocks"]:
        raise ConfigError(
            f"{source}: provider blocks need min_blocks <= max_blocks and "
            f"init_blocks <= max_blocks; got init={prov['init_blocks']}, "
            f"min={prov['min_blocks']}, max={prov['max_blocks']}"
        )

    launcher = _check_value("provider", "launcher", provider.get("launcher"),
                            _PROVIDER_KEYS["launcher"], source) or {}
    lkind = _check_value("provider.launcher", "kind", launcher.get("kind", "single_node"),
                         _LAUNCHER_KEYS["kind"], source)
    if lkind not in LAUNCHERS:
        raise unknown_name("launcher", lkind, LAUNCHERS)
    lcls, lused = LAUNCHERS[lkind]
    prov["launcher"] = _normalize_section("provider.launcher", launcher, _LAUNCHER_KEYS, lused,
                                          f"launcher {lkind!r} ({lcls.__name__})", source)
    out["provider"] = prov
    if out["encrypted"] is None:
        out["encrypted"] = not _stays_on_host(prov)
    return out


#: Launchers that start the worker pool on the host that runs the provider's block.
_HOST_LAUNCHERS = ("single_node", "simple")


def _stays_on_host(provider: Mapping[str, Any]) -> bool:
    """True when a normalised provider starts every worker pool on this host."""
    return (provider["kind"] == "local" and provider["nodes_per_block"] == 1
            and provider["launcher"]["kind"] in _HOST_LAUNCHERS)


# -------------------------------------------------------------------------- loading


def _resolve_path(path: str | Path) -> Path | None:
    """Find the site file for ``path``: an existing file or a bare name in SITE_DIR."""
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    name = str(path)
    if name and "/" not in name and "\\" not in name and not candidate.suffix:
        named = SITE_DIR / f"{name}.yaml"
        if named.is_file():
            return named
    return None


def load_site(path: str | Path | None) -> dict[str, Any]:
    """Read, validate and normalise a site file.

    Args:
        path: a YAML file, a bare site name (``"local"``, ``"polaris"``, ...) found in
            ``configs/parsl/``, or None for the built-in local site.

    Returns:
        The normalised site (all top-level keys present; provider and launcher
        sections hold exactly the keys their kind uses).

    Raises:
        ConfigError: the file is missing or unreadable, or the site breaks the schema.
    """
    if path is None:
        return _normalize(DEFAULT_LOCAL_SITE, "built-in local site")
    found = _resolve_path(path)
    if found is None:
        if str(path) == "local":
            return _normalize(DEFAULT_LOCAL_SITE, "built-in local site")
        names = sorted(p.stem for p in SITE_DIR.glob("*.yaml")) if SITE_DIR.is_dir() else []
        raise ConfigError(
            f"site file not found: {str(path)!r}"
            + (f" (bare names available: {', '.join(names)})" if names else "")
        )
    try:
        data = yaml.safe_load(found.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read site file {str(found)!r}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"site file {str(found)!r} is not valid YAML: {exc}") from exc
    if data is None:
        raise ConfigError(f"site file {str(found)!r} is empty")
    return _normalize(data, f"site file {str(found)!r}")


# ------------------------------------------------------------------------- building


def _resolve_address(site: Mapping[str, Any]) -> str | None:
    """Return the HTEX address: ``address``, the ``interface``'s IPv4, or None (probe).

    Raises:
        ConfigError: the interface does not exist on this host.
    """
    if site["address"] is not None:
        return site["address"]
    if site["interface"] is None:
        return None
    try:
        return address_by_interface(site["interface"])
    except (OSError, AssertionError) as exc:
        try:
            names = ", ".join(name for _, name in socket.if_nameindex())
        except OSError:
            names = "unknown"
        raise ConfigError(
            f"site interface {site['interface']!r} has no IPv4 address on this host "
            f"({exc}); interfaces here: {names}. Set 'interface' or 'address' in the site file"
        ) from exc


def _build_launcher(launcher: Mapping[str, Any]) -> Launcher:
    """Instantiate the Parsl launcher for a normalised launcher section."""
    cls, used = LAUNCHERS[launcher["kind"]]
    return cls(**{k: launcher[k] for k in used if k != "kind"})


def _build_provider(provider: Mapping[str, Any]) -> ExecutionProvider:
    """Instantiate the Parsl provider for a normalised provider section."""
    cls, used = PROVIDERS[provider["kind"]]
    kwargs: dict[str, Any] = {
        k: provider[k] for k in used if k not in ("kind", "launcher") and provider[k] is not None
    }
    kwargs["launcher"] = _build_launcher(provider["launcher"])
    return cls(**kwargs)


def _no_memoizer_kwargs() -> dict[str, Any]:
    """Config kwargs that turn off app caching (``app_cache`` on older Parsl)."""
    params = inspect.signature(Config.__init__).parameters
    if "app_cache" in params:
        return {"app_cache": False}
    from parsl.dataflow.memoization import BasicMemoizer

    return {"memoizer": BasicMemoizer(memoize=False)}


def build_parsl_config(site: Mapping[str, Any], workers: int, run_dir: str | Path) -> Config:
    """Build a fresh Parsl Config with one HighThroughputExecutor for ``site``.

    Args:
        site: a site mapping (as from :func:`load_site`; validated again here).
        workers: the run's slots (worker processes); used as ``max_workers_per_node`` when the
            site leaves it null and a block is one node.
        run_dir: the run's directory; Parsl writes under ``<run_dir>/parsl``.

    Returns:
        A new, unloaded ``parsl.config.Config``.

    Raises:
        ConfigError: the site is invalid, ``workers`` < 1, or the interface is missing.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers = {workers!r}; expected an int >= 1")
    s = _normalize(site)
    provider = s["provider"]
    max_workers = s["max_workers_per_node"]
    if max_workers is None and (provider["kind"] == "local" or provider["nodes_per_block"] == 1):
        max_workers = workers  # one node per block: the run's slots, whichever provider
    accelerators = s["available_accelerators"]
    htex_kwargs: dict[str, Any] = {
        "label": s["label"],
        "provider": _build_provider(provider),
        "address": _resolve_address(s),
        "max_workers_per_node": max_workers,
        "cores_per_worker": s["cores_per_worker"],
        "mem_per_worker": s["mem_per_worker"],
        "encrypted": s["encrypted"],
        "heartbeat_threshold": s["heartbeat_threshold"],
        "heartbeat_period": s["heartbeat_period"],
        "prefetch_capacity": s["prefetch_capacity"],
        "cpu_affinity": s["cpu_affinity"],
        "worker_logdir_root": s["worker_logdir_root"],
    }
    if accelerators is not None:
        htex_kwargs["available_accelerators"] = (
            accelerators if isinstance(accelerators, int) else [str(a) for a in accelerators]
        )
    config_kwargs: dict[str, Any] = {
        "executors": [HighThroughputExecutor(**htex_kwargs)],
        "run_dir": str(Path(run_dir) / "parsl"),
        "strategy": s["strategy"],
        "usage_tracking": 0,
        **_no_memoizer_kwargs(),
    }
    if s["max_idletime"] is not None:
        config_kwargs["max_idletime"] = s["max_idletime"]
    if s["monitoring"]:
        config_kwargs["monitoring"] = _monitoring_hub(run_dir)
    return Config(**config_kwargs)


def monitoring_db_path(run_dir: str | Path) -> Path:
    """Where a site with ``monitoring: true`` has Parsl write its SQLite database."""
    return Path(run_dir).absolute() / "monitoring.db"


def _monitoring_hub(run_dir: str | Path) -> Any:
    """Parsl's MonitoringHub logging task states to ``<run_dir>/monitoring.db``.

    Raises:
        ConfigError: Parsl's monitoring extra (SQLAlchemy) is not installed.
    """
    try:
        from parsl.monitoring import MonitoringHub

        return MonitoringHub(logging_endpoint=f"sqlite:///{monitoring_db_path(run_dir)}",
                             resource_monitoring_enabled=False)
    except (ImportError, ModuleNotFoundError) as exc:
        raise ConfigError(f"site key 'monitoring' = True needs Parsl's monitoring extra "
                          f"(pip install 'parsl[monitoring]'): {exc}") from exc


# ------------------------------------------------------------------------- metadata


def site_fixed_slots(site: Mapping[str, Any]) -> int | None:
    """Worker processes a site starts whatever the run asks, or None when the run decides.

    A site that sets ``max_workers_per_node`` starts that many per node, on
    ``nodes_per_block`` nodes, in ``init_blocks`` blocks (at least one).

    Raises:
        ConfigError: the site is invalid.
    """
    s = _normalize(site)
    if s["max_workers_per_node"] is None:
        return None
    prov = s["provider"]
    return int(s["max_workers_per_node"]) * int(prov["nodes_per_block"]) * max(int(prov["init_blocks"]), 1)


def site_start_timeout(site: Mapping[str, Any]) -> float:
    """Seconds the engine waits for the first worker to connect.

    Raises:
        ConfigError: the site is invalid.
    """
    return float(_normalize(site)["start_timeout"])


def describe_site(site: Mapping[str, Any], workers: int | None = None) -> str:
    """One log line: provider, launcher, workers per node, accelerators, encryption.

    Args:
        site: a site mapping.
        workers: the run's slots, shown when they set workers per node.

    Raises:
        ConfigError: the site is invalid.
    """
    s = _normalize(site)
    prov = s["provider"]
    per_node: str
    if s["max_workers_per_node"] is not None:
        per_node = str(s["max_workers_per_node"])
    elif prov["kind"] == "local" or prov["nodes_per_block"] == 1:
        per_node = f"{workers} (slots)" if workers is not None else "slots"
    else:
        per_node = "auto"
    where = [f"{k}={prov[k]}" for k in ("account", "queue", "partition", "qos", "constraint")
             if prov.get(k) is not None]
    address = s["address"] or (f"iface:{s['interface']}" if s["interface"] else "auto")
    return (
        f"site {s['label']!r}: provider={prov['kind']}"
        + (f"({', '.join(where)})" if where else "")
        + f" blocks={prov['init_blocks']}x{prov['nodes_per_block']}node"
        f" launcher={prov['launcher']['kind']} workers_per_node={per_node}"
        f" accelerators={s['available_accelerators']} address={address}"
        f" encrypted={s['encrypted']} strategy={s['strategy']}"
        + (" monitoring=on" if s["monitoring"] else "")
    )
