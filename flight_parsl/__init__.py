"""flight_parsl: federated learning on Parsl, from a laptop to PBS Pro and Slurm clusters.

The package root stays light: it must not import torch, because workers of a
no-training ("debug") round import ``flight_parsl.worker.tasks`` and nothing more.
"""

__version__ = "0.1.0"
