"""The batch job a run executes in: its scheduler, job id and node list, read from the environment.

Slurm sets ``SLURM_JOB_ID`` and ``SLURM_JOB_NODELIST`` (a compressed host list such as
``n[01-04]``); PBS sets ``PBS_JOBID`` and ``PBS_NODEFILE`` (one line per rank). The PBS job
script of ``jobs/`` points ``PBS_NODEFILE`` at the worker nodes only and keeps the job's own
file in ``FLIGHT_PARSL_JOB_NODEFILE``. Outside a batch job every field is empty.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["JOB_FIELDS", "batch_job_info"]

#: Keys :func:`batch_job_info` returns (summary.json fields and results-table columns).
JOB_FIELDS = ("job_id", "job_nodes")


def _pbs_nodes(path: str) -> str:
    """Unique host names of a PBS node file, in order, comma separated ("" if unreadable)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").split()
    except OSError:
        return ""
    return ",".join(dict.fromkeys(line.strip() for line in lines if line.strip()))


def batch_job_info(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{"job_id": ..., "job_nodes": ...}`` of the Slurm or PBS job this process runs in.

    Args:
        env: the environment to read (default ``os.environ``).

    Returns:
        Both keys, empty strings outside a batch job.
    """
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_ID"):
        return {"job_id": env["SLURM_JOB_ID"],
                "job_nodes": env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")}
    if env.get("PBS_JOBID"):
        nodefile = env.get("FLIGHT_PARSL_JOB_NODEFILE") or env.get("PBS_NODEFILE", "")
        return {"job_id": env["PBS_JOBID"], "job_nodes": _pbs_nodes(nodefile) if nodefile else ""}
    return {"job_id": "", "job_nodes": ""}
