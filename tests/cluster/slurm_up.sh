#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, for the slow SLURM tests. Idempotent: a second run with
# the cluster up only checks that the node is idle. Installs nothing: needs Debian's `slurm-wlm` and
# `munge` (apt-get install --no-install-recommends slurm-wlm munge). Root only (slurmd runs as root).
#
#   tests/cluster/slurm_up.sh [STATE_DIR]      # default $KDLAB_SLURM_DIR, else /tmp/kdlab-slurm
#   source STATE_DIR/env.sh                   # exports SLURM_CONF (and prints nothing)
#   tests/cluster/slurm_down.sh [STATE_DIR]
#
# Everything (slurm.conf, munge key and socket, daemon state, pid and log files) lives under STATE_DIR.
# /etc/slurm/slurm.conf is made a symlink to STATE_DIR/slurm.conf when it is absent (or already such a
# symlink), so plain `sinfo`/`sbatch` work too; a real file there is left alone and SLURM_CONF is needed.
# No systemd: the daemons are started by hand in the background. No cgroups: proctrack/linuxproc,
# task/none. No accounting DB. One partition, `debug` (Default=YES), holding the one node.
set -euo pipefail

STATE=${1:-${KDLAB_SLURM_DIR:-/tmp/kdlab-slurm}}
TIMEOUT_S=${KDLAB_SLURM_UP_TIMEOUT:-60}
PARTITION=${KDLAB_SLURM_PARTITION:-debug}

