"""Flower baseline: the Flight weak-scaling workload on Flower, for side-by-side numbers.

The same debug workload as ``flight_parsl.scale --train none``: the reference
model (``build_model(reference_spec(name))`` under ``torch.manual_seed(0)``) as
numpy arrays in state_dict order, N clients that each return exactly the
parameters they received, Flower's FedAvg over all N clients, 1 round by default.
``--train local`` (simulation mode) trains for real instead: the workload of
``python -m flight_parsl.scale`` for the same flags (flight_parsl's data split,
seeded model, SGD settings and local training loop in each client), the global
model tested after every round (``rounds.csv``, summary.json ``test_acc``).

Two modes:

- ``simulation``: Flower's Simulation Runtime (``flwr.simulation.run_simulation``,
  Ray backend) with N virtual SuperNodes, one Ray actor each (``--client-cpus
  default``: Flower's own resources, 2 CPUs per client, so cpus // 2 actors);
- ``grpc``: a Flower server process and N client processes over loopback gRPC
  (``flwr.server.start_server`` / ``flwr.client.start_client``).

``python -m flight_parsl.baselines.flower --workers N --model M --mode MODE --out DIR``
or :func:`run_flower` runs one; ``DIR/summary.json`` holds the timestamps and
measurements (:mod:`flight_parsl.baselines.flower.runner` defines them) and
``--results PATH`` appends a row to a :mod:`flight_parsl.results.table`.

flwr is imported only by the child processes, so this package imports without
the ``flower`` extra (``pip install -e ".[flower]"``).
"""

from flight_parsl.baselines.flower.cli import main
from flight_parsl.baselines.flower.runner import FRAMEWORKS, MODES, FlowerInputError, run_flower

__all__ = ["FRAMEWORKS", "MODES", "FlowerInputError", "main", "run_flower"]
