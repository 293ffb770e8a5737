"""What a run starts, watches and stops outside its round loops.

The round loops (:mod:`flight_parsl.engine`) plan, submit and fold; they never start,
signal or clean up a process. Everything that does lives here, so that the loops stay
about rounds and one place answers "what did this run leave running, and who stops it":

- :mod:`~flight_parsl.processes.injector`: the census of the run's worker processes
  (:class:`~flight_parsl.processes.injector.SlotCensus`: which pids are the run's slots,
  which are alive, which one a ``WorkerLost`` names) and the coordinator-side faults
  that SIGKILL them or the managed redis-server (``faults.csv``).
- :mod:`~flight_parsl.processes.leftovers`: the list of processes and directories a run
  opened (``leftovers.json``), and their removal after a coordinator that was killed
  without unwinding (``--resume``, ``python -m flight_parsl.cleanup RUN_DIR``).
- :mod:`~flight_parsl.processes.batch_job`: the Slurm / PBS job the run executes in.
- :mod:`~flight_parsl.processes.multisite`: a several-sites run's sites, their virtual
  network (namespaces) and the managed redis-server on its bridge, opened before the
  executor and closed after it.

Why a package of its own, and not ``execution``: ``execution`` builds executors and
their slots from site descriptions and is used by sweeps that never run a round;
these modules act on a *run* (its run directory, its config, its placement of
clients) and on processes the executor does not own. ``multisite`` sits here rather
than in ``execution`` for the same reason: it places a run's clients
(:mod:`flight_parsl.engine.placement`) and owns the lifetime of what it opened for
that run. The processes a backend starts itself (HTEX managers, the interchange,
the virtual hosts of :mod:`flight_parsl.execution.netns`) and the transfer's
:class:`~flight_parsl.transfer.redis_server.ManagedRedis` stay with their owners;
this package records and stops them only on a run's behalf.
"""
