#!/usr/bin/env bash
# fidelity.sh - how faithfully each method measures a round trip: the same ICMP echo and
# TCP SYN targets probed by sonde with kernel timestamps (XDP/TC), by sonde forced to
# userspace timestamps (the engine's PacketSource fallback, as `sonde probe --userspace`),
# and by iputils ping (ICMP) / hping3 (SYN), each idle and under load.
#
# Four namespaces of its own (names end in this shell's pid), nothing in the root namespace,
# no default route anywhere:
#   sonde-fid-p<pid>: vp0 198.18.0.1/24, route 198.19.0.0/16 via 198.18.0.2 (the prober)
#   sonde-fid-t<pid>: vt0 198.18.0.2/24, "local 198.19.0.0/16 dev lo", a listener on :80
#   sonde-fid-a<pid>, sonde-fid-b<pid>: la0 198.18.2.1/24 <-> lb0 198.18.2.2/24, the load's
#                     competing packet flow (two iperf3 UDP floods a -> b, 64-byte datagrams)
# Load: stress-ng --cpu 2 (both cores busy) --timer 2 --timer-freq 10000 (20,000 timer
# interrupts/s), plus the two floods (softirq work on both cores). Every process is bounded by
# `timeout` and killed (by process group) on exit, and the namespaces are deleted, also on
# failure or Ctrl-C.
# Env: COUNT (probes per run, 100-20000, default 3000), INTERVAL_US (between probes,
#      500-100000, default 2000), FLOOD (iperf3 -b per flood, default 0 = unlimited),
#      SKIP_BUILD=1 (use existing binaries), DOCS=0 (do not copy the plot to docs/fidelity.png),
#      PM_QOS (1, default: hold a CPU wake-up latency request of 0 us on /dev/cpu_dma_latency
#      for the whole run, as latency measurements are done: idle CPUs poll instead of halting,
#      for every method alike; 0: leave the machine's power management as it is),
#      ANSWER_HOOK (where sonde's kernel clock stamps answers, the daemon's `answer_hook`:
#      auto, its default, which is TC ingress on this lab's veth; xdp; tc).
# About 3 minutes with the defaults (plus the build).
# Output: the table on stdout; bench/out/fidelity-<ts>.{tsv,md,png}, raw samples and logs
# in bench/out/fidelity-<ts>/; the plot also copied to docs/fidelity.png.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COUNT=${COUNT:-3000}
INTERVAL_US=${INTERVAL_US:-2000}
FLOOD=${FLOOD:-0}
ANSWER_HOOK=${ANSWER_HOOK:-auto}
if [ "$COUNT" -lt 100 ] || [ "$COUNT" -gt 20000 ]; then
  echo "COUNT must be 100-20000" >&2; exit 2
fi
if [ "$INTERVAL_US" -lt 500 ] || [ "$INTERVAL_US" -gt 100000 ]; then
  echo "INTERVAL_US must be 500-100000" >&2; exit 2
fi
BIN=${SONDE_FIDELITY:-$ROOT/target/release/sonde-fidelity}
TARGET=198.19.0.1
P=sonde-fid-p$$
T=sonde-fid-t$$
A=sonde-fid-a$$
B=sonde-fid-b$$
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/out
DIR=$OUT/fidelity-$STAMP
RUN_S=$((COUNT * INTERVAL_US / 1000000 + 1))    # one run's sending time, rounded up
RUN_LIMIT=$((RUN_S + 60))                        # bound of one run (start, drain, slack)
LOAD_S=$((6 * (RUN_S + 15) + 30))                # bound of the load: six runs and slack
LOAD_DESC="stress-ng --cpu 2 --timer 2 --timer-freq 10000, 2 iperf3 UDP floods of 64 B (-b $FLOOD)"
GROUPS_=()  # process groups (their timeout's pid) to kill on exit
LOAD_FROM=0 # the load's first entry in GROUPS_
RUN=        # process group of the measurement running now

