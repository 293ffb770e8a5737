"""Named semaphores that worker pools killed by a batch scheduler leave in /dev/shm.

Parsl's worker pool makes multiprocessing queues and locks, whose POSIX named
semaphores (``/dev/shm/sem.mp-*``) Python's resource tracker removes when the pool
ends. When Slurm cancels a block it kills every process of the step, the tracker
included, and the semaphores stay. A live semaphore is mapped by every process that
uses it, so one that no process maps is an orphan: nothing can reach it any more but
a later ``sem_open`` of its random name.

``python -m flight_parsl.execution.semaphores`` removes the orphans (jobs/local_slurm/stop.sh
runs it); ``--dry-run`` only lists them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SHM = Path("/dev/shm")
PATTERN = "sem.mp-*"


def mapped_inodes(proc: Path = Path("/proc")) -> set[int]:
    """Inodes of the /dev/shm files some live process maps (all processes this user can read)."""
    inodes: set[int] = set()
    for maps in proc.glob("[0-9]*/maps"):
        try:
            lines = maps.read_text().splitlines()
        except OSError:  # the process ended, or is not ours to read
            continue
        for line in lines:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(str(SHM)):
                inodes.add(int(fields[4]))
    return inodes


def orphaned(directory: Path = SHM, proc: Path = Path("/proc")) -> list[Path]:
    """The multiprocessing semaphores in ``directory`` that no live process maps."""
    live = mapped_inodes(proc)
    out = []
    for path in sorted(directory.glob(PATTERN)):
        try:
            if path.stat().st_ino not in live:
                out.append(path)
        except FileNotFoundError:  # removed meanwhile by its owner
            continue
    return out


def remove_orphaned(directory: Path = SHM) -> list[Path]:
    """Remove the orphaned semaphores; returns those removed."""
    removed = []
    for path in orphaned(directory):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            continue
    return removed


def main(argv: list[str] | None = None) -> int:
    """Remove (or with --dry-run list) orphaned multiprocessing semaphores."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="only list them")
    args = parser.parse_args(argv)
    paths = orphaned() if args.dry_run else remove_orphaned()
    verb = "orphaned" if args.dry_run else "removed"
    print(f"{len(paths)} {verb} semaphores in {SHM}" + "".join(f"\n  {p.name}" for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
