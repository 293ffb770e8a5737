"""Run one experiment end to end and keep its run directory consistent.

Timestamps follow the weak-scaling artifact: ``start`` (the run begins),
``dfk_start_done`` (the executor is up), ``priming_done`` (a warm-up task came
back), ``end`` (the last round's aggregate is ready); summary.json derives
``start2end`` and ``prime2end`` from them.
"""

from __future__ import annotations

import math
from pathlib import Path

from flight_parsl.config import ExperimentConfig
from flight_parsl.engine import run_sync
from flight_parsl.executors import open_backend, prime
from flight_parsl.experiment import prepare
from flight_parsl.progress import Progress
from flight_parsl.results import RunRecorder, default_run_dir
from flight_parsl.tasks import peak_rss_mb
from flight_parsl.transfer import open_transfer


def warm_modules(cfg: ExperimentConfig) -> tuple[str, ...]:
    """Modules the round's tasks import on a worker, imported during priming."""
    modules: list[str] = []
    if cfg.train.mode == "local":
        modules.append("flight_parsl.training")
    if cfg.transfer.kind != "parsl":
        modules += ["proxystore.proxy", "proxystore.store", f"proxystore.connectors.{cfg.transfer.kind}"]
    return tuple(modules)


def run_experiment(cfg: ExperimentConfig, progress: Progress | None = None) -> Path:
    """Run ``cfg``; return its run directory.

    On any error the run directory keeps every finished row, and summary.json
    says ``failed`` (or ``interrupted``) with the error; the error is re-raised.
    """
    progress = progress or Progress(cfg.rounds)
    out = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    recorder = RunRecorder(out, cfg)
    progress.say(f"run directory: {out}")
    try:
        exp = prepare(cfg)
        recorder.update(
            model=exp.workload.model.name,
            num_parameters=exp.num_parameters,
            model_bytes=exp.initial.nbytes,
            workers=cfg.workers,
            backend=cfg.backend,
            transfer=cfg.transfer.kind,
        )
        t = cfg.transfer
        # The channel opens first: an unreachable Redis fails before Parsl starts.
        with open_transfer(t.kind, t.redis, t.file_dir, t.cache_size) as transfer, open_backend(
            cfg.backend, cfg.workers, out, cfg.parsl_config, on_started=lambda: recorder.mark("dfk_start_done")
        ) as backend:
            recorder.update(executor=backend.description)
            progress.say(f"{backend.description}; model {exp.workload.model.name} ({exp.num_parameters:,} parameters)")
            primed = prime(backend, cfg.workers, warm_modules(cfg))
            recorder.mark("priming_done")
            recorder.update(primed_workers=len(primed))
            final, rounds = run_sync(
                exp, backend.executor, transfer, recorder, progress, cfg.workers, cfg.rounds, cfg.seed, cfg.round_timeout
            )
            recorder.mark("end")
        last = rounds[-1]
        recorder.update(
            final_test_loss=None if math.isnan(last.test_loss) else last.test_loss,
            final_test_acc=None if math.isnan(last.test_acc) else last.test_acc,
            peak_rss_mb_coordinator=peak_rss_mb(),
            peak_rss_mb_worker=max(r.peak_worker_rss_mb for r in rounds),
        )
        recorder.finish("completed")
    except KeyboardInterrupt:
        recorder.finish("interrupted", "interrupted by the user")
        raise
    except BaseException as exc:
        recorder.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    s = recorder.summary
    progress.say(f"done: start2end {s['start2end']:.2f}s  prime2end {s['prime2end']:.2f}s  -> {out}")
    return out
