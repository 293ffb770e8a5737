"""flight_parsl: federated learning on Parsl, from a laptop to PBS Pro and Slurm clusters.

Four words carry the design. A *client* is a logical FL participant (an id, a
data shard, optional state that persists across rounds); a run has 1 to 10^5+.
A *slot* is one worker process (an HTEX worker). A *task* runs one or more
clients of one round on one slot and, for a linear strategy, folds them into one
partial before it returns. A *plan* is a round's clients packed into tasks; the
round policy (deadline, quorum, retries) decides when the round closes, and
failures are outcomes handed to the strategy.

Subpackages, coordinator side first:

- ``config``: the experiment config; ``cli``: ``python -m flight_parsl.scale``, sweeps;
  ``cleanup``: ``python -m flight_parsl.cleanup RUN_DIR``, what a killed run left.
- ``engine``: the sync, async and decentralized loops and what they share (``engine.outcomes``),
  the planner, the completion queue, the run context, the run directory and its tables
  (``engine.records``), the runner.
- ``execution``: Parsl / thread / process backends and their slots, site YAML.
- ``processes``: what a run starts, watches and stops outside its round loops: the census of
  its worker processes and the injected faults that kill them, the leftovers a killed
  coordinator leaves, the batch job, a several-sites run's network. Kept out of ``engine`` so
  that the loops never signal a process, and out of ``execution`` because it acts on a run.
- ``topology``: trees, the communication-cost model and peer graphs.
- ``fl``: strategies (one hook per step), aggregation, sampling, the round policy.
- ``transfer``: how weights travel (in the task, or through ProxyStore), client state.
- ``worker``: the task bodies that run on slots; imports only ``core``, ``fl``,
  ``transfer``, ``data`` and ``models`` (a test checks it).
- ``core``: types both sides share, and how a stop signal is raised or waits
  (``core.stopping``); ``data``, ``models``: datasets and models.

The public API (:mod:`flight_parsl.api`) is reachable from the root:
``flight_parsl.run``, ``flight_parsl.sweep``, ``flight_parsl.load_run``, ``flight_parsl.Pool``,
``flight_parsl.RunResult`` and the errors. Public modules besides it: ``config`` (the
experiment schema), ``results``, ``models``, ``data``, ``topology``, ``baselines``; the others
(``engine``, ``execution``, ``worker``, ``transfer``, ``cli``, ``fl``, ``core``) are internal.

The package root stays light: it must not import torch, because slots of a
no-training ("debug") round import ``flight_parsl.worker.tasks`` and nothing more. The API
is loaded on first use (a module ``__getattr__``), so ``import flight_parsl`` imports neither
torch nor parsl.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: Names the root hands out from flight_parsl.api, loaded on first use.
_API = (
    "run", "sweep", "load_run", "load_config", "Pool", "RunResult", "describe", "check", "client_slowdowns",
    "initial_model", "initial_metrics", "FlightParslError", "ConfigError", "DataError", "ExecutorError",
    "TransferError", "TaskError", "RoundError",
)

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from flight_parsl import api

        return getattr(api, name)
    raise AttributeError(f"module 'flight_parsl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
