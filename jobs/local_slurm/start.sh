#!/usr/bin/env bash
# Start a one-node Slurm cluster on this host: munged, slurmctld and slurmd, all bound to this
# host, for the tests and for trying jobs/ without a cluster. Idempotent: a cluster already up
# is left as it is. Needs root (it installs packages and runs the daemons as root).
#
#   sudo jobs/local_slurm/start.sh        # install what is missing, write slurm.conf, start
#   sinfo; sbatch ...; sacct -c           # use it (sacct -c reads the job completion log)
#   sudo jobs/local_slurm/stop.sh         # stop every daemon it started
#
# Everything it writes lives under $FP_SLURM_DIR (default /tmp/flight_parsl_slurm): slurm.conf,
# the daemons' state, pid files and logs, and jobcomp.log (the job history). /etc/slurm/slurm.conf
# is a symlink to that slurm.conf, so sinfo/sbatch/squeue/scancel/sacct need no SLURM_CONF.
# No systemd, cgroups or slurmdbd: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none,
# JobCompType=jobcomp/filetxt.
set -euo pipefail
DIR="${FP_SLURM_DIR:-/tmp/flight_parsl_slurm}"
WAIT_S="${FP_SLURM_WAIT_S:-60}"
CONF_LINK=/etc/slurm/slurm.conf

if [ "$(id -u)" != 0 ]; then
    echo "error: $0 must run as root (it installs slurm-wlm/munge and starts their daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    echo "installing slurm-wlm and munge ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" \
        && sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
    echo "local Slurm already up ($DIR)"
    exit 0
fi

mkdir -p "$DIR/ctld" "$DIR/spool" "$DIR/log" "$DIR/munge"
chmod 755 "$DIR"

# ------------------------------------------------------------------------- munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    chmod 755 /run/munge
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    else
        munged --force --pid-file=/run/munge/munged.pid
    fi
    ln -sf /run/munge/munged.pid "$DIR/munge/munged.pid"
    for _ in $(seq 1 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.2
    done
    munge -n </dev/null | unmunge >/dev/null || { echo "error: munged does not answer" >&2; exit 1; }
fi

# --------------------------------------------------------------------- slurm.conf
HOST="$(hostname -s)"
# This host's real CPUs and memory as slurmd sees them (slurmd -C), less 1 GB for the system.
HW="$(slurmd -C | head -n 1)"
CPUS="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$HW")"
MEM="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")"
MEM=$(( MEM > 2048 ? MEM - 1024 : MEM ))
cat > "$DIR/slurm.conf" <<CONF
# Written by jobs/local_slurm/start.sh for host $HOST: one node, one partition.
ClusterName=flightparsl
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
KillWait=30
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

mkdir -p /etc/slurm
if [ -e "$CONF_LINK" ] && [ ! -L "$CONF_LINK" ] && ! grep -q 'jobs/local_slurm/start.sh' "$CONF_LINK"; then
    echo "error: $CONF_LINK exists and was not written by this script; not touching it" >&2
    exit 1
fi
ln -sfn "$DIR/slurm.conf" "$CONF_LINK"

# ----------------------------------------------------------------------- daemons
if ! alive "$DIR/slurmctld.pid"; then
    slurmctld -i   # -i: ignore state from a previous run of another configuration
fi
if ! alive "$DIR/slurmd.pid"; then
    slurmd
fi

deadline=$(( $(date +%s) + WAIT_S ))
until [ "$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null)" = "idle" ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "error: node $HOST not idle after $WAIT_S s; sinfo says: $(sinfo -h -N -o '%N %T %E' 2>&1)" >&2
        tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
        exit 1
    fi
    state="$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null || true)"
    case "$state" in down*|drain*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;; esac
    sleep 1
done
echo "local Slurm up: node $HOST ($CPUS CPUs, $MEM MB), partition local; state under $DIR"
