#!/usr/bin/env bash
# engine.sh - sonde's probe engine side by side with peer tools, on the same targets.
#
# Two namespaces of its own (names end in this shell's pid), nothing in the root namespace:
#   sonde-bench-p<pid>: vp0 198.18.0.1/24, route 198.19.0.0/16 via 198.18.0.2 (no default route)
#   sonde-bench-t<pid>: vt0 198.18.0.2/24, "local 198.19.0.0/16 dev lo" (answers for all of it),
#                       a listener on :80 (SYN-ACK), nothing on :81 (RST) nor udp :33434
#                       (ICMP port unreachable, icmp_ratemask=0), ICMP echo answered.
# Rows: SYN :80 (sonde syn | zmap | masscan), ICMP echo (sonde icmp | zmap | fping),
#       UDP :33434 (sonde udp | zmap udp), TCP connect :81 (sonde connect | nmap -sT | tokio),
#       HTTP GET /health from nginx on :8080, a new connection each (sonde http | wrk and h2load
#       with Connection: close | tokio+hyper), and keep-alive (sonde http-keepalive | wrk).
# HTTP rows (only when ONLY has one): nginx in the target namespace with a config of our own in a
# temp dir (NGINX_WORKERS worker processes, access_log off, listens on 198.18.0.2:8080 and
# *:8080, so on all of 198.19.0.0/16), started before the runs and stopped by its pid. wrk and
# h2load take one host per run, so every HTTP tool hits the one address HTTP_ADDR with
# HTTP_CONNS connections (sonde: --inflight checks at once); "sonde-many" (http row only, not in
# the ratios) is sonde over HTTP_MANY, one check per address. A probe = a request that reached
# nginx (nft: TCP to :8080 with a payload); matched = status 200 (wrk: requests minus non-2xx/3xx;
# h2load: 2xx; sonde and hyper: 200 and a body containing "OK").
# Measured per run: probes that reached the target (nft counters on vt0 ingress), answers
# matched (the tool's own count where it gives one, else answers that reached the prober:
# vp0 rx), per second of active time (0.2 s samples of the target's rx, each weighted by its
# share of the sustained rate, the median of the samples >= 50 % of the peak); tool CPU =
# user+sys of the process tree over the active time (1 core = 100 %); machine CPU from
# /proc/stat over the steady samples (>= 50 % of the peak; 2 cores = 100 %).
# Env: DUR (s per run, 1-30, default 5), REPEAT (rounds of every work, 1-9, default 1: the
#      table shows per work and tool the run with the median matched/s and the ratios of
#      those medians; rounds interleave the tools, so a slow spell of the machine or one
#      unlucky process does not decide a ratio; logs in round-N/), RATE (asked of zmap/masscan, default 1000000),
#      INFLIGHT (sonde stateful + tokio, default 4096), INFLIGHT_RAW (syn/icmp/udp, default 16384),
#      SKIP_BUILD=1 (use an existing binary), SONDE_BENCH (path of the binary), ONLY (row filter,
#      e.g. "syn icmp http-keepalive"; default all: syn icmp udp connect http http-keepalive),
#      ZMAP_THREADS (zmap -T, default 1 as in ../shared/bench/peers.sh),
#      PEERS (0: only sonde in the syn/icmp/udp rows, e.g. ONLY="syn syn syn" to compare
#      builds), SONDE_RATE (cap sonde's syn/icmp/udp/http probes/s: at a rate below the machine's
#      limit, machine CPU % compares the cost per probe of two builds), SYN_PORT (80 open, default; 81 closed), HTTP_CONNS (concurrent connections or checks of
#      every HTTP tool, default 64), RESETS (who resets the SYN-ACKs to sonde's probes, the
#      daemon's `syn_ack_reset`: tc, its default; xdp; stack, the prober's TCP stack as
#      for zmap), ANSWER_HOOK (which program classifies the answers to sonde's syn, icmp and
#      udp probes, the daemon's `answer_hook`: auto, its default, which is TC ingress on
#      this lab's veth; xdp; tc),
#      TARGET_XDP=1 (during the syn row the target's end of the veth runs a pass-everything
#      XDP program, without which a veth drops what XDP sends back; zmap aborts on the
#      send failures this lab then has at full rate, so use with PEERS=0 or SONDE_RATE), HTTP_ADDR (default 198.19.0.1), HTTP_MANY (default
#      198.19.0.0/16), NGINX_WORKERS (default 2), H2LOAD_N (requests h2load runs, since its -D
#      mode never ends with Connection: close; default: as many as wrk did in DUR s just before).
# Output: a table on stdout, bench/out/engine-<timestamp>.tsv, raw logs in bench/out/engine-<timestamp>/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DUR=${DUR:-5}
if [ "$DUR" -lt 1 ] || [ "$DUR" -gt 30 ]; then echo "DUR must be 1-30" >&2; exit 2; fi
REPEAT=${REPEAT:-1}
if ! [[ "$REPEAT" =~ ^[1-9]$ ]]; then echo "REPEAT must be 1-9" >&2; exit 2; fi
RATE=${RATE:-1000000}
INFLIGHT=${INFLIGHT:-4096}
INFLIGHT_RAW=${INFLIGHT_RAW:-16384}
ONLY=${ONLY:-syn icmp udp connect http http-keepalive}
ZMAP_THREADS=${ZMAP_THREADS:-1}  # zmap send threads (-T); 1 as in the shared peers script
PEERS=${PEERS:-1}         # 0: sonde's rows only (syn, icmp, udp), for A/B runs of sonde builds
SYN_PORT=${SYN_PORT:-80}   # 80: open (SYN-ACK, the prober resets it); 81: closed (RST)
RESETS=${RESETS:-tc}         # sonde-bench --resets: tc (the daemon's default), xdp, stack
ANSWER_HOOK=${ANSWER_HOOK:-auto}  # sonde-bench --answer-hook: auto (the daemon's default), xdp, tc
TARGET_XDP=${TARGET_XDP:-0}  # 1: syn row with a pass-everything XDP program on vt0 (see README)
HTTP_PORT=8080
HTTP_ADDR=${HTTP_ADDR:-198.19.0.1}
HTTP_MANY=${HTTP_MANY:-198.19.0.0/16}
HTTP_CONNS=${HTTP_CONNS:-64}
NGINX_WORKERS=${NGINX_WORKERS:-2}
H2LOAD_N=${H2LOAD_N:-}
HTTP_URL=http://$HTTP_ADDR:$HTTP_PORT/health
BIN=${SONDE_BENCH:-$ROOT/target/release/sonde-bench}
TARGETS=198.19.0.0/16
P=sonde-bench-p$$
T=sonde-bench-t$$
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/out
LOGS=$OUT/engine-$STAMP
TSV=$OUT/engine-$STAMP.tsv
LISTENER=   # pid of the :80 listener
NGINX=      # pid of nginx's timeout (process group of nginx's master and workers)
NGX=        # nginx's temp dir (config, pid file, error log, temp paths)
SAMPLER=    # pid of the running sampler's timeout
GROUP=      # process group of the running tool (its timeout's pid)
PEER_XDP=   # pid of the xdp-peer holder (syn row)
BG=0        # machine busy % just before the current run

