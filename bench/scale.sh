#!/usr/bin/env bash
# scale.sh - memory and CPU of one sonde node holding N scheduled checks (default
# 1,000,000), against a baseline run of the same daemon with one check, in the same script.
#
# Two namespaces of its own (names end in this shell's pid), nothing in the root namespace:
#   sonde-scale-p<pid>: vp0 198.18.0.1/24, route 198.19.0.0/16 via 198.18.0.2 (no default route)
#   sonde-scale-t<pid>: vt0 198.18.0.2/24, "local 198.19.0.0/16 dev lo" (answers for all of
#                       it) and a listener on :80 that never accepts: every SYN gets a
#                       SYN-ACK (the prober resets it), so the checks are healthy and probed
#                       at their interval, as most checks of a real fleet are
# Checks: tcp_syn to 198.19.X.Y:80 over the /16 (about 15 checks per address), interval
# INTERVAL (default 60s, so N/60 probes per second: 16.7k/s for a million), the kernel
# programs attached (the real daemon, `sonde run`, release build).
# Measured per run: time until the API answers with every check loaded, VmHWM (peak) and
# VmRSS after ROUNDS intervals (every check has results, histories and latency
# histograms by then), and the daemon's CPU (user+sys) over the last interval.
# Per-check memory = (RSS(N) - RSS(1)) / (N - 1): what a check costs beyond the engine's
# fixed buffers (ring buffer, io_uring rings, maps), which the one-check baseline holds too.
# Env: N (default 1000000), INTERVAL (default 60s), ROUNDS (default 3), SKIP_BUILD=1.
# Output: a table on stdout and bench/out/scale-<timestamp>.tsv.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${N:-1000000}
INTERVAL=${INTERVAL:-60}
ROUNDS=${ROUNDS:-3}
BIN=$ROOT/target/release/sonde
P=sonde-scale-p$$
T=sonde-scale-t$$
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/out
WORK=$(mktemp -d /tmp/sonde-scale.XXXXXX)
PID=

LISTENER=
cleanup() {
  [ -z "$LISTENER" ] || kill -9 "$LISTENER" 2>/dev/null || true
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -9 "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  ip netns del "$P" 2>/dev/null || true
  ip netns del "$T" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$(id -u)" -ne 0 ]; then echo "scale.sh: run as root (namespaces, eBPF)" >&2; exit 1; fi
if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release -p sonde --bin sonde)
fi
mkdir -p "$OUT"

ip netns add "$P"
ip netns add "$T"
ip -n "$P" link set lo up
ip -n "$T" link set lo up
ip link add vp0 netns "$P" type veth peer name vt0 netns "$T"
ip -n "$P" addr add 198.18.0.1/24 dev vp0
ip -n "$T" addr add 198.18.0.2/24 dev vt0
ip -n "$P" link set vp0 up
ip -n "$T" link set vt0 up
ip -n "$T" route add local 198.19.0.0/16 dev lo
ip -n "$P" route add 198.19.0.0/16 via 198.18.0.2
ip netns exec "$T" sysctl -qw net.ipv4.tcp_syncookies=1 net.core.somaxconn=65535
ip netns exec "$T" python3 -c '
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(65535)
while True: time.sleep(3600)' >/dev/null 2>&1 &
LISTENER=$!   # ip netns exec execs python: this is its pid
sleep 0.5

# N checks spread over the /16 (addresses .1-.250 of each /24).
gen() {
  awk -v n="$1" -v iv="$INTERVAL" 'BEGIN {
    printf "[defaults]\ninterval = \"%ds\"\ntimeout = \"1s\"\n\n", iv
    for (i = 0; i < n; i++) {
      a = int(i / 250) % 256; b = i % 250 + 1
      printf "[[check]]\nid = \"c%d\"\ntarget = \"198.19.%d.%d:80\"\nkind = \"tcp_syn\"\n\n", i, a, b
    }
  }' > "$2"
}

field() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# run NAME COUNT: start the daemon on COUNT checks, measure, stop it.
run() {
  local name=$1 count=$2 dir=$WORK/$1
  mkdir -p "$dir"
  gen "$count" "$dir/checks.toml"
  local t0 t1
  t0=$(date +%s.%N)
  ip netns exec "$P" "$BIN" run --config "$dir/checks.toml" --iface vp0 \
    --state-dir "$dir/state" --socket "$dir/sonde.sock" --token-file "$dir/token" \
    --per-target-pps 1000 > "$dir/log" 2>&1 &
  PID=$!
  local loaded=0
  for _ in $(seq 1 3600); do
    loaded=$(curl -s --unix-socket "$dir/sonde.sock" http://localhost/v1/info 2>/dev/null \
      | sed -n 's/.*"checks":\([0-9]*\).*/\1/p' || true)
    [ "${loaded:-0}" = "$count" ] && break
    kill -0 "$PID" 2>/dev/null || { echo "daemon died:"; tail -5 "$dir/log"; exit 1; }
    sleep 0.5
  done
  t1=$(date +%s.%N)
  local load_s
  load_s=$(echo "$t1 - $t0" | bc)
  # Every check probed ROUNDS times (first probes spread over one interval); the
  # one-check baseline only needs its fixed buffers set up.
  local settle=$(( INTERVAL * (ROUNDS - 1) )) window=$INTERVAL
  if [ "$count" -le 1 ]; then settle=5; window=5; fi
  sleep "$settle"
  local c0 c1
  c0=$(ticks "$PID")
  sleep "$window"
  c1=$(ticks "$PID")
  local rss hwm cpu seq0
  rss=$(field "$PID" VmRSS)
  hwm=$(field "$PID" VmHWM)
  cpu=$(echo "scale=1; ($c1 - $c0) * 100 / $HZ / $window" | bc)
  seq0=$(curl -s --unix-socket "$dir/sonde.sock" http://localhost/v1/checks/c0 \
    | sed -n 's/.*"seq":\([0-9]*\).*/\1/p' | head -1 || true)
  curl -s --unix-socket "$dir/sonde.sock" http://localhost/metrics > "$dir/metrics" || true
  local admitted skipped delayed
  admitted=$(awk '$1 == "sonde_budget_admitted_total" { print $2 }' "$dir/metrics")
  skipped=$(awk '$1 == "sonde_budget_skipped_total" { print $2 }' "$dir/metrics")
  delayed=$(awk '/^sonde_budget_delayed_total/ { n += $2 } END { print n + 0 }' "$dir/metrics")
  kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=
  echo "$name $count $load_s $rss $hwm $cpu ${seq0:-none} ${admitted:-0} ${skipped:-0} ${delayed:-0}"
}

echo "scale.sh: N=$N interval=${INTERVAL}s rounds=$ROUNDS (this takes about $(( ROUNDS * INTERVAL / 60 + N / 400000 + 1 )) minutes)" >&2
# (Not in a subshell: the EXIT trap must see the daemon's pid.)
run baseline 1 > "$WORK/baseline.row"
run checks "$N" > "$WORK/checks.row"
read -r _ _ bl_load bl_rss bl_hwm bl_cpu bl_seq bl_adm bl_skip bl_del < "$WORK/baseline.row"
read -r _ _ n_load n_rss n_hwm n_cpu n_seq n_adm n_skip n_del < "$WORK/checks.row"
per=$(( (n_rss - bl_rss) * 1024 / (N - 1) ))
# Probes admitted against the probes the schedule asks for over the run (one per check
# per interval; more at start, while checks are unknown and probed at their fast
# interval): below 1, the daemon does not keep up and the memory figure means little.
keep=$(echo "scale=2; $n_adm / ($N * $ROUNDS)" | bc)
printf "%-10s %9s %9s %11s %11s %8s %7s %11s %11s %11s\n" run checks load_s rss_kib peak_kib cpu_pct c0_seq admitted skipped delayed
printf "%-10s %9s %9s %11s %11s %8s %7s %11s %11s %11s\n" baseline 1 "$bl_load" "$bl_rss" "$bl_hwm" "$bl_cpu" "$bl_seq" "$bl_adm" "$bl_skip" "$bl_del"
printf "%-10s %9s %9s %11s %11s %8s %7s %11s %11s %11s\n" checks "$N" "$n_load" "$n_rss" "$n_hwm" "$n_cpu" "$n_seq" "$n_adm" "$n_skip" "$n_del"
echo "per check beyond the one-check baseline: $per bytes (goal 1024: ratio $(echo "scale=2; $per / 1024" | bc)); $(( N / INTERVAL )) probes/s scheduled; admitted/scheduled $keep (check c0 at probe $n_seq)"
{
  printf "run\tchecks\tload_s\trss_kib\tpeak_kib\tcpu_pct\tc0_seq\tadmitted\tskipped\tdelayed\n"
  printf "baseline\t1\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$bl_load" "$bl_rss" "$bl_hwm" "$bl_cpu" "$bl_seq" "$bl_adm" "$bl_skip" "$bl_del"
  printf "checks\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$N" "$n_load" "$n_rss" "$n_hwm" "$n_cpu" "$n_seq" "$n_adm" "$n_skip" "$n_del"
  printf "per_check_bytes\t%s\n" "$per"
  printf "admitted_per_scheduled\t%s\n" "$keep"
} > "$OUT/scale-$STAMP.tsv"
