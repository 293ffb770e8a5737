#!/usr/bin/env bash
# Stop the one-node Slurm cluster that start.sh started: cancel its jobs, stop slurmd,
# slurmctld and munged (each by its pid file), remove the semaphores of worker pools Slurm
# killed and the /etc/slurm/slurm.conf symlink.
# Idempotent. Keeps $FP_SLURM_DIR (logs, jobcomp.log); `rm -rf` it to forget the history.
set -uo pipefail
DIR="${FP_SLURM_DIR:-/tmp/flight_parsl_slurm}"

stop_pid() {  # stop_pid NAME PIDFILE: SIGTERM, wait up to 10 s, then SIGKILL
    local name="$1" file="$2" pid
    [ -s "$file" ] || return 0
    pid="$(cat "$file")"
    kill -0 "$pid" 2>/dev/null || { rm -f "$file"; return 0; }
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    rm -f "$file"
    echo "stopped $name ($pid)"
}

if [ -s "$DIR/slurmctld.pid" ] && command -v scancel >/dev/null 2>&1; then
    timeout 10 scancel --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 1 30); do
        [ -z "$(timeout 5 squeue -h 2>/dev/null)" ] && break
        sleep 1
    done
fi
stop_pid slurmd "$DIR/slurmd.pid"
stop_pid slurmctld "$DIR/slurmctld.pid"
stop_pid munged "$DIR/munge/munged.pid"
rm -f "$DIR/munge/munged.pid"
# Worker pools killed with their blocks leave multiprocessing semaphores in /dev/shm.
python -m flight_parsl.execution.semaphores 2>/dev/null || true
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$DIR/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
fi
exit 0
