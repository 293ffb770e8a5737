"""Render and submit the weak-scaling batch jobs of a sweep spec.

Usage (from the repository root):

    python jobs/submit.py jobs/specs/expanse_scaling.yaml --dry-run     # print, submit nothing
    python jobs/submit.py jobs/specs/expanse_scaling.yaml               # write + sbatch/qsub

One job per node count (1 coordinator node + ceil(workers / workers_per_node) worker
nodes); each runs one harness sweep over its worker counts. See jobs/README.md.

Exit status: 0 done, 1 writing or submitting failed (e.g. no sbatch/qsub here), 2 the spec,
its site file or the command line is wrong (one line ``error: job spec 'PATH': key ...``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `jobs` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flight_parsl.core.errors import ConfigError  # noqa: E402
from jobs.render import (  # noqa: E402
    SubmitError,
    check_account,
    check_submit_command,
    default_out_dir,
    load_spec,
    render_jobs,
    submit_jobs,
    write_jobs,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python jobs/submit.py",
        description="Render one PBS/Slurm job per node count from a sweep spec and submit them.",
    )
    p.add_argument("spec", help="sweep spec YAML (see jobs/specs/ and jobs/README.md)")
    p.add_argument("--dry-run", action="store_true",
                   help="print every rendered script and site copy; write and submit nothing")
    p.add_argument("--out-dir", help="where to write the job directories "
                   "(default jobs/out/<timestamp>/)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = load_spec(args.spec)
        out_dir = Path(args.out_dir) if args.out_dir else default_out_dir()
        jobs = render_jobs(spec, out_dir)
        if args.dry_run:
            for job in jobs:
                print(f"# ==> {job.script_path}")
                print(job.script, end="" if job.script.endswith("\n") else "\n")
                print(f"# ==> {job.site_path}")
                print(job.site_text, end="" if job.site_text.endswith("\n") else "\n")
            print(f"dry run: {len(jobs)} {spec.scheduler} job(s) rendered "
                  f"({', '.join(f'{j.name}: {j.nodes} nodes' for j in jobs)}); "
                  "nothing written, nothing submitted", file=sys.stderr)
            return 0
        check_account(spec)
        check_submit_command(spec.scheduler)
        write_jobs(jobs)
        print(f"wrote {len(jobs)} job(s) under {out_dir}")

        record = out_dir / "submitted.tsv"

        def report(job, job_id: str) -> None:
            print(f"{job.name}: {job.nodes} nodes, workers "
                  f"{','.join(str(w) for w in job.workers)} -> job {job_id}", flush=True)
            with record.open("a", encoding="utf-8") as f:
                f.write(f"{job.name}\t{job.nodes}\t{job_id}\t{job.script_path}\n")

        submit_jobs(jobs, spec.scheduler, on_submit=report)
    except ConfigError as exc:  # a bad spec (SpecError) or a bad site file it names
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SubmitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
