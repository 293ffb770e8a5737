"""Parsl site files: load, validate, and turn into a fresh ``parsl.config.Config``.

This module owns the site YAML schema (``configs/parsl/*.yaml``): :class:`SiteSchema`,
:class:`ProviderSchema` and :class:`LauncherSchema`, pydantic models checked by
:func:`flight_parsl.config.schema.check`, so a bad site file fails with the one error
format of every config (``site file 'PATH': key 'provider.walltime' = 3600: ...``). It
also owns the built-in local site and the translation of a site into a Parsl
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
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

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

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field

from flight_parsl.config.schema import Schema, check, key_error
from flight_parsl.core.errors import ConfigError
from flight_parsl.execution.links import Link, LinkSchema, normalize_link

__all__ = [
    "DEFAULT_LOCAL_SITE",
    "LAUNCHERS",
    "PROVIDERS",
    "SITE_DIR",
    "LauncherSchema",
    "ProviderSchema",
    "SiteSchema",
    "build_parsl_config",
    "monitoring_db_path",
    "site_fixed_slots",
    "describe_site",
    "load_site",
    "normalize_site",
    "read_site",
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


def _finite(v: float) -> float:
    """Reject ``.inf`` / ``.nan`` (YAML reads them as numbers)."""
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


def _check_affinity(v: str) -> str:
    """An HTEX ``cpu_affinity`` value."""
    if v in ("none", "block", "block-reverse", "alternating") or v.startswith("list:"):
        return v
    raise ValueError("must be none, block, block-reverse, alternating or list:<ranks>")


def _check_accelerators(v: Any) -> Any:
    """``available_accelerators``: null, a count, or a list of device ids."""
    if v is None or isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        raise ValueError("must be >= 0")
    if isinstance(v, list):
        if all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
            return v
        raise ValueError("list items must be device ids (str or int)")
    raise ValueError("must be a count (int), a list of device ids, or null")


def _walltime_text(v: Any) -> Any:
    """A walltime must be text: YAML reads an unquoted ``1:00:00`` as 3600 (seconds)."""
    if isinstance(v, str):
        return v
    raise ValueError('must be a string; quote it in YAML, e.g. "00:30:00" '
                     "(YAML reads an unquoted 1:00:00 as a number of seconds)")


_Positive = Annotated[float, Field(gt=0), AfterValidator(_finite)]
_AtLeast0 = Annotated[int, Field(ge=0)]
_AtLeast1 = Annotated[int, Field(ge=1)]
_Walltime = Annotated[str, BeforeValidator(_walltime_text)]
_Accelerators = Annotated[int | list[int | str] | None, BeforeValidator(_check_accelerators)]


class _SiteSection(Schema):
    """Site sections: unknown keys are errors, and no value changes type (``label: 7`` is
    not the text ``"7"``, ``heartbeat_period: 1.0`` is not an int); ints widen to float."""

    model_config = ConfigDict(strict=True)


class LauncherSchema(_SiteSection):
    """``provider.launcher``: how a block starts its worker pools on its nodes."""

    kind: Literal["single_node", "simple", "srun", "mpiexec", "mpirun", "aprun", "gnu_parallel"] = (
        "single_node")
    overrides: str = ""
    bind_cmd: str = "--bind-to"


class ProviderSchema(_SiteSection):
    """``provider``: where blocks of worker pools come from (this host, Slurm, PBS Pro)."""

    kind: Literal["local", "pbspro", "slurm"] = "local"
    init_blocks: _AtLeast0 = 1
    min_blocks: _AtLeast0 = 0
    max_blocks: _AtLeast1 = 1
    nodes_per_block: _AtLeast1 = 1
    worker_init: str = ""
    walltime: _Walltime = "00:30:00"
    account: str | None = None
    queue: str | None = None
    partition: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclusive: bool = True
    scheduler_options: str = ""
    select_options: str = ""
    cpus_per_node: _AtLeast1 | None = None
    cores_per_node: _AtLeast1 | None = None
    mem_per_node: _AtLeast1 | None = None
    # seconds a block may stay pending in the batch queue before the run cancels it and stops
    # with one message (null: wait up to the site's start_timeout); not a Parsl provider argument
    pending_timeout_s: _Positive | None = None
    # seconds between Parsl's polls of the batch system for its blocks' states (null: the Parsl
    # provider's own, 60 s for Slurm): how soon Parsl sees a block end (its walltime) and starts
    # a replacement; a Parsl provider property, set through a subclass
    status_polling_s: _Positive | None = None
    launcher: LauncherSchema | None = None


class SiteSchema(_SiteSection):
    """A Parsl site file (``configs/parsl/*.yaml``): one HighThroughputExecutor."""

    label: Annotated[str, Field(min_length=1)] = "htex"
    max_workers_per_node: _AtLeast1 | None = None
    cores_per_worker: _Positive = 0.0001
    mem_per_worker: _Positive | None = None
    address: str | None = None
    interface: str | None = None
    encrypted: bool | None = None
    monitoring: bool = False
    heartbeat_threshold: _AtLeast1 = 120
    heartbeat_period: _AtLeast1 = 30
    prefetch_capacity: _AtLeast0 = 0
    cpu_affinity: Annotated[str, AfterValidator(_check_affinity)] = "none"
    available_accelerators: _Accelerators = None
    worker_logdir_root: str | None = None
    strategy: Literal["none", "simple", "htex_auto_scale"] | None = "none"
    max_idletime: Annotated[float, Field(ge=0)] | None = None
    start_timeout: _Positive = 300.0
    provider: ProviderSchema | None = None
    # Run this site's worker pools on a virtual host (a network namespace of this name that a
    # multi-site run creates; see flight_parsl.execution.sites). Null: on the provider's hosts.
    virtual_host: str | None = None
    # The virtual host's link to the run's bridge: rate, delay, jitter, loss, each direction
    # (tc on its veth pair; see flight_parsl.execution.links). Null: unshaped.
    link: LinkSchema | None = None


_COMMON_PROVIDER = ("kind", "init_blocks", "min_blocks", "max_blocks", "nodes_per_block",
                    "worker_init", "launcher")

#: provider kind -> (Parsl class, keys of the provider section it uses).
PROVIDERS: dict[str, tuple[type[ExecutionProvider], tuple[str, ...]]] = {
    "local": (LocalProvider, _COMMON_PROVIDER),
    "pbspro": (PBSProProvider, _COMMON_PROVIDER + (
        "walltime", "account", "queue", "scheduler_options", "select_options", "cpus_per_node",
        "pending_timeout_s", "status_polling_s")),
    "slurm": (SlurmProvider, _COMMON_PROVIDER + (
        "walltime", "account", "partition", "qos", "constraint", "exclusive",
        "scheduler_options", "cores_per_node", "mem_per_node", "pending_timeout_s", "status_polling_s")),
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


def _is_set(value: Any) -> bool:
    """True when a value counts as set (not null and not the empty string)."""
    return value is not None and value != ""


def _used_keys_only(
    data: Any,
    section: str,
    table: Mapping[str, tuple[type, tuple[str, ...]]],
    schema: type[_SiteSection],
    source: str,
) -> Any:
    """A provider/launcher section without the unset keys its ``kind`` does not use.

    Keys the section's schema does not know at all are left for the schema to refuse.

    Raises:
        ConfigError: an unknown kind, or a key set (not null, not ``""``) that the kind does
            not use.
    """
    if not isinstance(data, Mapping):
        return data  # null (the defaults) or a wrong type, which the schema reports
    default = schema.model_fields["kind"].default
    kind = data.get("kind", default)
    if not isinstance(kind, str) or kind not in table:
        raise key_error(source, f"{section}.kind", kind, f"must be one of: {', '.join(table)}")
    cls, used = table[kind]
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in schema.model_fields and key not in used:
            if _is_set(value):
                raise key_error(
                    source, f"{section}.{key}", value,
                    f"is not used by {section.rsplit('.', 1)[-1]} {kind!r} ({cls.__name__}); remove it "
                    f"or set it to null (keys it uses: {', '.join(used)})")
            continue
        out[key] = value
    return out


def normalize_site(site: Any, source: str = "site") -> dict[str, Any]:
    """Validate a site mapping against :class:`SiteSchema` and return a full, normalised copy.

    Every top-level key is present (defaults filled); the provider and launcher sections
    hold exactly the keys their ``kind`` uses; ``strategy: null`` is ``"none"``; and
    ``encrypted: null`` is decided from where the workers run.

    Raises:
        ConfigError: the site breaks the schema (one message in the format of
            :mod:`flight_parsl.config.schema`).
    """
    if not isinstance(site, Mapping):
        raise ConfigError(f"{source}: a site must be a mapping of keys, got {type(site).__name__}")
    data = dict(site)
    provider = _used_keys_only(data.get("provider"), "provider", PROVIDERS, ProviderSchema, source)
    if isinstance(provider, dict) and "launcher" in provider:
        provider["launcher"] = _used_keys_only(provider["launcher"], "provider.launcher", LAUNCHERS,
                                               LauncherSchema, source)
    data["provider"] = provider
    model = check(SiteSchema, data, source)

    out = {key: copy.deepcopy(getattr(model, key)) for key in SiteSchema.model_fields if key != "provider"}
    out["link"] = normalize_link(model.link, source, data.get("link"))
    if out["link"] is not None and not out["virtual_host"]:
        raise key_error(source, "link", data.get("link"),
                        "needs 'virtual_host': a link shapes the veth of a virtual host (a network "
                        "namespace this run creates); a real host's link is what it is")
    if out["strategy"] is None:
        out["strategy"] = "none"
    if out["address"] is not None and out["interface"] is not None:
        raise key_error(source, "interface", out["interface"],
                        f"set either 'address' ({out['address']!r}) or 'interface', not both")
    prov_model = model.provider or ProviderSchema()
    launcher_model = prov_model.launcher or LauncherSchema()
    prov = {key: getattr(prov_model, key) for key in PROVIDERS[prov_model.kind][1] if key != "launcher"}
    if prov["min_blocks"] > prov["max_blocks"] or prov["init_blocks"] > prov["max_blocks"]:
        raise key_error(
            source, "provider.max_blocks", prov["max_blocks"],
            f"must be >= min_blocks and init_blocks (init_blocks={prov['init_blocks']}, "
            f"min_blocks={prov['min_blocks']})")
    prov["launcher"] = {key: getattr(launcher_model, key) for key in LAUNCHERS[launcher_model.kind][1]}
    out["provider"] = prov
    if out["encrypted"] is None:
        out["encrypted"] = not _stays_on_host(prov)
    return out


_normalize = normalize_site


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


def read_site(path: str | Path | None) -> tuple[Any, str]:
    """The raw contents of a site file, and how error messages name it.

    Args:
        path: as for :func:`load_site`.

    Returns:
        ``(data, source)``: the parsed YAML (not yet validated) and ``site file 'PATH'``
        (or ``built-in local site``).

    Raises:
        ConfigError: the file is missing, unreadable, not YAML, or empty.
    """
    if path is None:
        return DEFAULT_LOCAL_SITE, "built-in local site"
    found = _resolve_path(path)
    if found is None:
        if str(path) == "local":
            return DEFAULT_LOCAL_SITE, "built-in local site"
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
    return data, f"site file {str(found)!r}"


def load_site(path: str | Path | None) -> dict[str, Any]:
    """Read, validate and normalise a site file.

    Args:
        path: a YAML file, a bare site name (``"local"``, ``"polaris"``, ...) found in
            ``configs/parsl/``, or None for the built-in local site.

    Returns:
        The normalised site (all top-level keys present; provider and launcher
        sections hold exactly the keys their kind uses).

    Raises:
        ConfigError: the file is missing or unreadable, or the site breaks the schema
            (``site file 'PATH': key 'KEY' = VALUE: PROBLEM``).
    """
    data, source = read_site(path)
    return normalize_site(data, source)


# ------------------------------------------------------------------------- building


def service_address(site: Mapping[str, Any]) -> str:
    """Where a run's own services (its managed redis-server) listen for this site's workers: the
    interchange's address when the workers reach this host over a network (a batch provider,
    several nodes), else loopback.

    Raises:
        ConfigError: the site is invalid, or its address cannot be resolved.
    """
    s = _normalize(site)
    if _stays_on_host(s["provider"]):
        return "127.0.0.1"
    return _resolve_address(s) or "127.0.0.1"


def _resolve_address(site: Mapping[str, Any]) -> str | None:
    """Return the HTEX address: ``address``, the address on the route to a Slurm site's nodes
    (``address: auto``, see :mod:`flight_parsl.execution.addresses`), the ``interface``'s IPv4, or
    None (workers probe every address of this host).

    Raises:
        ConfigError: the interface does not exist on this host, or ``auto`` finds no route.
    """
    if site["address"] == "auto":
        from flight_parsl.execution.addresses import auto_address

        return auto_address(site["provider"])
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


#: Provider keys the harness reads itself (not arguments of the Parsl provider class).
_NOT_PARSL = ("kind", "launcher", "pending_timeout_s", "status_polling_s")


def _polling_every(cls: type[ExecutionProvider], seconds: float) -> type[ExecutionProvider]:
    """``cls`` with Parsl's ``status_polling_interval`` (a read-only property) set to ``seconds``."""
    return type(cls.__name__, (cls,), {
        "status_polling_interval": property(lambda self: seconds),
        "__module__": cls.__module__,
    })


def _build_provider(provider: Mapping[str, Any]) -> ExecutionProvider:
    """Instantiate the Parsl provider for a normalised provider section."""
    cls, used = PROVIDERS[provider["kind"]]
    if provider.get("status_polling_s") is not None:
        cls = _polling_every(cls, float(provider["status_polling_s"]))
    kwargs: dict[str, Any] = {
        k: provider[k] for k in used if k not in _NOT_PARSL and provider[k] is not None
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


def build_parsl_config(
    site: Mapping[str, Any], workers: int, run_dir: str | Path, prime_spec: str | Path | None = None,
    preload: tuple[str, ...] = (),
) -> Config:
    """Build a fresh Parsl Config with one HighThroughputExecutor for ``site``.

    Args:
        site: a site mapping (as from :func:`load_site`; validated again here).
        workers: the run's slots (worker processes); used as ``max_workers_per_node`` when the
            site leaves it null and a block is one node.
        run_dir: the run's directory; Parsl writes under ``<run_dir>/parsl``.
        prime_spec: a prime spec (:func:`flight_parsl.execution.primed_pool.write_spec`): on a
            site with a ``strategy`` (blocks may start after the warm-up) every block's worker
            pool primes its workers before it takes tasks. Ignored on a site without one. Every
            pool starts through :mod:`flight_parsl.execution.primed_pool` (its workers wait for
            tasks without the task queue's lock) and forks its workers from a server that
            imported the task modules and ``preload`` (the run's warm-up modules).

    Returns:
        A new, unloaded ``parsl.config.Config``.

    Raises:
        ConfigError: the site is invalid, ``workers`` < 1, or the interface is missing.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers = {workers!r}; expected an int >= 1")
    s = normalize_site(site)
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
    # every pool's workers wait for tasks without the task queue's lock (a SIGKILLed idle
    # worker would otherwise stop its pool); on a site with a strategy they also prime
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    from flight_parsl.execution.primed_pool import launch_command

    htex_kwargs["launch_cmd"] = launch_command(
        prime_spec if s["strategy"] != "none" else None, DEFAULT_LAUNCH_CMD, preload
    )
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
                          f"(pip install -e '.[monitoring]'): {exc}") from exc


# ------------------------------------------------------------------------- metadata


def site_fixed_slots(site: Mapping[str, Any]) -> int | None:
    """Worker processes a site starts whatever the run asks, or None when the run decides.

    A site that sets ``max_workers_per_node`` starts that many per node, on
    ``nodes_per_block`` nodes, in ``init_blocks`` blocks (at least one).

    Raises:
        ConfigError: the site is invalid.
    """
    s = normalize_site(site)
    if s["max_workers_per_node"] is None:
        return None
    prov = s["provider"]
    return int(s["max_workers_per_node"]) * int(prov["nodes_per_block"]) * max(int(prov["init_blocks"]), 1)


def site_start_timeout(site: Mapping[str, Any]) -> float:
    """Seconds the engine waits for the first worker to connect.

    Raises:
        ConfigError: the site is invalid.
    """
    return float(normalize_site(site)["start_timeout"])


def site_pending_timeout(site: Mapping[str, Any]) -> float | None:
    """Seconds a block may stay pending in the batch queue (``provider.pending_timeout_s``), or None.

    Raises:
        ConfigError: the site is invalid.
    """
    value = normalize_site(site)["provider"].get("pending_timeout_s")
    return None if value is None else float(value)


def describe_site(site: Mapping[str, Any], workers: int | None = None) -> str:
    """One log line: provider, launcher, workers per node, accelerators, encryption.

    Args:
        site: a site mapping.
        workers: the run's slots, shown when they set workers per node.

    Raises:
        ConfigError: the site is invalid.
    """
    s = normalize_site(site)
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
        + (f" link={Link.of(s['link']).describe()}" if s["link"] else "")
    )
