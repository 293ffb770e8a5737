"""Run one experiment end to end and keep its run directory consistent.

Timestamps follow the weak-scaling artifact: ``start`` (the run begins),
``dfk_start_done`` (the executor is up), ``priming_done`` (a warm-up task came
back), ``end`` (the last round's aggregate is ready); summary.json derives
``start2end`` and ``prime2end`` from them, and splits start2end into the start-up
phases ``startup_phases`` (:mod:`flight_parsl.engine.startup`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from flight_parsl.config.experiment import ExperimentConfig
from flight_parsl.core.memory import PeakSampler
from flight_parsl.core.types import Workload
from flight_parsl.core import stopping
from flight_parsl.core.stopping import TeardownStack, deferred
from flight_parsl.engine.asynchronous import run_async
from flight_parsl.config.experiment import checkpoint_hash
from flight_parsl.engine.context import RunContext, compression, faults, prepare, workload
from flight_parsl.processes import leftovers
from flight_parsl.engine.decentralized import run_decentralized
from flight_parsl.engine import startup
from flight_parsl.engine.events import SlotClock
from flight_parsl.execution.links import describe_check
from flight_parsl.processes.multisite import RunSites, open_run_sites
from flight_parsl.processes.injector import FaultInjector, SlotCensus
from flight_parsl.engine.progress import Progress
from flight_parsl.engine.records import RunRecorder, default_run_dir
from flight_parsl.engine.sync import run_sync
from flight_parsl.execution.backends import (
    RELEASE_TIMEOUT, Backend, Warmup, block_jobs, open_backend, release, resolve_slots,
)
from flight_parsl.transfer import Transfer, open_transfer
from flight_parsl.transfer.state import ClientState, open_state


def idle_summary(clock: SlotClock) -> dict[str, float]:
    """Mean and standard deviation over slots of their idle percentage."""
    idle = list(clock.idle_percent().values())
    if not idle:
        return {}
    return {"idle_pct_mean": statistics.fmean(idle), "idle_pct_std": statistics.pstdev(idle)}


#: What a process's first ``torch.optim`` optimizer imports (its ``_disable_dynamo`` guard imports
#: ``torch._dynamo``: about 1.3 s of CPU, inside a slot's first training step otherwise). Named in the
#: warm-up, the workers' forkserver imports it once per node (:mod:`flight_parsl.execution.primed_pool`).
#: Only decentralized training (Adam, :mod:`flight_parsl.worker.peer_training`) builds one in a slot:
#: a client's SGD (:func:`flight_parsl.worker.training.train_local`) steps without ``torch.optim``.
OPTIMIZER_IMPORTS = ("torch._dynamo",)


def warm_modules(cfg: ExperimentConfig) -> tuple[str, ...]:
    """Modules the round's tasks import on a slot, imported during priming (and by the workers'
    forkserver, before the workers fork)."""
    modules: list[str] = []
    if cfg.train.mode == "local":
        modules.append("flight_parsl.worker.training")
    if cfg.mode == "decentralized":
        modules.append("flight_parsl.worker.peer_training")
        if cfg.train.mode == "local":
            modules += OPTIMIZER_IMPORTS
    if cfg.transfer.kind != "parsl":
        modules += ["proxystore.proxy", "proxystore.store", f"proxystore.connectors.{cfg.transfer.kind}"]
    return tuple(modules)


def _state(cfg: ExperimentConfig, transfer: Transfer, stack: ExitStack, placement: Any = None,
           run_dir: Path | None = None) -> ClientState | None:
    """The run's per-client state store, when some client keeps state; None otherwise. With a
    store per site (``transfer.per_site``) each site's clients keep theirs in their site's store,
    with a mirror at the site under ``run_dir`` that the checkpoint reads (no state crosses a link)."""
    if not cfg.train.keep_momentum and not cfg.transfer.error_feedback and cfg.mode != "decentralized":
        return None
    channels = getattr(transfer, "sites", None)
    if isinstance(channels, dict):  # SiteTransfer: label -> the site's channel
        from flight_parsl.transfer.persite import SiteState, site_mirrors
        from flight_parsl.transfer.state import MirroredState

        mirrors = stack.enter_context(site_mirrors(run_dir, list(channels))) if run_dir is not None else {}
        stores: dict[str, ClientState] = {}
        for label, channel in channels.items():
            store = _state(cfg, channel, stack)
            assert store is not None
            stores[label] = MirroredState(store, mirrors[label]) if label in mirrors else store
        return SiteState(stores, placement)
    where = getattr(transfer, "where", None)
    if transfer.kind == "redis" and where:
        from flight_parsl.transfer.redis_server import RedisAddress

        address = RedisAddress.parse(where)
        connector = getattr(getattr(transfer, "store", None), "connector", None)
        return stack.enter_context(open_state(  # the run's user, under the run's key prefix
            redis=(address.host, address.port), password=getattr(connector, "password", None),
            username=getattr(connector, "username", None), prefix=getattr(connector, "prefix", None),
            tls=bool(getattr(connector, "tls", False)), ca=getattr(connector, "ca", None),
            admin=getattr(transfer, "admin", None),
        ))
    return stack.enter_context(open_state(directory=cfg.transfer.file_dir))


def _keep_users(sites: RunSites, transfer: Transfer) -> None:
    """The run's ACL user on each managed server of ``sites`` (the bridge's, or each site's own),
    which the channel made as on a server given by address, is registered with the server, so a
    restart after ``faults.redis_stop`` makes it again."""
    channels = getattr(transfer, "sites", None)
    pairs = (list(sites.site_server().items()) if isinstance(channels, dict) else [("", sites.server)])
    for label, server in pairs:
        channel = channels[label] if isinstance(channels, dict) else transfer
        rules = getattr(channel, "user_rules", None)
        if server is not None and rules:
            server.add_user(rules)


def _service_host(cfg: ExperimentConfig) -> str:
    """The address a run's managed services listen on: loopback, unless the run's one Parsl site
    has workers on other nodes (then the address they reach the interchange at)."""
    if cfg.backend != "parsl" or cfg.sites.files:
        return "127.0.0.1"
    from flight_parsl.execution.site import load_site, service_address

    return service_address(load_site(cfg.parsl_config))


def run_experiment(
    cfg: ExperimentConfig,
    progress: Progress | None = None,
    backend: Backend | None = None,
    sites: RunSites | None = None,
    resume: bool = False,
) -> Path:
    """Run ``cfg``; return its run directory.

    With ``resume`` the run continues the run directory ``cfg.out`` from its
    checkpoint (the start, when no round finished), appending to its tables.

    With ``backend`` the run reuses an executor that is already up (a sweep reusing
    one DataFlowKernel per worker count): ``dfk_start_done`` then equals ``start``
    and summary.json says ``dfk_reused``. On any error the run directory keeps
    every finished row, summary.json says ``failed`` (or ``interrupted``) with the
    error, and the error is re-raised. ``sites`` (several sites, opened by the caller
    with :func:`~flight_parsl.processes.multisite.open_run_sites`) and a ``backend`` opened on
    them let many runs share one virtual network and one DataFlowKernel.
    """
    process_start = startup.take_process_start()  # the command line's first run: its interpreter and imports
    progress = progress or Progress(cfg.rounds)
    out = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    cfg.out = str(out)  # config.yaml names its own directory: what --resume continues
    point = None
    tied_to = checkpoint_hash(cfg)  # parsed once: the loops read it from the context
    if resume:
        from flight_parsl.engine.checkpoint import load

        point = load(out, tied_to)
        cleaned = leftovers.clean(out)
        if cleaned:
            progress.say(f"removed what the stopped run left: {', '.join(cleaned)}")
    recorder = RunRecorder(out, cfg, resume_round=(point.next_round if point else 0) if resume else None)
    progress.say(f"run directory: {out}")
    try:
        # Opening and closing what lives outside the coordinator (a redis-server, the executor, the
        # warm-up's directory, leftovers.json) is deferred()-shielded: a stop signal waits for that
        # step to end, so nothing is left half started or half removed.
        with PeakSampler() as memory, TeardownStack() as stack:
            stack.callback(leftovers.forget, out)  # unwound last: an orderly stop leaves nothing behind
            work = workload(cfg)  # torch-free; bad data fails before anything starts
            t = cfg.transfer
            slots = resolve_slots(cfg.slots, cfg.workers)
            # Unwound after the channel closes: the slots of a reused executor let go of the run's store.
            ending = stack.enter_context(ExitStack())
            # Sites, their virtual network and a Redis on it (several sites) open first.
            if sites is None:
                with deferred():  # namespaces and a Redis on their bridge: made whole, or not at all
                    sites = stack.enter_context(open_run_sites(cfg))
            if sites is not None and sites.links:  # each shaped link, asked and measured
                recorder.update(links=sites.links)
                progress.say(describe_check(sites.links))
            bridge = sites is not None and sites.redis is not None
            redis = sites.redis if sites is not None and bridge else t.redis
            password = sites.redis_password if sites is not None and bridge else None
            ca = sites.redis_ca if sites is not None and bridge else None  # a bridge Redis's own CA (TLS)
            # The channel opens next: an unreachable Redis fails before Parsl starts. A managed Redis
            # listens where the site's workers reach this host (a cluster's head-node address).
            host = _service_host(cfg) if t.kind == "redis" and redis is None else "127.0.0.1"
            with deferred():
                transfer = stack.enter_context(
                    open_transfer(t.kind, redis, t.file_dir, t.cache_size, t.redis_timeout, password, host,
                                  t.redis_tls, ca, sites.site_redis if sites is not None else None)
                )
                if bridge and hasattr(transfer, "shared"):
                    transfer.shared = False  # the sites' own server: its keys go with it
                if sites is not None and sites.site_servers and hasattr(transfer, "servers"):
                    transfer.servers = sites.site_servers  # a store per site: listed in leftovers.json
                if sites is not None:  # a restart (faults.redis_stop) of the sites' servers makes the run's user again
                    _keep_users(sites, transfer)
                leftovers.note(out, transfer, None, sites=sites)  # a SIGKILL from here on leaves a list to clean up after
                state = _state(cfg, transfer, stack, sites.placement if sites is not None else None, out)
            with deferred():
                active = stack.enter_context(
                    _backend(cfg, slots, out, recorder, backend, sites, prime=(warm_modules(cfg), work[0]))
                )
                # the interchange; the worker pools once the warm-up found them
                leftovers.note(out, transfer, active, state=state, sites=sites)
            with deferred():
                warmup = Warmup(active, slots, warm_modules(cfg), work[0], progress.slots_ready)
                stack.callback(warmup.close)
            exp = prepare(cfg, work)  # torch and the initial model, while the slots start
            recorder.update(
                model=exp.workload.model.name,
                num_parameters=exp.num_parameters,
                model_bytes=exp.initial.nbytes,
                workers=cfg.workers,
                backend=cfg.backend,
                transfer=cfg.transfer.kind,
                executor=active.description,
            )
            progress.say(f"{active.description}; model {exp.workload.model.name} ({exp.num_parameters:,} parameters)")
            primed = warmup.wait()
            slots = active.slots or len(primed)
            recorder.mark("priming_done")
            recorder.update(slots=slots, primed_slots=len(primed), slot_pids=sorted(f"{h}:{p}" for h, p in primed),
                            block_jobs=block_jobs(active))
            recorder.primed(primed)
            if sites is not None and sites.network is not None:
                recorder.watch_links(sites.network.link_bytes)  # rounds.csv link_bytes, from here on
            late: list[Future[object]] = []  # work still out when its round closed
            if backend is not None and (transfer.store_name is not None or state is not None):
                ending.push(_release_slots(active, slots, transfer.store_name, state, recorder, late))
            if cfg.backend != "thread" and len(primed) < slots:
                progress.say(f"warning: the warm-up reached {len(primed)} of {slots} slots")
            census = SlotCensus(slots, primed if cfg.backend == "parsl" else set())
            with deferred():
                injector = FaultInjector(  # the run's managed server (its own, or the sites' bridge's), or the sites'
                    cfg, out, census, getattr(transfer, "server", None) or (sites.server if sites is not None else None),
                    sites.site_server() if sites is not None else None)
                stack.callback(injector.close)
                leftovers.note(out, transfer, active, set(census.parent.values()), state, sites)
            ctx = RunContext(cfg, exp, active.executor, transfer, recorder, progress, slots, cfg.round, state,
                             faults(cfg), injector, point, late,
                             placement=sites.placement if sites is not None else None, checkpoint_hash=tied_to,
                             compression=compression(cfg))
            loops = {"async": run_async, "decentralized": run_decentralized}
            result = loops.get(cfg.mode, run_sync)(ctx)
            if "end" not in recorder.summary:
                recorder.mark("end")
        last = result.rounds[-1] if result.rounds else None
        processes: dict[tuple[str, int], float] = {}  # threads of one process share its memory
        for (host, pid, _), peak in result.slot_peak_rss_mb.items():
            processes[host, pid] = max(processes.get((host, pid), 0.0), peak)
        if last is not None:  # a resumed run that had nothing left to do keeps the earlier figures
            recorder.update(
                final_test_loss=None if math.isnan(last.test_loss) else last.test_loss,
                final_test_acc=None if math.isnan(last.test_acc) else last.test_acc,
                round_makespan_s=sum(r.makespan_s for r in result.rounds) / len(result.rounds),
            )
        recorder.update(
            peak_rss_mb_coordinator=memory.peak_mb,
            peak_machine_mb=memory.peak_machine_mb,
            peak_rss_mb_worker=max(processes.values(), default=0.0),
            peak_rss_mb_workers_total=sum(processes.values()),
            **idle_summary(result.clock),
        )
        if sites is not None and sites.link_bytes:
            recorder.update(site_links=sites.link_bytes)
        recorder.update(block_jobs=block_jobs(active))  # blocks started during the run too
        phases = startup.record(recorder.summary, active.marks, warmup.timings, process_start)
        stopping.check()  # a stop signal whose exception Python dropped: the run did not complete
        recorder.finish("completed")
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as core.errors.Terminated (its text names the signal)
        recorder.finish("interrupted", str(exc) or "interrupted by the user")
        raise
    except BaseException as exc:
        recorder.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    s = recorder.summary
    progress.say(f"done: start2end {s['start2end']:.2f}s  prime2end {s['prime2end']:.2f}s  -> {out}")
    if any(v is not None for k, v in phases.items() if k != "rounds"):
        progress.say(f"start-up: {startup.describe(phases)}")
    return out


ExitCallback = Callable[[type[BaseException] | None, BaseException | None, TracebackType | None], bool]


def _release_slots(
    backend: Backend, slots: int, store: str | None, state: ClientState | None, recorder: RunRecorder,
    late: list[Future[object]] | None = None,
) -> ExitCallback:
    """An exit callback: after a completed run, the slots of an executor that outlives it let go of
    its store and client state (see :func:`~flight_parsl.execution.backends.release`). After a
    failure a sweep restarts the executor, which may be broken, so nothing is sent to it.
    summary.json records ``released_slots`` and each slot's RSS after (``released_rss_mb``)."""

    def on_exit(exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc_type is None:
            # late work still running would resolve the run's model after the store is gone (and a
            # file channel's connector would recreate its directory): let it end first
            wait(late or [], timeout=RELEASE_TIMEOUT)
            done = release(backend, slots, store, state)
            recorder.update(
                released_slots=len(done), released_rss_mb={f"{r.host}:{r.pid}": round(r.rss_mb, 1) for r in done}
            )
        return False

    return on_exit


@contextmanager
def _backend(
    cfg: ExperimentConfig,
    slots: int,
    out: Path,
    recorder: RunRecorder,
    backend: Backend | None,
    sites: RunSites | None = None,
    prime: tuple[tuple[str, ...], Workload | None] | None = None,
) -> Iterator[Backend]:
    """The given backend, or a fresh one for this run (whose late blocks prime with ``prime``).

    A given backend's first run takes the backend's own start-up times; later runs
    record ``dfk_start_done`` = now and ``dfk_reused``.
    """
    if sites is not None:
        recorder.update(sites=sites.summary())
    if sites is not None and (backend is None or not hasattr(backend.executor, "submit_to")):
        # several sites, and no executor over them given: a DataFlowKernel of this run's own
        from flight_parsl.execution.sites import open_sites_backend

        with open_sites_backend(
            sites.sites, sites.slots, out, sites.network, on_started=lambda: recorder.mark("dfk_start_done")
        ) as fresh:
            yield fresh
        return
    if backend is None:
        with open_backend(
            cfg.backend, slots, out, cfg.parsl_config, on_started=lambda: recorder.mark("dfk_start_done"),
            prime=prime,
        ) as fresh:
            yield fresh
        return
    if backend.runs == 0:
        recorder.mark("start", backend.started_at)
        recorder.mark("dfk_start_done", backend.ready_at)
    else:
        recorder.mark("dfk_start_done")
    recorder.update(dfk_reused=backend.runs > 0)
    backend.runs += 1
    yield backend
