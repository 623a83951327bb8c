#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, to run the SLURM profile for real (tests/test_slurm.py).
#
#   cluster.sh start [DIR]   write a slurm.conf for this machine under DIR (one partition, `cpu`, with the
#                            node's real cores and memory), start MariaDB, munge, slurmdbd, slurmctld and
#                            slurmd, and wait until the node is idle. Then: export SLURM_CONF=DIR/slurm.conf
#   cluster.sh stop [DIR]    cancel every job, stop every daemon that `start` started, remove DIR
#
# Runs as root, with Debian's packages (README "Running on a cluster"):
#   apt-get install -y slurm-wlm slurmdbd munge mariadb-server
# Everything it writes lives under DIR (default /tmp/clover2-slurm), except what Slurm's clients look for
# in standard places: a link /etc/slurm/slurm.conf -> DIR/slurm.conf, and munged's socket in /run/munge
# when no munged runs yet. `stop` removes both. `start` refuses where that file exists, unless it is the
# link of a test cluster whose run ended without `stop` (a test run killed mid-suite): its directory gone,
# its controller dead, or the process that started it (its owner, as a test session) gone. That cluster's
# daemons are killed and its link and directory removed first.
# slurmdbd keeps the accounting that `sacct` reads, which is how Snakemake's SLURM executor learns that a
# job ended, as on a real cluster. The daemons listen on this machine's ports 6817-6819 and 3307.
set -euo pipefail

ACTION="${1:?usage: cluster.sh start|stop [DIR]}"
DIR="$(realpath -m "${2:-${CLOVER2_SLURM_DIR:-/tmp/clover2-slurm}}")"
NODE="$(hostname -s)"
CLUSTER=clover2test
DB_PORT="${CLOVER2_SLURM_DB_PORT:-3307}"
# Where Slurm's clients look when SLURM_CONF is unset, as it is inside a job step that Snakemake's
# executor starts with srun (it drops every SLURM_* variable): a link to DIR's slurm.conf while up.
SYSTEM_CONF=/etc/slurm/slurm.conf

log() { echo "cluster.sh: $*" >&2; }
fail() { log "$*"; exit 1; }

# Start a daemon in the foreground of its own session, its PID and log under DIR.
launch() {
  local name="$1"; shift
  setsid "$@" > "$DIR/log/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/run/$name.pid"
}

munge_works() { munge -n 2> /dev/null | unmunge > /dev/null 2>&1; }

wait_for() {
  local what="$1" seconds="$2"; shift 2
  for _ in $(seq "$seconds"); do
    if "$@" > /dev/null 2>&1; then return 0; fi
    sleep 1
  done
  fail "$what did not come up within ${seconds}s; its logs: $DIR/log/ ($(tail -n 5 "$DIR"/log/*.log 2>/dev/null | tr '\n' ' '))"
}

write_configs() {
  local cpus memory
  cpus="$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -1)"
  memory="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)"
  cat > "$DIR/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid.own
SlurmdPidFile=$DIR/run/slurmd.pid.own
SlurmctldLogFile=$DIR/log/slurmctld.file.log
SlurmdLogFile=$DIR/log/slurmd.file.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoreFlags=job_comment
MinJobAge=600
KillWait=10
NodeName=$NODE CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid.own
LogFile=$DIR/log/slurmdbd.file.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/slurmdbd.conf"  # slurmdbd refuses a config that others can read
}

# The daemons (and job steps) of the test cluster configured by $1: Slurm's and MariaDB's processes
# started with SLURM_CONF=$1 in their environment, as `start` launches them.
cluster_processes() {
  local proc
  for proc in /proc/[0-9]*; do
    case "$(cat "$proc/comm" 2> /dev/null)" in
      slurmctld|slurmd|slurmdbd|slurmstepd|munged|mariadbd) ;;
      *) continue ;;
    esac
    if grep -qzxF "SLURM_CONF=$1" "$proc/environ" 2> /dev/null; then echo "${proc#/proc/}"; fi
  done
  return 0
}

# When process $1 started (clock ticks after boot): with its PID, it names the process, whose PID may be reused.
process_start() {
  sed 's/.*) //' "/proc/$1/stat" 2> /dev/null | cut -d' ' -f20
}

# The process that started the cluster in $1 (`start`'s parent, as a test session) still runs.
owner_alive() {
  local pid started
  read -r pid started < "$1/run/owner" 2> /dev/null || return 1
  [ -n "$started" ] && [ "$(process_start "$pid")" = "$started" ]
}

