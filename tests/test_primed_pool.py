"""A site with a ``strategy`` starts every block's worker pool through
:mod:`flight_parsl.execution.primed_pool`: each worker primes as it starts and the pool registers
with the interchange only then. The runs with a late block (a second block, a replacement after a
walltime) are in tests/test_local_cluster.py.
"""

from __future__ import annotations

from pathlib import Path

from flight_parsl.execution.primed_pool import launch_command
from flight_parsl.execution.site import build_parsl_config, load_site


def test_only_a_site_with_a_strategy_starts_primed_pools(tmp_path: Path) -> None:
    site = load_site(None)
    assert "primed_pool" not in build_parsl_config(site, 2, tmp_path, tmp_path / "prime.pkl").executors[0].launch_cmd
    site["strategy"] = "simple"
    assert "primed_pool" not in build_parsl_config(site, 2, tmp_path).executors[0].launch_cmd  # no spec: as Parsl
    cmd = build_parsl_config(site, 2, tmp_path, tmp_path / "prime.pkl").executors[0].launch_cmd
    assert cmd.startswith(f"python3 -m flight_parsl.execution.primed_pool --prime-spec {tmp_path / 'prime.pkl'} ")
    assert "--block_id={{block_id}}" in cmd and "process_worker_pool.py" not in cmd


def test_launch_command_refuses_a_command_it_does_not_know() -> None:
    try:
        launch_command("spec", "my_pool.sh --block_id={block_id}")
    except ValueError as exc:
        assert "does not start process_worker_pool.py" in str(exc)
    else:
        raise AssertionError("no error")
