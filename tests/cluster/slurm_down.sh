#!/usr/bin/env bash
# Stop the one-node test cluster that slurm_up.sh started: cancel its jobs, stop slurmd, slurmctld and
# munged (by their pid files under STATE_DIR), drop the /etc/slurm/slurm.conf symlink if it is ours.
# Safe to run twice, or with nothing running.
#
#   tests/cluster/slurm_down.sh [STATE_DIR] [--purge] [--keep-munge]
#     STATE_DIR     default $KDLAB_SLURM_DIR, else /tmp/kdlab-slurm
#     --purge       also delete STATE_DIR (logs, job state, munge key)
#     --keep-munge  leave munged running (slurm_up.sh uses it to restart slurm after a config change)
set -uo pipefail

STATE=${KDLAB_SLURM_DIR:-/tmp/kdlab-slurm}
PURGE=0 KEEP_MUNGE=0
for arg in "$@"; do
    case $arg in
        --purge) PURGE=1;;
        --keep-munge) KEEP_MUNGE=1;;
        -*) echo "slurm_down: unknown option $arg" >&2; exit 2;;
        *) STATE=$arg;;
    esac
done
[[ $STATE == /* ]] || { echo "slurm_down: STATE_DIR must be absolute, got '$STATE'" >&2; exit 2; }
export SLURM_CONF=$STATE/slurm.conf

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop() {  # stop NAME PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL
    local name=$1 pidfile=$2 pid
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "slurm_down: $name ($pid) ignored SIGTERM for 15 s; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
    echo "slurm_down: stopped $name ($pid)"
}

# Cancel every job first, while slurmctld and slurmd can still end their steps cleanly.
if alive "$STATE/run/slurmctld.pid" && [[ -f $SLURM_CONF ]]; then
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
    if [[ -n $jobs ]]; then
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for _ in $(seq 60); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break; sleep 1; done
        [[ -z $(squeue -h -o %A 2>/dev/null) ]] || echo "slurm_down: jobs still listed after 60 s: $(squeue -h -o '%A %T' | tr '\n' ' ')" >&2
    fi
fi
stop slurmd "$STATE/run/slurmd.pid"
stop slurmctld "$STATE/run/slurmctld.pid"
(( KEEP_MUNGE )) || stop munged "$STATE/munge/munged.pid"

if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$SLURM_CONF" ]]; then
    rm -f /etc/slurm/slurm.conf
fi
if (( PURGE )); then
    case $STATE in /|/tmp|/root|/home|/etc|/usr|/var) echo "slurm_down: refusing to delete $STATE" >&2; exit 2;; esac
    rm -rf "$STATE" && echo "slurm_down: deleted $STATE"
fi
exit 0