retire_stale_cluster() {
  [ -L "$SYSTEM_CONF" ] || return 0
  local conf old pid
  conf="$(readlink "$SYSTEM_CONF")"
  old="$(dirname "$conf")"
  if [ -e "$conf" ]; then
    grep -qxF "ClusterName=$CLUSTER" "$conf" || return 0  # not a test cluster's: `start` refuses it
    pid="$(cat "$old/run/slurmctld.pid" 2> /dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2> /dev/null && owner_alive "$old"; then
      fail "a test cluster runs at $old for process $(cut -d' ' -f1 "$old/run/owner") ($SYSTEM_CONF links to it): cluster.sh stop $old first"
    fi
  fi
  log "retiring the test cluster at $old: its run ended without cluster.sh stop"
  cluster_processes "$conf" | xargs -r kill -KILL 2> /dev/null || true
  for _ in $(seq 30); do  # its ports are free once its daemons are gone
    [ -z "$(cluster_processes "$conf")" ] && break
    sleep 1
  done
  rm -f "$SYSTEM_CONF"
  [ -d "$old/run" ] && rm -rf "$old"
  return 0
}

start() {
  for tool in slurmctld slurmd slurmdbd munged mariadbd mariadb-install-db sinfo sacct; do
    command -v "$tool" > /dev/null || fail "$tool is missing: apt-get install -y slurm-wlm slurmdbd munge mariadb-server"
  done
  [ "$(id -u)" = 0 ] || fail "the test cluster's daemons run as root"
  [ -e "$DIR/run" ] && fail "$DIR already holds a cluster: cluster.sh stop $DIR first"
  retire_stale_cluster
  if [ -e "$SYSTEM_CONF" ] || [ -L "$SYSTEM_CONF" ]; then
    fail "$SYSTEM_CONF exists ($(readlink -f "$SYSTEM_CONF")): this machine has a Slurm configuration that the test cluster would shadow; stop that cluster first"
  fi
  mkdir -p "$DIR"/{run,log,state,spool,mysql}
  echo "$PPID $(process_start "$PPID")" > "$DIR/run/owner"
  export SLURM_CONF="$DIR/slurm.conf"
  write_configs
  mkdir -p "$(dirname "$SYSTEM_CONF")"
  ln -s "$DIR/slurm.conf" "$SYSTEM_CONF"

  mariadb-install-db --user=root --datadir="$DIR/mysql" --skip-test-db > "$DIR/log/mariadb-install.log" 2>&1
  launch mariadb mariadbd --user=root --datadir="$DIR/mysql" --socket="$DIR/run/mysql.sock" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --skip-grant-tables --pid-file="$DIR/run/mariadb.pid.own"
  wait_for MariaDB 60 mariadb --protocol=tcp --host=127.0.0.1 --port="$DB_PORT" -e "select 1"

  # munge at its standard socket: Slurm's clients reach slurmdbd through it whatever slurm.conf says.
  if ! munge_works; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    launch munge runuser -u munge -- munged --foreground
    wait_for munge 30 munge_works
  fi

  launch slurmdbd slurmdbd -D
  wait_for slurmdbd 60 sacctmgr -n list cluster
  sacctmgr -i add cluster "$CLUSTER" > /dev/null
  sacctmgr -i add account clover2 Cluster="$CLUSTER" Description="the test cluster's account" > /dev/null
  sacctmgr -i add user root Account=clover2 Cluster="$CLUSTER" > /dev/null

  launch slurmctld slurmctld -D -i
  launch slurmd slurmd -D -N "$NODE"
  wait_for "the node" 90 bash -c "sinfo -h -N -o %T | grep -qx idle"
  log "up: one node ($NODE), partition cpu; export SLURM_CONF=$SLURM_CONF"
}

stop() {
  [ -d "$DIR/run" ] || { rm -rf "$DIR"; return 0; }
  export SLURM_CONF="$DIR/slurm.conf"
  if [ -f "$DIR/run/slurmctld.pid" ]; then
    scancel --full --user root > /dev/null 2>&1 || true
    for _ in $(seq 30); do
      [ -z "$(squeue -h -t running,completing,pending 2>/dev/null)" ] && break
      sleep 1
    done
  fi
  local pids=()
  for name in slurmd slurmctld slurmdbd munge mariadb; do
    [ -f "$DIR/run/$name.pid" ] || continue
    local pid; pid="$(cat "$DIR/run/$name.pid")"
    kill -TERM -- "-$pid" 2> /dev/null || true  # the daemon's whole session (setsid)
    pids+=("$pid")
  done
  for _ in $(seq 30); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2> /dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2> /dev/null || true; done
  # Job steps outlive slurmd by design; the test cluster's must not outlive the cluster.
  pkill -KILL -f "slurmstepd: \[" 2> /dev/null || true
  [ "$(readlink "$SYSTEM_CONF")" = "$DIR/slurm.conf" ] && rm -f "$SYSTEM_CONF"
  rm -rf "$DIR"
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  *) fail "unknown action '$ACTION': start or stop" ;;
esac
