"""Baselines: other FL frameworks run on flight_parsl's workloads, for side-by-side numbers.

Each baseline appends rows to the shared results table
(:mod:`flight_parsl.results.table`) with the same columns as flight_parsl's own
sweeps. Their framework packages are optional extras and are imported only when
a baseline runs, so this package imports without them.

- :mod:`flight_parsl.baselines.flower`: Flower (``pip install -e ".[flower]"``),
  simulation engine (Ray) or a gRPC server with client processes.
"""