cleanup() {
  local g
  [ -z "$RUN" ] || kill -KILL -- "-$RUN" 2>/dev/null || true
  for g in "${GROUPS_[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  sleep 0.3
  for g in "${GROUPS_[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  for n in "$P" "$T" "$A" "$B"; do ip netns del "$n" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

inP() { ip netns exec "$P" "$@"; }
inT() { ip netns exec "$T" "$@"; }

deps() {
  local missing=() t
  for t in ping hping3 stress-ng iperf3; do command -v "$t" >/dev/null || missing+=("$t"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  missing=("${missing[@]/#ping/iputils-ping}")
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

build() {
  [ "${SKIP_BUILD:-0}" = 1 ] && return 0
  (cd "$ROOT" && cargo xtask build-ebpf &&
    cargo build --release -p sonde-bench --bin sonde-fidelity)
}

setup() {
  ip netns add "$P"
  ip netns add "$T"
  ip netns add "$A"
  ip netns add "$B"
  ip link add vp0 netns "$P" type veth peer name vt0 netns "$T"
  ip link add la0 netns "$A" type veth peer name lb0 netns "$B"
  local n
  for n in "$P" "$T" "$A" "$B"; do ip -n "$n" link set lo up; done
  ip -n "$P" addr add 198.18.0.1/24 dev vp0
  ip -n "$T" addr add 198.18.0.2/24 dev vt0
  ip -n "$A" addr add 198.18.2.1/24 dev la0
  ip -n "$B" addr add 198.18.2.2/24 dev lb0
  ip -n "$P" link set vp0 up
  ip -n "$T" link set vt0 up
  ip -n "$A" link set la0 up
  ip -n "$B" link set lb0 up
  ip -n "$T" route add local 198.19.0.0/16 dev lo
  ip -n "$P" route add 198.19.0.0/16 via 198.18.0.2 dev vp0
  inT sysctl -qw net.ipv4.icmp_ratelimit=0 net.ipv4.icmp_ratemask=0
  # An open port 80 (the kernel answers SYN-ACK; nobody needs to accept). Bounded life.
  spawn "$T" $((12 * RUN_LIMIT + 60)) python3 -c 'import socket,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(4096); time.sleep(10**6)'
  sleep 0.5
  inP ping -c1 -W1 "$TARGET" >/dev/null
}

# spawn NS SECONDS CMD... : CMD in namespace NS, in the background, killed after SECONDS (and
# on exit) with its whole process group.
spawn() {
  local ns=$1 secs=$2; shift 2
  timeout -k 3 "$secs" ip netns exec "$ns" "$@" </dev/null >>"$DIR/load.log" 2>&1 &
  GROUPS_+=("$!")
}

# bounded SECONDS CMD... : CMD under timeout, waited for (so Ctrl-C stops it at once).
bounded() {
  local secs=$1 rc=0; shift
  timeout -k 3 "$secs" "$@" &
  RUN=$!
  wait "$RUN" || rc=$?
  RUN=
  return "$rc"
}

# Busy % of the whole machine over 0.5 s (/proc/stat; both cores = 100 %).
busy_pct() {
  local s0 s1
  s0=$(head -1 /proc/stat); sleep 0.5; s1=$(head -1 /proc/stat)
  echo "$s0 $s1" | awk '{ for (i = 2; i <= 9; i++) { t0 += $i; t1 += $(i + 11) }
    d = t1 - t0; if (d <= 0) d = 1; print int(100 * (1 - ($16 + $17 - $5 - $6) / d) + 0.5) }'
}
# Idle runs wait (at most 20 s) for other work on the machine to leave it <= 10 % busy.
# The last reading is kept next to the run's samples (the report marks disturbed runs).
quiet() {
  local b
  for _ in $(seq 40); do b=$(busy_pct); [ "$b" -le 10 ] && break; done
  echo "$b" >"$DIR/$1.busy"
  [ "$b" -le 10 ] ||
    echo "  (machine still ${b}% busy before this idle run: its numbers are disturbed)" >&2
}

load_start() {
  LOAD_FROM=${#GROUPS_[@]}
  spawn "$B" "$LOAD_S" iperf3 -s -p 5201
  spawn "$B" "$LOAD_S" iperf3 -s -p 5202
  sleep 1
  spawn "$A" "$LOAD_S" iperf3 -c 198.18.2.2 -p 5201 -u -b "$FLOOD" -l 64 -t $((LOAD_S - 5))
  spawn "$A" "$LOAD_S" iperf3 -c 198.18.2.2 -p 5202 -u -b "$FLOOD" -l 64 -t $((LOAD_S - 5))
  spawn "$A" "$LOAD_S" stress-ng --cpu 2 --timer 2 --timer-freq 10000 \
    --timeout "$((LOAD_S - 5))s" -q
  sleep 2
  echo "  load running: machine $(busy_pct)% busy, flood $(flood_pps) datagrams/s"
}
load_stop() {
  local g
  for g in "${GROUPS_[@]:$LOAD_FROM}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  sleep 1
  for g in "${GROUPS_[@]:$LOAD_FROM}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  GROUPS_=("${GROUPS_[@]:0:$LOAD_FROM}")
}
flood_pps() {
  local r0 r1
  r0=$(ip netns exec "$B" cat /sys/class/net/lb0/statistics/rx_packets); sleep 1
  r1=$(ip netns exec "$B" cat /sys/class/net/lb0/statistics/rx_packets)
  echo $((r1 - r0))
}

# sonde KIND METHOD COND : sonde-fidelity probe in the prober namespace.
sonde() {
  local kind=$1 method=$2 cond=$3 extra=()
  [ "$method" = sonde-userspace ] && extra+=(--userspace)
  [ "$method" = sonde-kernel ] && extra+=(--answer-hook "$ANSWER_HOOK")
  bounded "$RUN_LIMIT" ip netns exec "$P" "$BIN" probe --kind "$kind" --target "$TARGET" \
    --port 80 --count "$COUNT" --interval-us "$INTERVAL_US" --iface vp0 "${extra[@]}" \
    --out "$DIR/$kind.$method.$cond.rtt" >>"$DIR/$kind.$method.$cond.log" 2>&1 ||
    echo "  ($kind $method $cond failed, see $DIR/$kind.$method.$cond.log)" >&2
}

# peer KIND COND : ping (icmp) or hping3 (syn), its per-reply times converted to ns.
peer() {
  local kind=$1 cond=$2 method log secs
  secs=$(awk -v u="$INTERVAL_US" 'BEGIN { printf "%.6f", u / 1e6 }')
  if [ "$kind" = icmp ]; then
    method=ping
    log=$DIR/$kind.$method.$cond.log
    # -s 16: the same 16-byte payload as sonde's echo requests (room for ping's timeval).
    bounded "$RUN_LIMIT" ip netns exec "$P" ping -n -c "$COUNT" -i "$secs" -s 16 -W 1 \
      "$TARGET" >"$log" 2>&1 || true
  else
    method=hping3
    log=$DIR/$kind.$method.$cond.log
    bounded "$RUN_LIMIT" ip netns exec "$P" hping3 -S -p 80 -c "$COUNT" -i "u$INTERVAL_US" \
      "$TARGET" >"$log" 2>&1 || true
  fi
  { echo "# kind=$kind method=$method sent=$COUNT"
    sed -n 's/.* \(time\|rtt\)=\([0-9.]*\) ms.*/\2/p' "$log" | awk '{ printf "%.0f\n", $1 * 1e6 }'
  } >"$DIR/$kind.$method.$cond.rtt"
}

peer_of() { if [ "$1" = icmp ]; then echo ping; else echo hping3; fi; }

# runs COND : every method on both kinds of probe.
runs() {
  local cond=$1 kind method f n
  for kind in icmp syn; do
    for method in sonde-kernel sonde-userspace "$(peer_of "$kind")"; do
      if [ "$cond" = idle ]; then quiet "$kind.$method.$cond"; fi
      case $method in
        sonde-*) sonde "$kind" "$method" "$cond" ;;
        *) peer "$kind" "$cond" ;;
      esac
      f=$DIR/$kind.$method.$cond.rtt
      n=0
      if [ -f "$f" ]; then n=$(awk '!/^#/' "$f" | wc -l); fi
      echo "  $cond $kind $method: $n of $COUNT answered"
    done
  done
}

deps
build
mkdir -p "$DIR"
# The PM QoS request holds while this shell keeps the file open (released on exit).
PM_QOS=${PM_QOS:-1}
if [ "$PM_QOS" = 1 ] && [ -w /dev/cpu_dma_latency ]; then
  exec 9>/dev/cpu_dma_latency
  printf '0x00000000' >&9
  echo "PM QoS: CPU wake-up latency held at 0 us (idle CPUs poll); PM_QOS=0 to compare"
  PM_DESC="PM QoS 0 us"
else
  PM_DESC="no PM QoS request"
fi
setup
echo "idle runs ($COUNT probes each, every $INTERVAL_US us, target $TARGET)"
runs idle
echo "loaded runs ($LOAD_DESC)"
load_start
runs load
load_stop
echo
"$BIN" report --dir "$DIR" --png "$OUT/fidelity-$STAMP.png" --tsv "$OUT/fidelity-$STAMP.tsv" \
  --markdown "$OUT/fidelity-$STAMP.md" --load "$LOAD_DESC; $PM_DESC"
if [ "${DOCS:-1}" = 1 ]; then
  cp "$OUT/fidelity-$STAMP.png" "$ROOT/docs/fidelity.png"
  echo "copied to docs/fidelity.png"
fi
