#!/usr/bin/env bash
# Stop the Slurm cluster that start.sh started: cancel its jobs, stop slurmd (every node's, for a
# cluster started with --nodes K), slurmctld and munged (each by its pid file), remove the nodes'
# namespaces, links and bridge, the semaphores of worker pools Slurm killed and the
# /etc/slurm/slurm.conf symlink. Idempotent, whatever state the cluster is in.
# Idempotent. Keeps $FP_SLURM_DIR (logs, jobcomp.log); `rm -rf` it to forget the history.
set -uo pipefail
DIR="${FP_SLURM_DIR:-/tmp/flight_parsl_slurm}"
TAG="${FP_SLURM_TAG:-fp}"
export SLURM_CONF="$DIR/slurm.conf"

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
for file in "$DIR"/slurmd-node*.pid; do  # the compute nodes of a cluster started with --nodes K
    [ -e "$file" ] || continue
    node="${file##*/slurmd-}"; stop_pid "slurmd on ${node%.pid}" "$file"
done
stop_pid slurmctld "$DIR/slurmctld.pid"
stop_pid munged "$DIR/munge/munged.pid"
rm -f "$DIR/munge/munged.pid"
stop_pid "the nodes' delay line" "$DIR/delayline.pid"  # start.sh --link without netem; its devices go with it
# The nodes' namespaces (every process still inside one is killed first), their links and the bridge.
for ns in $(ip netns list 2>/dev/null | awk -v p="^${TAG}node[0-9]+$" '$1 ~ p {print $1}'); do
    pids="$(ip netns pids "$ns" 2>/dev/null)"
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null
    ip netns delete "$ns" 2>/dev/null && echo "removed node namespace $ns"
done
for link in $(ip -o link show 2>/dev/null | awk -F': ' -v p="^${TAG}n[0-9]+@" '$2 ~ p {sub(/@.*/, "", $2); print $2}'); do
    ip link delete "$link" 2>/dev/null
done
ip link show "${TAG}slurm0" >/dev/null 2>&1 && ip link delete "${TAG}slurm0" && echo "removed bridge ${TAG}slurm0"
# Worker pools killed with their blocks leave multiprocessing semaphores in /dev/shm.
python -m flight_parsl.execution.semaphores 2>/dev/null || true
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$DIR/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
fi
exit 0
