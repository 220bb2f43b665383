#!/usr/bin/env bash
# etcd.sh - etcd writes of a sonde cluster against its probes and its transitions.
#
# Runs sonde-etcd-bench (bench/src/etcd_load.rs): a lab of its own (namespaces with unique
# names, removed on exit and on Ctrl-C; addresses from 198.18.0.0/15 only, no veth end in the
# root namespace, no default route), a 3-member etcd cluster, NODES real `sonde run --etcd`
# daemons and a target namespace answering for 198.19.0.0/16. CHECKS checks are stored in
# etcd; after start-up it measures a steady phase (every target up) and a flapping phase
# (FLAPPING targets down and up every FLAP_PERIOD/2 s), DUR s each, and prints probes/s,
# transitions/s and etcd writes/s (store revisions, and etcd's mvcc put/txn/delete counters).
# Env: CHECKS (default 10000), NODES (3), REPLICAS (2), KIND (tcp_syn), INTERVAL (2s),
#      FLAPPING (5), FLAP_PERIOD (8), DUR (24), SKIP_BUILD=1 (use existing release binaries).
# Output: the table on stdout, bench/out/etcd-<timestamp>.txt and .tsv.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/out
mkdir -p "$OUT"
if [ "$(id -u)" != 0 ]; then echo "etcd.sh needs root (namespaces, XDP)" >&2; exit 2; fi
command -v etcd >/dev/null || { echo "etcd missing: apt-get install etcd-server etcd-client" >&2; exit 2; }
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo xtask build-ebpf && \
        cargo build --release -p sonde -p sonde-bench --bin sonde --bin sonde-etcd-bench)
fi
BIN=$ROOT/target/release
"$BIN/sonde-etcd-bench" --sonde "$BIN/sonde" \
    --checks "${CHECKS:-10000}" --nodes "${NODES:-3}" --replicas "${REPLICAS:-2}" \
    --kind "${KIND:-tcp_syn}" --interval "${INTERVAL:-2s}" --flapping "${FLAPPING:-5}" \
    --flap-period "${FLAP_PERIOD:-8}" --duration "${DUR:-24}" --tsv "$OUT/etcd-$STAMP.tsv" \
    "$@" | tee "$OUT/etcd-$STAMP.txt"
