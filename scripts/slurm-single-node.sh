#!/usr/bin/env bash
# A real single-node Slurm for tests and demos, on a Debian machine without systemd.
#
#   eval "$(scripts/slurm-single-node.sh up)"   # installs slurm-wlm + munge if missing, starts the daemons,
#                                               # prints `export SLURM_CONF=...` for the client tools
#   scripts/slurm-single-node.sh status         # scontrol ping + sinfo
#   scripts/slurm-single-node.sh down           # stops the daemons by the pids in their pid files
#
# Everything (config, keys, sockets, state, logs, pid files) lives under one base folder,
# $EVOSAM_SLURM_BASE (default /tmp/evosam-slurm); the system /etc is not touched. Needs root (the daemons run as
# root and jobs run as the submitting user). The node is `localhost` with this machine's CPUs and memory, in one
# partition `debug`. Ports: $EVOSAM_SLURM_PORT (slurmctld, default 6817) and the next one (slurmd).
# $EVOSAM_SLURM_NICE (default 0): niceness of slurmd, inherited by the jobs (for a machine shared with others).
# Facts behind the choices: ../shared/notes/slurm-single-node.md in the project workspace (munged wants a 0700
# key folder and a 0755 socket folder; slurmctld wants a MailProg; sacct needs a database, so none is used).
set -euo pipefail

BASE="${EVOSAM_SLURM_BASE:-/tmp/evosam-slurm}"
PORT="${EVOSAM_SLURM_PORT:-6817}"
CONF="$BASE/etc/slurm.conf"
SOCK="$BASE/run/munge/munge.socket.2"

log() { echo "slurm-single-node: $*" >&2; }
die() { log "error: $*"; exit 1; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && command -v mungekey >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and this is not root"
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2
}

pid_of() { # pid file -> pid of a live process, or nothing
    local f="$1" p
    [ -f "$f" ] || return 0
    p="$(cat "$f" 2>/dev/null || true)"
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then echo "$p"; fi
}

wait_for() { # seconds, description, command...
    local secs="$1" what="$2"; shift 2
    local i
    for ((i = 0; i < secs * 4; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.25
    done
    die "$what did not come up within ${secs}s (logs in $BASE/log)"
}

write_config() {
    local cpus mem_mb
    cpus="$(nproc)"
    # leave a tenth of the memory (at least 512 MB) to the system; jobs that ask for more stay pending
    mem_mb="$(awk '/MemTotal/ {m = int($2 / 1024); r = int(m / 10); if (r < 512) r = 512; print m - r}' /proc/meminfo)"
    cat >"$CONF" <<EOF
# Written by scripts/slurm-single-node.sh: a one-node cluster for tests. Do not use in production.
ClusterName=evosam-test
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$BASE/state/ctld
SlurmdSpoolDir=$BASE/state/d
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# one line per finished job (array tasks included): what finished, without a database
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=300
NodeName=localhost CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

up() {
    install_packages
    [ "$(id -u)" = 0 ] || die "starting the daemons needs root"
    mkdir -p "$BASE"/{etc,log,state/ctld,state/d,run} "$BASE/run/munge" "$BASE/munge-key" "$BASE/munge-lib"
    chmod 0700 "$BASE/munge-key" "$BASE/munge-lib"
    chmod 0755 "$BASE" "$BASE/run" "$BASE/run/munge"
    export SLURM_CONF="$CONF"

    if [ -z "$(pid_of "$BASE/run/munged.pid")" ]; then
        [ -f "$BASE/munge-key/munge.key" ] || mungekey --create --keyfile="$BASE/munge-key/munge.key" >&2
        chmod 0600 "$BASE/munge-key/munge.key"
        munged --key-file="$BASE/munge-key/munge.key" --socket="$SOCK" \
            --pid-file="$BASE/run/munged.pid" --log-file="$BASE/log/munged.log" \
            --seed-file="$BASE/munge-lib/munged.seed" >&2
        wait_for 10 munged sh -c "munge -n --socket='$SOCK' | unmunge --socket='$SOCK'"
    fi

    write_config
    if [ -z "$(pid_of "$BASE/run/slurmctld.pid")" ]; then
        setsid slurmctld -D -f "$CONF" >>"$BASE/log/slurmctld.out" 2>&1 </dev/null &
        wait_for 30 slurmctld sh -c "scontrol ping | grep -q UP"
    fi
    if [ -z "$(pid_of "$BASE/run/slurmd.pid")" ]; then
        # jobs inherit slurmd's niceness: EVOSAM_SLURM_NICE=10 keeps them from crowding a shared machine
        nice -n "${EVOSAM_SLURM_NICE:-0}" setsid slurmd -D -f "$CONF" >>"$BASE/log/slurmd.out" 2>&1 </dev/null &
    fi
    # a node left DOWN/DRAIN by an earlier unclean stop is brought back
    wait_for 30 "slurmd" sh -c "sinfo -h -o %T | grep -Eq 'idle|mix|alloc|down|drain'"
    if sinfo -h -o %T | grep -Eq 'down|drain'; then
        scontrol update NodeName=localhost State=RESUME >&2 || true
    fi
    wait_for 30 "the node" sh -c "sinfo -h -o %T | grep -Eq 'idle|mix|alloc'"
    log "up: $(sinfo -h -o '%P %D %T %c CPUs %m MB') (base $BASE)"
    echo "export SLURM_CONF='$CONF'"
}

down() {
    local name p i
    for name in slurmd slurmctld munged; do
        p="$(pid_of "$BASE/run/$name.pid")"
        [ -n "$p" ] || continue
        kill "$p" 2>/dev/null || true
        for ((i = 0; i < 40; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
        if kill -0 "$p" 2>/dev/null; then kill -9 "$p" 2>/dev/null || true; fi
        log "stopped $name (pid $p)"
    done
}

status() {
    export SLURM_CONF="$CONF"
    [ -f "$CONF" ] || die "not set up ($CONF missing); run: $0 up"
    scontrol ping
    sinfo
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status   (base folder: \$EVOSAM_SLURM_BASE, default /tmp/evosam-slurm)" >&2; exit 2 ;;
esac
