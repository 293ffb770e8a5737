"""Batch jobs for the weak-scaling study: sweep spec YAML -> PBS/Slurm scripts -> qsub/sbatch.

A sweep spec (``jobs/specs/*.yaml``) names the scheduler, the allocation and the sweep
(worker counts x models x transfers x trials). Rendering groups the worker counts by the
number of nodes they need, ``1 + ceil(workers / workers_per_node)`` (one node for the
coordinator, the others host ``workers_per_node`` workers each), and makes ONE job per node
count, as the published study did: 2..128 workers -> 2 nodes, 256 -> 3, 512 -> 5, 1024 -> 9,
2048 -> 17 with 128 workers per node. Each job runs one harness sweep,
``python -m flight_parsl.scale --workers 2,8,32,128 --model ... --transfer ... --train none``,
against a per-job copy of the Parsl site file whose ``provider.nodes_per_block`` is the
job's nodes - 1. When ``redis`` is among the transfers the job starts redis-server on its
head node, bound to the interconnect address, and passes it in with ``--redis``.

Public API: :func:`load_spec`, :func:`validate_spec`, :func:`nodes_for`,
:func:`group_workers`, :func:`render_jobs`, :func:`write_jobs`, :func:`submit_jobs`,
:func:`default_out_dir`, and the errors :class:`SpecError` / :class:`SubmitError`.
Nothing here submits a job except :func:`submit_jobs`.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shlex
import shutil
import string
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field

from flight_parsl.config.schema import Schema, check, key_error
from flight_parsl.core.errors import ConfigError

__all__ = [
    "JOBS_DIR",
    "REPO_ROOT",
    "SCHEDULERS",
    "SPEC_KEYS",
    "Job",
    "Spec",
    "SpecError",
    "SpecSchema",
    "SubmitError",
    "default_out_dir",
    "group_workers",
    "load_spec",
    "nodes_for",
    "render_jobs",
    "submit_jobs",
    "validate_spec",
    "write_jobs",
]

JOBS_DIR: Path = Path(__file__).resolve().parent
REPO_ROOT: Path = JOBS_DIR.parent
TEMPLATE_DIR: Path = JOBS_DIR / "templates"
SITE_DIR: Path = REPO_ROOT / "configs" / "parsl"

#: scheduler -> (template file, submit command, directive prefix)
SCHEDULERS: dict[str, tuple[str, str, str]] = {
    "slurm": ("slurm.sh.tmpl", "sbatch", "#SBATCH "),
    "pbs": ("pbs.sh.tmpl", "qsub", "#PBS "),
}
TRANSFERS = ("parsl", "redis", "file")
#: Harness flags the renderer sets itself; extra_args may not repeat them.
RENDERED_FLAGS = ("--workers", "-n", "--model", "--transfer", "--trials", "--rounds", "--train",
                  "--parsl-config", "--results", "--redis", "--backend", "--config")
#: Seconds the job waits for redis-server to answer PING.
REDIS_WAIT_S = 60
PLACEHOLDER_ACCOUNT = "YOUR_ACCOUNT"


class SpecError(ConfigError):
    """A sweep spec is wrong; the message names the spec, the key, the value and what is allowed
    (``job spec 'PATH': key 'KEY' = VALUE: PROBLEM``, the one format of flight_parsl's config
    errors: this is a :class:`~flight_parsl.core.errors.ConfigError`)."""


class SubmitError(RuntimeError):
    """Writing or submitting the job scripts failed (a missing qsub/sbatch, a refused job)."""


# --------------------------------------------------------------------------- schema


def _name(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", v):
        raise ValueError("must start with a letter and hold only letters, digits, '_', '.', '-'")
    return v


def _token(v: str) -> str:
    if not v:
        raise ValueError("must not be empty")
    if not re.fullmatch(r"[A-Za-z0-9_.:,@+=/-]+", v):
        raise ValueError("must be one word (no spaces or quotes)")
    return v


def _walltime_text(v: Any) -> Any:
    if isinstance(v, str):
        return v
    hint = " (YAML reads an unquoted 01:00:00 as a number of seconds)" if isinstance(v, int) else ""
    raise ValueError(f'must be a string; quote it in YAML: "01:00:00"{hint}')


def _walltime(v: str) -> str:
    if not re.fullmatch(r"(\d+-)?\d{1,3}:\d{2}:\d{2}", v):
        raise ValueError('must look like "HH:MM:SS"')
    return v


def _nonempty(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


def _model_name(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
        raise ValueError("is not a model name")
    return v


def _unique(items: list[Any]) -> list[Any]:
    seen: set[Any] = set()
    for item in items:
        if item in seen:
            raise ValueError(f"lists {item!r} twice")
        seen.add(item)
    return items


_Token = Annotated[str, AfterValidator(_token)]
_Text = Annotated[str, AfterValidator(_nonempty)]
_AtLeast1 = Annotated[int, Field(ge=1)]


class SpecSchema(Schema):
    """A sweep spec (``jobs/specs/*.yaml``; jobs/README.md says what each key means).

    Keys that only one scheduler uses (``queue``, ``filesystems``: pbs; ``partition``,
    ``qos``, ``constraint``, ``head_node_workers``: slurm) must be null or absent under the
    other one; :func:`validate_spec` checks that and the other rules across keys.
    """

    model_config = ConfigDict(strict=True)

    scheduler: Literal["slurm", "pbs"]
    job_name: Annotated[str, AfterValidator(_name)] = "fp-scaling"
    account: _Token
    queue: _Token | None = None
    filesystems: _Token | None = None
    partition: _Token | None = None
    qos: _Token | None = None
    constraint: _Token | None = None
    walltime: Annotated[str, BeforeValidator(_walltime_text), AfterValidator(_walltime)]
    worker_init: str | None = ""
    parsl_config: _Text
    workers_per_node: _AtLeast1 = 128
    head_node_workers: bool | None = None
    workers: Annotated[list[_AtLeast1], Field(min_length=1), AfterValidator(_unique)]
    models: Annotated[list[Annotated[str, AfterValidator(_model_name)]], Field(min_length=1),
                      AfterValidator(_unique)]
    transfers: Annotated[list[Literal["parsl", "redis", "file"]], Field(min_length=1),
                         AfterValidator(_unique)]
    trials: _AtLeast1 = 1
    rounds: _AtLeast1 = 1
    results: _Text = "results/scaling.csv"
    redis_interface: _Token | None = None
    redis_port: Annotated[int, Field(ge=1, le=65535)] = 6379
    redis_tls: bool = True
    extra_args: list[_Text] = []
    directives: list[_Text] = []


#: The spec's keys (the schema is :class:`SpecSchema`).
SPEC_KEYS: tuple[str, ...] = tuple(SpecSchema.model_fields)

#: Keys only one scheduler uses.
_SCHEDULER_KEYS = {"queue": "pbs", "filesystems": "pbs", "partition": "slurm", "qos": "slurm",
                   "constraint": "slurm", "head_node_workers": "slurm"}

#: Defaults that depend on the scheduler (applied when the key is null or absent).
_SCHEDULER_DEFAULTS = {"pbs": {"filesystems": "home:eagle"}}


@dataclass(frozen=True)
class Spec:
    """A validated sweep spec (see :class:`SpecSchema` and jobs/README.md)."""

    scheduler: str
    job_name: str
    account: str
    queue: str | None
    filesystems: str | None
    partition: str | None
    qos: str | None
    constraint: str | None
    walltime: str
    worker_init: str
    parsl_config: str
    workers_per_node: int
    head_node_workers: bool
    workers: tuple[int, ...]
    models: tuple[str, ...]
    transfers: tuple[str, ...]
    trials: int
    rounds: int
    results: str
    redis_interface: str | None
    redis_port: int
    redis_tls: bool
    extra_args: tuple[str, ...]
    directives: tuple[str, ...]
    source: str = "spec"

    @property
    def uses_redis(self) -> bool:
        return "redis" in self.transfers

    @property
    def where(self) -> str:
        """How error messages name this spec: ``job spec 'PATH'``."""
        return spec_source(self.source)


def spec_source(path: str) -> str:
    """How error messages name the spec at ``path``: ``job spec 'PATH'``."""
    return f"job spec {path!r}"


def _err(source: str, key: str, value: Any, problem: str) -> SpecError:
    """The one error format, as a SpecError: ``SOURCE: key 'KEY' = VALUE: PROBLEM``."""
    return SpecError(str(key_error(source, key, value, problem)))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _known_models() -> list[str] | None:
    """The harness's model names, or None when flight_parsl/torch cannot be imported here."""
    try:
        from flight_parsl.models import model_names
    except Exception:  # noqa: BLE001 - a login node without torch: the harness checks later
        return None
    return list(model_names())


def validate_spec(data: Any, source: str = "spec", *, check_models: bool = True) -> Spec:
    """Validate a spec mapping against :class:`SpecSchema` and return a :class:`Spec`.

    Args:
        data: the parsed YAML.
        source: the spec's path (or a name); errors say ``job spec 'SOURCE'``.
        check_models: also check the model names against ``flight_parsl.models`` (skipped
            when that cannot be imported, e.g. without torch).

    Raises:
        SpecError: an unknown or missing key, a wrong type or value; the message names the key.
    """
    where = spec_source(source)
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: a spec must be a mapping of keys, got {type(data).__name__}")
    try:
        model = check(SpecSchema, data, where)
    except ConfigError as exc:
        raise SpecError(str(exc)) from None
    values = model.model_dump()
    scheduler = values["scheduler"]

    for key, owner in _SCHEDULER_KEYS.items():
        if owner != scheduler and values[key] is not None:
            raise _err(where, key, values[key], f"is a {owner} key, but scheduler is {scheduler!r}; "
                       "remove it or set it to null")
    for key, default in _SCHEDULER_DEFAULTS.get(scheduler, {}).items():
        if values[key] is None:
            values[key] = default
    values["head_node_workers"] = bool(values["head_node_workers"])
    if scheduler == "pbs" and values["queue"] is None:
        raise _err(where, "queue", None, "is required when scheduler is 'pbs' (e.g. prod, debug-scaling)")
    values["worker_init"] = values["worker_init"] or ""

    prefix = SCHEDULERS[scheduler][2]
    for i, line in enumerate(values["directives"]):
        if not line.startswith(prefix) or "\n" in line:
            raise _err(where, f"directives[{i}]", line, f"must be one line starting with "
                       f"{prefix.strip()!r} (scheduler is {scheduler!r})")
    for i, arg in enumerate(values["extra_args"]):
        flag = arg.split("=", 1)[0]
        if flag in RENDERED_FLAGS:
            raise _err(where, f"extra_args[{i}]", arg, f"sets {flag}, which the spec key "
                       "for it sets already (workers, models, transfers, trials, rounds, "
                       "parsl_config, results; --redis comes from the job's Redis)")
    if "file" in values["transfers"] and not any(
        a.startswith("transfer.file_dir=") for a in values["extra_args"]
    ):
        raise _err(where, "transfers", values["transfers"], "includes 'file', but workers run on "
                   "other nodes than the coordinator: add 'transfer.file_dir=/a/shared/directory' "
                   "to extra_args (the default /dev/shm is not shared between nodes)")
    if check_models:
        known = _known_models()
        if known is not None:
            for model_name in values["models"]:
                if model_name not in known:
                    raise _err(where, "models", values["models"], f"{model_name!r} is not a model "
                               f"of the harness; valid names: {', '.join(known)}")

    for key in ("workers", "models", "transfers", "extra_args", "directives"):
        values[key] = tuple(values[key])
    return Spec(**values, source=source)


def load_spec(path: str | Path, *, check_models: bool = True) -> Spec:
    """Read and validate a spec YAML file.

    Raises:
        SpecError: the file is missing, unreadable, not YAML, or breaks the schema.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec file {str(p)!r}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"spec file {str(p)!r} is not valid YAML: {exc}") from exc
    if data is None:
        raise SpecError(f"spec file {str(p)!r} is empty")
    return validate_spec(data, str(p), check_models=check_models)


# ----------------------------------------------------------------------- node counts


def nodes_for(workers: int, workers_per_node: int, head_node_workers: bool = False) -> int:
    """Nodes a run of ``workers`` needs: one for the coordinator + ceil(workers / per node).

    With ``head_node_workers`` the coordinator's node hosts workers too: ceil(workers / per node).
    """
    if not _is_int(workers) or workers < 1:
        raise ValueError(f"workers = {workers!r}; expected an int >= 1")
    if not _is_int(workers_per_node) or workers_per_node < 1:
        raise ValueError(f"workers_per_node = {workers_per_node!r}; expected an int >= 1")
    return (0 if head_node_workers else 1) + math.ceil(workers / workers_per_node)


def group_workers(workers: Sequence[int], workers_per_node: int,
                  head_node_workers: bool = False) -> dict[int, list[int]]:
    """Worker counts grouped by the node count they need: {nodes: [workers, ...]}, both sorted."""
    groups: dict[int, list[int]] = {}
    for w in sorted(set(workers)):
        groups.setdefault(nodes_for(w, workers_per_node, head_node_workers), []).append(w)
    return dict(sorted(groups.items()))


# ------------------------------------------------------------------------- templates


class JobTemplate(string.Template):
    """``string.Template`` with lowercase placeholders only.

    ``$name`` / ``${name}`` with a lowercase name are placeholders; everything else a shell
    script says with ``$`` (``$HOME``, ``${PBS_JOBID:-x}``, ``$(hostname)``, awk's ``$1``)
    is left alone, so the templates read as plain bash. ``$$`` is a literal ``$``.
    """

    delimiter = "$"
    flags = re.VERBOSE  # case-sensitive
    pattern = r"""
    \$(?:
      (?P<escaped>\$)
    | (?P<named>[a-z][a-z0-9_]*)
    | {(?P<braced>[a-z][a-z0-9_]*)}
    | (?P<invalid>(?!))
    )
    """


def _fill(template_name: str, values: Mapping[str, Any]) -> str:
    path = TEMPLATE_DIR / template_name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SubmitError(f"cannot read template {str(path)!r}: {exc}") from exc
    try:
        return JobTemplate(text).substitute({k: str(v) for k, v in values.items()})
    except KeyError as exc:
        raise SubmitError(f"template {str(path)!r} uses ${{{exc.args[0]}}}, which the renderer "
                          f"does not fill; known: {', '.join(sorted(values))}") from exc


# --------------------------------------------------------------------------- site copy


def _resolve_site(name: str, cwd: Path, spec_where: str) -> Path:
    """The site file for ``parsl_config``: a path (cwd, then repo root) or a bare name."""
    candidate = Path(name).expanduser()
    tries = [candidate] if candidate.is_absolute() else [cwd / candidate, REPO_ROOT / candidate]
    if "/" not in name and not candidate.suffix:
        tries.append(SITE_DIR / f"{name}.yaml")
    for path in tries:
        if path.is_file():
            return path.resolve()
    raise _err(spec_where, "parsl_config", name,
               f"site file not found (looked at {', '.join(str(p) for p in tries)})")


def _load_site_source(path: Path, spec: Spec) -> dict[str, Any]:
    """The spec's site file as written, once the harness's site schema accepts it
    (:func:`flight_parsl.execution.site.normalize_site`) and it can run inside the job's
    allocation.

    Raises:
        ConfigError: the site file is unreadable or breaks the site schema
            (``site file 'PATH': key 'KEY' = VALUE: PROBLEM``).
        SpecError: the site cannot run inside the job.
    """
    from flight_parsl.execution.site import normalize_site, read_site

    data, source = read_site(path)
    site = normalize_site(data, source)
    kind = site["provider"]["kind"]
    if kind != "local":
        raise _err(
            spec.where, "parsl_config", spec.parsl_config,
            f"its provider.kind is {kind!r}, so Parsl would submit a second batch job from inside "
            "this one. The jobs run the harness in their own allocation: use a site with "
            "provider.kind local and an srun (Slurm) or mpiexec (PBS) launcher, e.g. "
            "configs/parsl/expanse.yaml, jobs/sites/polaris.yaml or jobs/sites/perlmutter.yaml")
    acc = site["available_accelerators"]
    slots = acc if _is_int(acc) else (len(acc) if isinstance(acc, list) else None)
    if slots is not None and slots < spec.workers_per_node:
        raise _err(
            spec.where, "workers_per_node", spec.workers_per_node,
            f"the site {str(path)!r} pins one worker per accelerator (available_accelerators = "
            f"{acc!r}), so a node holds only {slots}; set workers_per_node to {slots} or "
            "available_accelerators to null")
    data = copy.deepcopy(dict(data))
    data["provider"] = data.get("provider") or {}
    return data


def _worker_nodes(nodes: int, spec: Spec) -> int:
    """Nodes of a job that host HTEX workers."""
    return nodes if spec.head_node_workers else nodes - 1


def _layout(nodes: int, spec: Spec) -> str:
    """One phrase saying how a job's nodes are used."""
    if spec.head_node_workers:
        return (f"{nodes} node{'s' if nodes > 1 else ''}, all hosting HTEX workers; the first "
                "also runs the coordinator")
    return (f"{nodes} nodes = 1 for the coordinator + {nodes - 1} worker "
            f"node{'s' if nodes > 2 else ''}")


def _site_copy_text(data: Mapping[str, Any], source: Path, job_name: str, nodes: int,
                    spec: Spec) -> str:
    site = copy.deepcopy(dict(data))
    worker_nodes = _worker_nodes(nodes, spec)
    site["max_workers_per_node"] = spec.workers_per_node
    site["provider"]["nodes_per_block"] = worker_nodes
    site["provider"]["worker_init"] = spec.worker_init
    header = (
        f"# Parsl site for job {job_name}: {_layout(nodes, spec)}.\n"
        f"# Generated by jobs/submit.py from {source} (see it for what each key means);\n"
        f"# changed here: provider.nodes_per_block = {worker_nodes} (the job's worker nodes),\n"
        f"# max_workers_per_node = {spec.workers_per_node} (spec workers_per_node),\n"
        "# provider.worker_init = the spec's worker_init.\n"
    )
    return header + yaml.safe_dump(site, sort_keys=False, default_flow_style=False)


def _check_site_text(text: str, spec: Spec) -> None:
    """Validate a job's site copy with the harness's site schema.

    Raises:
        SpecError: the copy breaks the site schema.
    """
    from flight_parsl.execution.site import normalize_site

    try:
        normalize_site(yaml.safe_load(text), "the job's copy of the site")
    except ConfigError as exc:
        raise _err(spec.where, "parsl_config", spec.parsl_config, f"the site does not validate: {exc}") from exc


# ----------------------------------------------------------------------------- render


@dataclass(frozen=True)
class Job:
    """One rendered job: its node count, worker counts, script and site copy."""

    name: str
    nodes: int
    workers: tuple[int, ...]
    dir: Path
    script_path: Path
    script: str
    site_path: Path
    site_text: str


def default_out_dir(now: float | None = None) -> Path:
    """``jobs/out/<YYYYmmdd-HHMMSS>`` (with a suffix if that exists already)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    out = JOBS_DIR / "out" / stamp
    n = 1
    while out.exists():
        n += 1
        out = JOBS_DIR / "out" / f"{stamp}-{n}"
    return out


def _redis_block(spec: Spec, job_dir: Path) -> str:
    if spec.redis_interface:
        iface = spec.redis_interface
        command = f"ip -4 addr show {iface} | awk '/inet /{{print $2}}' | cut -d/ -f1 | head -n 1"
        source = f"interface {iface}"
    else:
        command = "hostname -i | awk '{print $1}'"
        source = "hostname -i"
    return _fill("redis.sh.tmpl", {
        "redis_port": spec.redis_port,
        "redis_tls": int(spec.redis_tls),
        "redis_host_command": command,
        "redis_host_source": source,
        "redis_wait_s": REDIS_WAIT_S,
        "job_dir": job_dir,
    })


def _harness_command(spec: Spec, workers: Sequence[int], site_path: Path, results: Path) -> str:
    args = [
        "python", "-m", "flight_parsl.scale",
        "--workers", ",".join(str(w) for w in workers),
        "--model", ",".join(spec.models),
        "--transfer", ",".join(spec.transfers),
        "--trials", str(spec.trials),
        "--rounds", str(spec.rounds),
        "--train", "none",
        "--parsl-config", str(site_path),
        "--results", str(results),
    ]
    line = " ".join(shlex.quote(a) for a in args)
    if spec.uses_redis:
        line += " --redis $REDIS_HOST:$REDIS_PORT"
    if spec.extra_args:
        line += " " + " ".join(shlex.quote(a) for a in spec.extra_args)
    return line


def _directives(spec: Spec) -> str:
    lines = []
    if spec.scheduler == "slurm":
        for key in ("partition", "qos", "constraint"):
            value = getattr(spec, key)
            if value is not None:
                lines.append(f"#SBATCH --{key}={value}")
    lines.extend(spec.directives)
    return "".join(line + "\n" for line in lines)


def _safe_path(path: Path, what: str) -> Path:
    if re.search(r"[\s'\"$`\\]", str(path)):
        raise SubmitError(f"{what} {str(path)!r} has a space, quote, '$' or backslash, which "
                          "scheduler directives cannot hold; choose another --out-dir")
    return path


def render_jobs(spec: Spec, out_dir: str | Path, *, cwd: str | Path | None = None) -> list[Job]:
    """Render one job per node count (nothing is written or submitted).

    Args:
        spec: a validated spec.
        out_dir: where the job directories ``<out_dir>/<job_name>-n<nodes>/`` will go.
        cwd: the directory relative spec paths are relative to, and where the jobs will be
            submitted from (default: the current directory).

    Returns:
        The jobs, by node count.

    Raises:
        SpecError: the site file is missing or cannot run inside the job.
        ConfigError: the site file breaks the site schema (the message names the site file).
        SubmitError: a template or path problem.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    out = _safe_path(Path(out_dir).expanduser().absolute(), "output directory")
    site_source = _resolve_site(spec.parsl_config, base, spec.where)
    site_data = _load_site_source(site_source, spec)
    results = Path(spec.results).expanduser()
    results = _safe_path(results if results.is_absolute() else (base / results).absolute(),
                         "results path")
    template, _, _ = SCHEDULERS[spec.scheduler]

    jobs: list[Job] = []
    for nodes, workers in group_workers(spec.workers, spec.workers_per_node,
                                        spec.head_node_workers).items():
        name = f"{spec.job_name}-n{nodes}"
        job_dir = out / name
        site_path = job_dir / "site.yaml"
        script_path = job_dir / "job.sh"
        site_text = _site_copy_text(site_data, site_source, name, nodes, spec)
        values = {
            "account": spec.account,
            "queue": spec.queue or "",
            "filesystems": spec.filesystems or "",
            "nodes": nodes,
            "worker_nodes": _worker_nodes(nodes, spec),
            "layout": _layout(nodes, spec),
            "workers_per_node": spec.workers_per_node,
            "walltime": spec.walltime,
            "job_name": name,
            "job_dir": job_dir,
            "directives": _directives(spec),
            "spec_path": spec.source,
            "site_path": site_path,
            "workers_csv": ",".join(str(w) for w in workers),
            "worker_init": spec.worker_init,
            "redis_block": _redis_block(spec, job_dir) if spec.uses_redis else "",
            "harness_command": _harness_command(spec, workers, site_path, results),
        }
        script = _fill(template, values)
        jobs.append(Job(name, nodes, tuple(workers), job_dir, script_path, script, site_path,
                        site_text))
    if jobs:
        _check_site_text(jobs[0].site_text, spec)
    return jobs


def write_jobs(jobs: Sequence[Job]) -> None:
    """Write each job's directory: job.sh (executable) and site.yaml.

    Raises:
        SubmitError: a job directory exists already (it may hold a submitted job's logs).
    """
    for job in jobs:
        if job.dir.exists():
            raise SubmitError(f"job directory {str(job.dir)!r} exists already; "
                              "choose another --out-dir")
    for job in jobs:
        job.dir.mkdir(parents=True)
        job.site_path.write_text(job.site_text, encoding="utf-8")
        job.script_path.write_text(job.script, encoding="utf-8")
        job.script_path.chmod(0o755)


# ----------------------------------------------------------------------------- submit


def submit_command(scheduler: str) -> str:
    """``sbatch`` or ``qsub``."""
    return SCHEDULERS[scheduler][1]


def check_submit_command(scheduler: str) -> str:
    """The full path of the scheduler's submit command.

    Raises:
        SubmitError: it is not on PATH.
    """
    command = submit_command(scheduler)
    found = shutil.which(command)
    if found is None:
        raise SubmitError(
            f"'{command}' not found on PATH: cannot submit {scheduler} jobs from this machine "
            f"(run on the cluster's login node); --dry-run shows the job scripts without "
            f"submitting")
    return found


def _job_id(scheduler: str, stdout: str) -> str:
    text = stdout.strip()
    if scheduler == "slurm":
        m = re.search(r"Submitted batch job (\S+)", text)
        if m:
            return m.group(1)
    return text.splitlines()[-1].strip() if text else "?"


def submit_jobs(jobs: Sequence[Job], scheduler: str, *, cwd: str | Path | None = None,
                on_submit: Callable[[Job, str], None] | None = None) -> list[tuple[Job, str]]:
    """Run ``sbatch FILE`` / ``qsub FILE`` for each written job, from ``cwd``.

    Returns:
        (job, scheduler job id) for each job.

    Raises:
        SubmitError: the command is missing or refused a job (jobs before it stay submitted;
            the message lists them).
    """
    command = check_submit_command(scheduler)
    done: list[tuple[Job, str]] = []
    for job in jobs:
        try:
            proc = subprocess.run([command, str(job.script_path)], cwd=cwd, capture_output=True,
                                  text=True, check=False, env=os.environ.copy())
        except OSError as exc:
            proc = None
            problem = str(exc)
        else:
            problem = (proc.stderr or proc.stdout).strip() if proc.returncode else ""
        if proc is None or proc.returncode != 0:
            already = ", ".join(f"{j.name}={i}" for j, i in done) or "none"
            raise SubmitError(f"{submit_command(scheduler)} {job.script_path} failed"
                              f"{f' (exit {proc.returncode})' if proc else ''}: {problem}; "
                              f"submitted before it: {already}")
        job_id = _job_id(scheduler, proc.stdout)
        done.append((job, job_id))
        if on_submit is not None:
            on_submit(job, job_id)
    return done


def check_account(spec: Spec) -> None:
    """Refuse to submit with the placeholder account.

    Raises:
        SpecError: account is still ``YOUR_ACCOUNT``.
    """
    if spec.account == PLACEHOLDER_ACCOUNT:
        raise _err(spec.where, "account", spec.account, "edit the spec and set your allocation's "
                   "project before submitting (--dry-run works without it)")
