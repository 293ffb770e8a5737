#!/usr/bin/env bash
# Start a one-node Slurm cluster on this host: munged, slurmctld and slurmd, all bound to this
# host, for the tests and for trying jobs/ without a cluster. Idempotent: a cluster already up
# is left as it is. Needs root (it installs packages and runs the daemons as root).
#
#   sudo jobs/local_slurm/start.sh        # install what is missing, write slurm.conf, start
#   sinfo; sbatch ...; sacct -c           # use it (sacct -c reads the job completion log)
#   sudo jobs/local_slurm/stop.sh         # stop every daemon it started
#   sudo jobs/local_slurm/start.sh --nodes 3 --link 1gbit,5ms   # 3 compute nodes, each link shaped
#
# Everything it writes lives under $FP_SLURM_DIR (default /tmp/flight_parsl_slurm): slurm.conf,
# the daemons' state, pid files and logs, and jobcomp.log (the job history). /etc/slurm/slurm.conf
# is a symlink to that slurm.conf, so sinfo/sbatch/squeue/scancel/sacct need no SLURM_CONF.
# No systemd, cgroups or slurmdbd: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none,
# JobCompType=jobcomp/filetxt.
set -euo pipefail
DIR="${FP_SLURM_DIR:-/tmp/flight_parsl_slurm}"
NODES=1
LINK=""
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) NODES="${2:-}"; shift 2 ;;
        --nodes=*) NODES="${1#--nodes=}"; shift ;;
        --link) LINK="${2:-}"; shift 2 ;;
        --link=*) LINK="${1#--link=}"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "error: unknown argument $1 (usage: $0 [--nodes K] [--link RATE[,DELAY[,JITTER[,LOSS]]]])" >&2; exit 2 ;;
    esac
done
if ! [[ "$NODES" =~ ^[0-9]+$ ]] || [ "$NODES" -lt 1 ] || [ "$NODES" -gt 9 ]; then
    echo "error: --nodes must be a whole number from 1 to 9, got '$NODES'" >&2
    exit 2