cleanup() {
  [ -z "$GROUP" ] || kill -KILL -- "-$GROUP" 2>/dev/null || true
  [ -z "$SAMPLER" ] || kill "$SAMPLER" 2>/dev/null || true
  [ -z "$LISTENER" ] || kill "$LISTENER" 2>/dev/null || true
  [ -z "$PEER_XDP" ] || kill -KILL "$PEER_XDP" 2>/dev/null || true
  nginx_stop
  ip netns del "$P" 2>/dev/null || true
  ip netns del "$T" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

inP() { ip netns exec "$P" "$@"; }
inT() { ip netns exec "$T" "$@"; }

http_rows() { [[ " $ONLY " == *" http "* || " $ONLY " == *" http-keepalive "* ]]; }

deps() {
  local missing=() t
  for t in masscan zmap fping nmap nft; do command -v "$t" >/dev/null || missing+=("$t"); done
  if http_rows; then
    for t in nginx wrk h2load; do command -v "$t" >/dev/null || missing+=("$t"); done
  fi
  [ -x /usr/bin/time ] || missing+=(time)
  [ ${#missing[@]} -eq 0 ] && return 0
  missing=("${missing[@]/nft/nftables}")
  missing=("${missing[@]/h2load/nghttp2-client}")
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

build() {
  [ "${SKIP_BUILD:-0}" = 1 ] && return 0
  (cd "$ROOT" && cargo xtask build-ebpf && cargo build --release -p sonde-bench)
}

setup() {
  ip netns add "$P"
  ip netns add "$T"
  ip link add vp0 netns "$P" type veth peer name vt0 netns "$T"
  inP ip link set lo up
  inT ip link set lo up
  inP ip addr add 198.18.0.1/24 dev vp0
  inT ip addr add 198.18.0.2/24 dev vt0
  inP ip link set vp0 up
  inT ip link set vt0 up
  inT ip route add local "$TARGETS" dev lo
  inP ip route add "$TARGETS" via 198.18.0.2 dev vp0
  inT sysctl -qw net.ipv4.icmp_ratelimit=0 net.ipv4.icmp_ratemask=0 \
    net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535
  inP sysctl -qw net.ipv4.ip_local_port_range="10000 60999"
  # Probes that reach the target, by kind (netdev ingress: before the stack). HTTP: "conn" counts
  # new connections to :8080, "req" requests: segments to :8080 with a payload of more than 28
  # bytes (SYN is 60 bytes of IP + TCP, ACK and FIN 52; wrk's request, the shortest, ~100).
  inT nft -f - <<'EOF'
table netdev sb {
  chain in {
    type filter hook ingress device "vt0" priority 0; policy accept;
    tcp flags & (syn | ack | rst) == syn counter comment "syn"
    icmp type echo-request counter comment "echo"
    udp dport 33434 counter comment "udp"
    tcp dport 8080 tcp flags & (syn | ack | rst) == syn counter comment "conn"
    tcp dport 8080 ip length > 80 counter comment "req"
  }
}
EOF
  # An open port 80 (the kernel answers SYN-ACK; nobody needs to accept). Bounded life.
  ip netns exec "$T" python3 -c 'import socket,sys,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(65535); time.sleep(int(sys.argv[1]))' "$((DUR * 40 + 300))" </dev/null >/dev/null 2>&1 &
  LISTENER=$!
  if http_rows; then nginx_start; fi
  sleep 0.5
  inP ping -c1 -W1 198.19.0.1 >/dev/null
}

# nginx in the target namespace: config, pid file, logs and temp paths in a temp dir of our own;
# runs in the foreground (daemon off) under a timeout (bounded life), stopped by that pid.
nginx_start() {
  NGX=$(mktemp -d /tmp/sonde-bench-nginx.XXXXXX)
  chmod 755 "$NGX"
  cat >"$NGX/nginx.conf" <<EOF
daemon off;
worker_processes $NGINX_WORKERS;
worker_rlimit_nofile 20000;
pid $NGX/nginx.pid;
error_log $NGX/error.log;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $NGX/body;
  proxy_temp_path $NGX/proxy;
  fastcgi_temp_path $NGX/fastcgi;
  uwsgi_temp_path $NGX/uwsgi;
  scgi_temp_path $NGX/scgi;
  server {
    listen $HTTP_PORT backlog=65535;
    listen 198.18.0.2:$HTTP_PORT;
    location = /health { return 200 "OK\n"; }
  }
}
EOF
  timeout -k 5 $((DUR * 40 + 300)) ip netns exec "$T" \
    nginx -e "$NGX/error.log" -p "$NGX" -c "$NGX/nginx.conf" </dev/null >"$NGX/out.log" 2>&1 &
  NGINX=$!
  local up=0
  for _ in $(seq 50); do
    kill -0 "$NGINX" 2>/dev/null || break
    if [ -s "$NGX/nginx.pid" ] && inP bash -c "exec 3<>/dev/tcp/$HTTP_ADDR/$HTTP_PORT" 2>/dev/null
    then up=1; break; fi
    sleep 0.1
  done
  if [ "$up" = 0 ]; then
    echo "nginx did not start:" >&2; cat "$NGX/out.log" "$NGX/error.log" >&2 2>/dev/null; exit 1
  fi
}
nginx_stop() {
  if [ -n "$NGINX" ]; then
    kill -TERM "$NGINX" 2>/dev/null || true   # timeout passes it on to nginx's master
    for _ in $(seq 50); do kill -0 "$NGINX" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$NGINX" 2>/dev/null || true   # its process group: master and workers
    wait "$NGINX" 2>/dev/null || true
    NGINX=
  fi
  [ -z "$NGX" ] || rm -rf "$NGX"
  NGX=
}
# CPU ticks used so far by nginx (master and workers), "user sys" ("0 0" without nginx).
nginx_ticks() {
  local m
  m=$( [ -n "$NGX" ] && cat "$NGX/nginx.pid" 2>/dev/null) || { echo 0 0; return; }
  # shellcheck disable=SC2046  # one word per pid
  cat "/proc/$m/stat" $(pgrep -P "$m" | sed 's|.*|/proc/&/stat|') 2>/dev/null |
    awk '{ sub(/.*\) /, ""); u += $12; s += $13 } END { print u + 0, s + 0 }'
}

nft_count() {  # KIND -> packets counted so far
  inT nft list chain netdev sb in | awk -v k="\"$1\"" '$0 ~ "comment " k {
    for (i = 1; i < NF; i++) if ($i == "packets") print $(i + 1) }'
}
# Busy % of the whole machine over 0.5 s (/proc/stat; both cores = 100 %).
busy_pct() {
  local s0 s1
  s0=$(head -1 /proc/stat); sleep 0.5; s1=$(head -1 /proc/stat)
  echo "$s0 $s1" | awk '{ for (i = 2; i <= 9; i++) { t0 += $i; t1 += $(i + 11) }
    d = t1 - t0; if (d <= 0) d = 1; print int(100 * (1 - ($16 + $17 - $5 - $6) / d) + 0.5) }'
}
# Wait (at most 20 s) until other work on the machine (builds, tests) leaves it <= 10 % busy;
# the last reading goes into the results as bg_busy_pct.
quiet() {
  for _ in $(seq 40); do BG=$(busy_pct); [ "$BG" -le 10 ] && return 0; done
  echo "  (machine still ${BG}% busy before this run: its numbers are disturbed)" >&2
}
ctr() { ip netns exec "$1" cat "/sys/class/net/$2/statistics/$3"; }
gwmac() { inT cat /sys/class/net/vt0/address; }

# run NAME KIND CMD... : CMD in the prober namespace, bounded to DUR+12 s (INT, then KILL of
# its process group), sampled from the target namespace every 0.2 s.
run() {
  local name=$1 kind=$2; shift 2
  local log=$LOGS/$name.log smp=$LOGS/$name.samples rc=0
  # shellcheck disable=SC2016  # expanded by the inner bash
  timeout $((DUR + 40)) ip netns exec "$T" bash -c 'd=/sys/class/net/vt0/statistics
    while :; do read -r rx <"$d/rx_packets"; read -r tx <"$d/tx_packets"
      read -r _ u n s i w q sq st _ </proc/stat
      echo "$EPOCHREALTIME $rx $tx $u $n $s $i $w $q $sq $st"; sleep 0.2; done' >"$smp" &
  SAMPLER=$!
  sleep 0.5
  local p0 r0 a0 c0 nu0 ns0 nu1 ns1
  quiet
  p0=$(nft_count "$kind"); r0=$(ctr "$P" vp0 rx_packets); a0=$(ctr "$T" vt0 tx_packets)
  c0=$(nft_count conn); read -r nu0 ns0 < <(nginx_ticks)
  timeout -s INT -k 5 $((DUR + 12)) /usr/bin/time -o "$log.time" -f "%e %U %S" \
    ip netns exec "$P" "$@" >"$log" 2>&1 &
  GROUP=$!
  wait "$GROUP" || rc=$?
  kill -KILL -- "-$GROUP" 2>/dev/null || true
  GROUP=
  sleep 0.5
  kill "$SAMPLER" 2>/dev/null || true
  wait "$SAMPLER" 2>/dev/null || true
  SAMPLER=
  [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || echo "  ($name exited with $rc, see $log)" >&2
  read -r nu1 ns1 < <(nginx_ticks)
  echo "$(($(nft_count "$kind") - p0)) $(($(ctr "$P" vp0 rx_packets) - r0)) \
$(($(ctr "$T" vt0 tx_packets) - a0)) $(($(nft_count conn) - c0)) $((nu1 - nu0)) $((ns1 - ns0)) \
$(getconf CLK_TCK)" >"$log.counts"
}

# row WORK TOOL MATCHED_SOURCE : append one TSV line (numbers from the logs of the last run)
row() {
  python3 - "$1" "$2" "$3" "$LOGS/$2-$1.log" "$BG" <<'EOF' >>"$TSV"
import json, os, re, sys
work, tool, src, log, bg = sys.argv[1:]
probes, prober_rx, answers, conns, server_user, server_sys, hz = (
    int(x) for x in open(log + ".counts").read().split())
rows = [[float(x) for x in l.split()] for l in open(log.replace(".log", ".samples")) if len(l.split()) == 11]
iv = [(a, b) for a, b in zip(rows, rows[1:]) if b[0] > a[0]]
rate = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in iv]
peak = max(rate, default=0)
hi = sorted(r for r in rate if r >= 0.5 * peak and r > 0)
sus = hi[len(hi) // 2] if hi else 1
# active time: every sample interval, weighted by its share of the sustained rate (so a
# half-busy first or last interval counts half)
secs = sum((b[0] - a[0]) * min(1, r / sus) for (a, b), r in zip(iv, rate) if r >= 0.1 * peak) or 1e-9
steady = [x for x, r in zip(iv, rate) if r >= 0.5 * peak and r > 0]
cpu = [sum(b[i] - a[i] for a, b in steady) for i in range(3, 11)]
machine = 100 * (sum(cpu) - cpu[3] - cpu[4]) / (sum(cpu) or 1)
try:
    _, us, sy = (float(x) for x in open(log + ".time").read().split()[-3:])
except (OSError, ValueError):
    us = sy = 0.0
txt = open(log, errors="replace").read()
matched = prober_rx
if src == "sonde":
    j = json.loads([l for l in txt.splitlines() if l.startswith("{")][-1]); matched = j["matched"]
elif src == "zmap":
    m = json.load(open(log.replace(".log", ".meta.json")))
    matched = m.get("success_total", 0) + m.get("failure_total", 0)
elif src == "fping":
    matched = sum(int(b) for a, b in re.findall(r"xmt/rcv/%loss = (\d+)/(\d+)", txt))
elif src == "wrk":
    done = re.search(r"(\d+) requests in", txt)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", txt)
    matched = (int(done.group(1)) if done else 0) - (int(bad.group(1)) if bad else 0)
elif src == "h2load":
    ok = re.search(r"status codes: (\d+) 2xx", txt)
    matched = int(ok.group(1)) if ok else 0
pct = 100 * matched / probes if probes else 0
# machine CPU time per matched answer, in microseconds (all cores, steady state)
# user time on the machine that was neither the tool's nor nginx's: other work (a build, tests)
# disturbed the run
foreign = ((cpu[0] + cpu[1]) / (sum(cpu) or 1) * (os.cpu_count() or 1) - us / secs
           - server_user / hz / secs)
per = machine / 100 * (os.cpu_count() or 1) * 1e6 / (matched / secs) if matched else 0
# HTTP rows: nginx's CPU (1 core = 100 %) and new connections per request that reached it
http = work.startswith("http")
server = f"{100 * (server_user + server_sys) / hz / secs:.0f}" if http else "-"
cpr = f"{conns / probes:.3f}" if http and probes else "-"
print("\t".join([work, tool, f"{probes / secs:.0f}", f"{matched / secs:.0f}", f"{pct:.1f}",
                 f"{100 * (us + sy) / secs:.0f}", f"{machine:.0f}", f"{secs:.2f}", src,
                 str(probes), str(matched), str(answers), bg, f"{per:.1f}", f"{max(foreign, 0):.2f}",
                 server, cpr]))
EOF
  tail -1 "$TSV" | cut -f1-7
}

sonde() {  # WORK PORT INFLIGHT
  run "sonde-$1" "$2" "$BIN" "$1" --duration "$DUR" --targets "$TARGETS" --port "$3" \
    --inflight "$4" --threads 2 --iface vp0 ${SONDE_RATE:+--rate "$SONDE_RATE"} \
    --resets "$RESETS" --answer-hook "$ANSWER_HOOK"
}
zmap_run() {  # NAME KIND ARGS...
  local name=$1 kind=$2; shift 2
  run "$name" "$kind" zmap -i vp0 -G "$(gwmac)" -S 198.18.0.1 -r "$RATE" -P 100 -t "$DUR" -c 1 \
    -b /dev/null -T "$ZMAP_THREADS" -q -o /dev/null -m "$LOGS/$name.meta.json" "$@" "$TARGETS"
}

peer_xdp_start() {  # the pass-everything XDP program on vt0, for the syn row (see README)
  [ "$TARGET_XDP" = 1 ] || return 0
  inT timeout -s KILL 300 "$BIN" xdp-peer --iface vt0 --duration 290 --targets "$TARGETS" \
    >"$LOGS/xdp-peer.log" 2>&1 &
  PEER_XDP=$!
  local i
  for i in $(seq 50); do
    inT ip -d link show vt0 | grep -q "prog/xdp" && return 0
    sleep 0.1
  done
  echo "xdp-peer did not attach to vt0: $(cat "$LOGS/xdp-peer.log")" >&2; return 1
}
peer_xdp_stop() {
  [ -z "$PEER_XDP" ] && return 0
  kill -KILL "$PEER_XDP" 2>/dev/null || true; wait "$PEER_XDP" 2>/dev/null || true; PEER_XDP=
}
work_syn() {
  peer_xdp_start
  sonde syn syn "$SYN_PORT" "$INFLIGHT_RAW"; row syn sonde sonde
  if [ "$PEERS" = 1 ]; then
    zmap_run zmap-syn syn -p "$SYN_PORT"; row syn zmap zmap
    run masscan-syn syn timeout -s INT "$DUR" masscan "$TARGETS" -p"$SYN_PORT" --infinite --rate "$RATE" \
      --interface vp0 --adapter-ip 198.18.0.1 --router-mac "$(gwmac)" --adapter-port 61000 --wait 0
    row syn masscan veth
  fi
  peer_xdp_stop
}
work_icmp() {
  sonde icmp echo 0 "$INFLIGHT_RAW"; row icmp sonde sonde
  [ "$PEERS" = 1 ] || return 0
  zmap_run zmap-icmp echo -M icmp_echoscan; row icmp zmap zmap
  # fping keeps each sequence number 10 s: one run is capped at 65535 pings.
  run fping-icmp echo fping -q -g 198.19.0.0/22 -c 60 -i 0 -p 1 -t 500 -r 0; row icmp fping fping
}
work_udp() {
  sonde udp udp 33434 "$INFLIGHT_RAW"; row udp sonde sonde
  [ "$PEERS" = 1 ] || return 0
  zmap_run zmap-udp udp -M udp -p 33434 --probe-args=text:sonde-bench; row udp zmap zmap
}
# HTTP: every tool against HTTP_URL with HTTP_CONNS connections (wrk/h2load: one host per run).
sonde_http() {  # NAME WORK TARGETS
  run "$1" req "$BIN" "$2" --duration "$DUR" --targets "$3" --port "$HTTP_PORT" --path /health \
    --expect-body OK --inflight "$HTTP_CONNS" --threads 2 ${SONDE_RATE:+--rate "$SONDE_RATE"}
}
work_http() {
  sonde_http sonde-http http "$HTTP_ADDR"; row http sonde sonde
  run wrk-http req wrk -t2 -c"$HTTP_CONNS" -d"${DUR}s" -H "Connection: close" "$HTTP_URL"
  row http wrk wrk
  # h2load's timing mode (-D) never finishes with Connection: close: a request count instead,
  # what wrk did in DUR s (so about DUR s; the active time is measured, not assumed).
  local n=$H2LOAD_N
  [ -n "$n" ] ||
    n=$(awk -F'\t' '$1 == "http" && $2 == "wrk" { n = $11 } END { print n + 0 }' "$TSV")
  [ "$n" -ge 1000 ] || n=$((20000 * DUR))
  run h2load-http req h2load --h1 -n "$n" -c "$HTTP_CONNS" -t 2 -m 1 -H "Connection: close" \
    "$HTTP_URL"
  row http h2load h2load
  run hyper-http req "$BIN" http-hyper --duration "$DUR" --targets "$HTTP_ADDR" \
    --port "$HTTP_PORT" --path /health --expect-body OK --inflight "$HTTP_CONNS" --threads 2
  row http hyper sonde
  sonde_http sonde-many-http http "$HTTP_MANY"; row http sonde-many sonde
}
work_http_keepalive() {
  sonde_http sonde-http-keepalive http-keepalive "$HTTP_ADDR"; row http-keepalive sonde sonde
  run wrk-http-keepalive req wrk -t2 -c"$HTTP_CONNS" -d"${DUR}s" "$HTTP_URL"
  row http-keepalive wrk wrk
}
work_connect() {
  sonde connect syn 81 "$INFLIGHT"; row connect sonde sonde
  run nmap-connect syn timeout -s INT "$DUR" nmap -n -Pn -sT -p 81 --min-rate 1000000 \
    --max-retries 0 --min-hostgroup 4096 "$TARGETS"
  row connect nmap veth
  run tokio-connect syn "$BIN" connect-tokio --duration "$DUR" --targets "$TARGETS" --port 81 \
    --inflight "$INFLIGHT" --threads 2
  row connect tokio sonde
}

table() {  # ratio sonde / peer of matched per second, per work (medians over the rounds)
  awk -F'\t' 'BEGIN { OFS = "\t"; print "work", "tool", "probes/s sent", "matched/s",
      "matched %", "tool CPU %", "machine CPU %", "sonde/peer", "nginx CPU %", "conns/probe", "runs" }
    /^#/ { next }
    { k = $1 SUBSEP $2; if (!(k in n)) order[++nk] = k; n[k]++; line[k, n[k]] = $0; val[k, n[k]] = $4 }
    END {
      # Per work and tool, the run with the median matched/s (the lower middle one of an
      # even count), printed whole so that its columns belong together.
      for (i = 1; i <= nk; i++) { k = order[i]; m = n[k]
        for (a = 1; a <= m; a++) idx[a] = a
        for (a = 2; a <= m; a++) for (b = a; b > 1 && val[k, idx[b]] < val[k, idx[b - 1]]; b--) {
          t = idx[b]; idx[b] = idx[b - 1]; idx[b - 1] = t }
        split(line[k, idx[int((m + 1) / 2)]], f, "\t"); pick[k] = line[k, idx[int((m + 1) / 2)]]
        if (f[2] == "sonde") s[f[1]] = f[4]
        if (f[2] !~ /^sonde/ && f[4] > best[f[1]]) { best[f[1]] = f[4]; who[f[1]] = f[2] }
        v[f[1], f[2]] = f[4] }
      for (i = 1; i <= nk; i++) { k = order[i]; split(pick[k], f, "\t")
        r = (f[2] ~ /^sonde/ || f[4] == 0) ? "-" : sprintf("%.2f", s[f[1]] / f[4])
        t = (f[13] > 10 || f[15] > 0.15) ? f[2] "(!)" : f[2]; if (t != f[2]) bad = 1
        print f[1], t, f[3], f[4], f[5], f[6], f[7], r, f[16], f[17], n[k] }
      m = split("syn 2 zmap icmp 1.5 zmap udp 1.5 zmap connect 1.2 best http 1 best " \
        "http-keepalive 0.8 wrk", g, " ")
      for (i = 1; i < m; i += 3) { w = g[i]; if (!(w in s)) continue
        ref = g[i + 2] == "best" ? best[w] : v[w, g[i + 2]]
        by = g[i + 2] == "best" ? who[w] : g[i + 2]
        x = ref > 0 ? s[w] / ref : 0
        printf "goal\t%s >= %sx %s\t%.2fx\t%s\n", w, g[i + 1], by, x, (x >= g[i + 1] ? "met" : "NOT met") }
      if (bad) print "(!): other work was running on the machine during that run; rerun it (ONLY=work)" }' \
    "$TSV" | column -t -s $'\t'
}

deps
build
mkdir -p "$LOGS"
cd "$LOGS"   # masscan writes paused.conf into its working directory
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) CPU DUR=$DUR RATE=$RATE" \
  "INFLIGHT=$INFLIGHT INFLIGHT_RAW=$INFLIGHT_RAW HTTP_CONNS=$HTTP_CONNS NGINX_WORKERS=$NGINX_WORKERS" \
  "HTTP_ADDR=$HTTP_ADDR HTTP_MANY=$HTTP_MANY" >"$TSV"
echo -e "# work\ttool\tprobes_per_s\tmatched_per_s\tmatched_pct\ttool_cpu_pct\tmachine_cpu_pct\tactive_s\tmatched_from\tprobes\tmatched\tanswers\tbg_busy_pct\tmachine_us_per_match\tforeign_user_cores\tserver_cpu_pct\tconns_per_probe" >>"$TSV"
setup
LOGS0=$LOGS
for ((ROUND = 1; ROUND <= REPEAT; ROUND++)); do
  if [ "$REPEAT" -gt 1 ]; then
    LOGS=$LOGS0/round-$ROUND
    mkdir -p "$LOGS"
    cd "$LOGS"
    echo "round $ROUND of $REPEAT" >&2
  fi
  for w in $ONLY; do "work_${w//-/_}"; done
done
echo
table
echo "(tool and nginx CPU: 1 core = 100 %; machine CPU: both cores = 100 %; $TSV)"