die() { echo "slurm_up: $*" >&2; exit 1; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

[[ $(id -u) == 0 ]] || die "must run as root (slurmd and the munge key need it)"
for exe in munged munge slurmctld slurmd sinfo scontrol; do
    command -v "$exe" >/dev/null || die "'$exe' not found: apt-get install -y --no-install-recommends slurm-wlm munge"
done
[[ $STATE == /* ]] || die "STATE_DIR must be an absolute path, got '$STATE'"
case $STATE in "$(git -C "$(dirname "$0")" rev-parse --show-toplevel 2>/dev/null || echo //none)"*)
    die "STATE_DIR '$STATE' is inside the repository; pick a folder outside it (default /tmp/kdlab-slurm)";;
esac

CTLD_PORT=${KDLAB_SLURMCTLD_PORT:-6817} SLURMD_PORT=${KDLAB_SLURMD_PORT:-6818}
listening() {  # is something listening on TCP port $1? (/proc/net/tcp: no iproute2 needed)
    local hex; hex=$(printf ':%04X ' "$1")
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p="$hex" '$4 == "0A" && index($2 " ", p)' | grep -q .
}
# A cluster from another STATE_DIR on the same ports? Say so before starting anything.
for port in "$CTLD_PORT" "$SLURMD_PORT"; do
    if [[ -d $STATE/run ]] && { alive "$STATE/run/slurmctld.pid" || alive "$STATE/run/slurmd.pid"; }; then break; fi
    listening "$port" && die "TCP port $port is in use (a cluster from another STATE_DIR? run slurm_down.sh on it; or set KDLAB_SLURMCTLD_PORT/KDLAB_SLURMD_PORT)"
done

mkdir -p "$STATE"/{munge,ctld,spool,log,run}
chmod 755 "$STATE"
HOST=$(hostname -s)
getent hosts "$HOST" >/dev/null || die "hostname '$HOST' does not resolve (add it to /etc/hosts)"
export SLURM_CONF=$STATE/slurm.conf

# -- munge: its own key, socket and daemon, apart from any system munged ---------------------------------
chown -R munge:munge "$STATE/munge"
chmod 755 "$STATE/munge"  # munged wants the socket folder executable by all
KEY=$STATE/munge/munge.key
SOCKET=$STATE/munge/munge.socket
if [[ ! -s $KEY ]]; then
    # mungekey (munge >= 0.5.14) or 1 KiB of urandom: either is a valid key.
    if command -v mungekey >/dev/null; then mungekey --create --keyfile="$KEY" --force >/dev/null
    else dd if=/dev/urandom of="$KEY" bs=1024 count=1 status=none; fi
    chown munge:munge "$KEY"; chmod 400 "$KEY"
fi
if ! alive "$STATE/munge/munged.pid"; then
    rm -f "$SOCKET" "$SOCKET.lock"
    # munged refuses to run as root; run it as the package's `munge` user. It daemonizes itself.
    runuser -u munge -- munged --key-file="$KEY" --socket="$SOCKET" --pid-file="$STATE/munge/munged.pid" \
        --log-file="$STATE/munge/munged.log" --seed-file="$STATE/munge/munged.seed" \
        || die "munged failed to start; see $STATE/munge/munged.log"
fi
for _ in $(seq 50); do [[ -S $SOCKET ]] && break; sleep 0.1; done
echo kdlab | munge --socket="$SOCKET" | unmunge --socket="$SOCKET" >/dev/null \
    || die "munge round trip failed; see $STATE/munge/munged.log"

# -- slurm.conf: this host's CPUs and memory, as slurmd itself detects them ------------------------------
# `slurmd -C` prints e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1
# RealMemory=24105". Keep 5% of memory (min 256 MiB) off RealMemory so the node never drains for having
# "less memory than configured" after a little drift.
NODE_LINE=$(slurmd -C | head -1)
[[ $NODE_LINE == NodeName=* ]] || die "'slurmd -C' printed '$NODE_LINE'"
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
RESERVE=$(( MEM / 20 > 256 ? MEM / 20 : 256 ))
NODE_LINE=$(sed "s/RealMemory=[0-9]*/RealMemory=$(( MEM - RESERVE ))/; s/NodeName=[^ ]*/NodeName=$HOST/" <<<"$NODE_LINE")

NEW_CONF=$(cat <<EOF
# Written by kdlab tests/cluster/slurm_up.sh: a one-node test cluster. State under $STATE.
ClusterName=kdlab
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$SOCKET,cred_expire=${KDLAB_SLURM_CRED_EXPIRE:-10}
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
# No cgroups in a container/VM like this one: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# Scan pending jobs every few seconds: a requeued job (BeginTime passed) starts without a minute's wait.
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without it a job given no --mem takes the whole node's memory, and a second job waits.
DefMemPerCPU=1024
ReturnToService=2
# Jobs may be requeued (scontrol requeue; submitit's preemption handling resubmits with requeue).
JobRequeue=1
# SIGTERM -> SIGKILL grace on scancel / time limit.
KillWait=30
# Finished jobs stay visible to scontrol (and tests/cluster/bin/sacct) this long.
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
Waittime=0
$NODE_LINE State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)
if [[ ! -f $SLURM_CONF ]] || [[ $(cat "$SLURM_CONF") != "$NEW_CONF" ]]; then
    if alive "$STATE/run/slurmctld.pid" || alive "$STATE/run/slurmd.pid"; then
        echo "slurm_up: slurm.conf changed; restarting the daemons" >&2
        "$(dirname "$0")/slurm_down.sh" "$STATE" --keep-munge >/dev/null
    fi
    printf '%s\n' "$NEW_CONF" >"$SLURM_CONF"
fi
chmod 644 "$SLURM_CONF"
echo "export SLURM_CONF=$SLURM_CONF" >"$STATE/env.sh"

mkdir -p /etc/slurm
if [[ ! -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]] \
    || [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$SLURM_CONF" ]]; then
    ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
elif [[ ! /etc/slurm/slurm.conf -ef $SLURM_CONF ]]; then
    echo "slurm_up: /etc/slurm/slurm.conf is someone else's; export SLURM_CONF=$SLURM_CONF (source $STATE/env.sh)" >&2
fi

# -- the daemons ---------------------------------------------------------------------------------------
if ! alive "$STATE/run/slurmctld.pid"; then
    # -i: ignore state files that do not match this config (a fresh STATE_DIR has none anyway).
    slurmctld -i -f "$SLURM_CONF" || die "slurmctld failed to start; see $STATE/log/slurmctld.log"
fi
if ! alive "$STATE/run/slurmd.pid"; then
    slurmd -f "$SLURM_CONF" || die "slurmd failed to start; see $STATE/log/slurmd.log"
fi

deadline=$(( SECONDS + TIMEOUT_S ))
state=""
while (( SECONDS < deadline )); do
    state=$(sinfo -h -n "$HOST" -o '%t' 2>/dev/null | head -1 || true)
    case $state in
        idle|mix|alloc) break;;
        down*|drain*|drng*|fail*)
            # A node left down by an earlier run of this STATE_DIR: bring it back.
            scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true;;
    esac
    sleep 1
done
case $state in
    idle|mix|alloc) ;;
    *) tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 2>/dev/null || true
       die "node '$HOST' not idle after ${TIMEOUT_S}s (sinfo state: '${state:-none}'); logs under $STATE/log";;
esac
echo "slurm_up: node $HOST is $state in partition $PARTITION; SLURM_CONF=$SLURM_CONF"