fi
# --link RATE[,DELAY[,JITTER[,LOSS]]] (e.g. 1gbit,5ms) shapes each compute node's link to the bridge, both
# ways, as a site's `link:` shapes a virtual host's (flight_parsl/execution/links.py: tbf for the rate,
# netem or, on a kernel without it, the userspace delay line for delay, jitter and loss).
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
links() { PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" python -m flight_parsl.execution.links "$@"; }
LINE=0
if [ -n "$LINK" ]; then
    if [ "$NODES" -lt 2 ]; then
        echo "error: --link shapes the links of compute nodes: it needs --nodes K (K >= 2)" >&2
        exit 2
    fi
    read -r _ _ _ _ LINK_NETEM <<<"$(links parse "$LINK")" || exit 2
    [ -n "${LINK_NETEM:-}" ] || exit 2
fi
# K > 1: compute nodes node1..nodeK, each a network namespace with its own UTS host name, joined by
# a veth pair to the bridge $BRIDGE ($NET.1, where slurmctld listens); nothing routes outside $NET.0/24.
# FP_SLURM_TAG, FP_SLURM_NET and FP_SLURM_PORT let a second cluster run beside the first (a test does):
# other namespace and link names, another subnet, another slurmctld port; its clients then need
# SLURM_CONF=$DIR/slurm.conf, since only the default cluster links /etc/slurm/slurm.conf.
TAG="${FP_SLURM_TAG:-fp}"
NET="${FP_SLURM_NET:-10.232.7}"
PORT="${FP_SLURM_PORT:-6817}"
BRIDGE="${TAG}slurm0"
export SLURM_CONF="$DIR/slurm.conf"
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

if [ "$NODES" = 1 ] && alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" \
        && sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
    echo "local Slurm already up ($DIR)"
    exit 0
fi
if [ "$NODES" -gt 1 ] && alive "$DIR/slurmctld.pid" \
        && [ "$(sinfo -h -o '%D %T' 2>/dev/null)" = "$NODES idle" ]; then
    echo "local Slurm already up: $NODES nodes ($DIR)"
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
SlurmctldPort=$PORT
SlurmdPort=$(( PORT + 1 ))
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
EnforcePartLimits=ALL
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
KillWait=30
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=${FP_SLURMD_TIMEOUT:-30}
InactiveLimit=0
CONF
if [ "$NODES" = 1 ]; then
    cat >> "$DIR/slurm.conf" <<CONF
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
else
    # Several slurmd on one host: each node's spool, pid and log files by its name (%n); slurmctld is
    # reached on the bridge address (inside a node, the host name resolves to the node's own loopback).
    sed -i -e "s|^SlurmctldHost=.*|SlurmctldHost=$HOST($NET.1)|" \
           -e "s|^SlurmdSpoolDir=.*|SlurmdSpoolDir=$DIR/spool/%n|" \
           -e "s|^SlurmdPidFile=.*|SlurmdPidFile=$DIR/slurmd-%n.pid|" \
           -e "s|^SlurmdLogFile=.*|SlurmdLogFile=$DIR/log/slurmd-%n.log|" "$DIR/slurm.conf"
    for i in $(seq 1 "$NODES"); do
        echo "NodeName=node$i NodeHostname=node$i NodeAddr=$NET.1$i CPUs=$CPUS RealMemory=$(( MEM / NODES )) State=UNKNOWN"
    done >> "$DIR/slurm.conf"
    echo "PartitionName=local Nodes=node[1-$NODES] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" \
        >> "$DIR/slurm.conf"
fi

if [ "$DIR" = /tmp/flight_parsl_slurm ]; then  # the default cluster: clients find it without SLURM_CONF
mkdir -p /etc/slurm
if [ -e "$CONF_LINK" ] && [ ! -L "$CONF_LINK" ] && ! grep -q 'jobs/local_slurm/start.sh' "$CONF_LINK"; then
    echo "error: $CONF_LINK exists and was not written by this script; not touching it" >&2
    exit 1
fi
ln -sfn "$DIR/slurm.conf" "$CONF_LINK"
fi

# ----------------------------------------------------------------------- daemons
if ! alive "$DIR/slurmctld.pid"; then
    slurmctld -i   # -i: ignore state from a previous run of another configuration
fi
if [ "$NODES" = 1 ]; then
    alive "$DIR/slurmd.pid" || slurmd
else
    # the bridge and one namespace per node, then each node's slurmd inside it under its own host name
    ip link show "$BRIDGE" >/dev/null 2>&1 || {
        ip link add "$BRIDGE" type bridge
        ip addr add "$NET.1/24" dev "$BRIDGE"
        ip link set "$BRIDGE" up
    }
    if [ -n "$LINK" ]; then
        if ip netns list | grep -q "^${TAG}node[0-9]"; then
            echo "error: --link: the cluster's nodes exist already; stop.sh it first to shape their links" >&2
            exit 2
        fi
        if [ "$LINK_NETEM" = 1 ] && ! links netem; then
            # no netem in this kernel: one delay line process for every node, two TAP devices per node
            LINE=1
            specs="$(for i in $(seq 1 "$NODES"); do links line "$LINK" "${TAG}t$i" "${TAG}u$i"; done | paste -sd, -)"
            nohup python -I "$REPO/flight_parsl/execution/delayline.py" "[$specs]" --daemon \
                </dev/null >"$DIR/delayline.out" 2>&1 &
            echo $! > "$DIR/delayline.pid"
            for _ in $(seq 1 100); do grep -qx ready "$DIR/delayline.out" 2>/dev/null && break; sleep 0.1; done
            if ! grep -qx ready "$DIR/delayline.out"; then
                echo "error: --link: the delay line did not start: $(tail -n 3 "$DIR/delayline.out")" >&2
                exit 1
            fi
        fi
    fi
    for i in $(seq 1 "$NODES"); do
        ns="${TAG}node$i"
        mkdir -p "$DIR/spool/node$i"
        if ! ip netns list | grep -qw "$ns"; then
            ip netns add "$ns"
            if [ "$LINE" = 1 ]; then  # the delay line's devices in place of a veth pair
                outer="${TAG}t$i"
                ip link set "${TAG}u$i" netns "$ns"
                ip -n "$ns" link set "${TAG}u$i" name eth0
            else
                outer="${TAG}n$i"
                ip link add "$outer" type veth peer name eth0 netns "$ns"
            fi
            ip link set "$outer" master "$BRIDGE" up
            ip -n "$ns" addr add "$NET.1$i/24" dev eth0
            ip -n "$ns" link set eth0 up
            ip -n "$ns" link set lo up
            if [ -n "$LINK" ]; then
                if [ "$LINE" = 1 ]; then links shape "$outer" "$ns" "$LINK" --no-netem; else links shape "$outer" "$ns" "$LINK"; fi
            fi
        fi
        # nsenter --net, not `ip netns exec` (which remounts /sys and hides the cgroup mounts slurmd needs)
        alive "$DIR/slurmd-node$i.pid" || nsenter --net="/run/netns/$ns" unshare --uts \
            sh -c "hostname node$i && exec slurmd -N node$i"
    done
fi

deadline=$(( $(date +%s) + WAIT_S ))
NODELIST="$HOST"
[ "$NODES" -gt 1 ] && NODELIST="node[1-$NODES]"
until [ "$(sinfo -h -n "$NODELIST" -o '%D %T' 2>/dev/null)" = "$NODES idle" ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "error: nodes $NODELIST not idle after $WAIT_S s; sinfo says: $(sinfo -h -N -o '%N %T %E' 2>&1)" >&2
        tail -n 20 "$DIR"/log/slurm*.log >&2 || true
        exit 1
    fi
    for node in $(sinfo -h -N -n "$NODELIST" -t down,drain -o '%N' 2>/dev/null); do
        scontrol update nodename="$node" state=resume 2>/dev/null || true
    done
    sleep 1
done
if [ "$NODES" = 1 ]; then
    echo "local Slurm up: node $HOST ($CPUS CPUs, $MEM MB), partition local; state under $DIR"
else
    echo "local Slurm up: $NODES nodes $NODELIST ($NET.11-$NET.1$NODES on bridge $BRIDGE, slurmctld at $NET.1)," \
         "partition local; state under $DIR${LINK:+; node links $LINK}"
fi
