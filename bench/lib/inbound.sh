# Shared by bench/inbound-checks.sh and bench/group-commit.sh: settings, the Postfix peer (for
# smtp-source and the "accepted into its queue" figure), a loopback DNS server, and one run of
# smtp-source against a fresh Postern data directory.
#   run_postern CHECKS [BATCH_SYNC]   -> msgs/s (every message checked stored); the p50 and p99
#                                        of postern_accept_seconds (end of DATA to 250, in ms,
#                                        read off the histogram's buckets) in $WORK/latency
#   run_postfix                       -> msgs/s accepted by Postfix
# RCPTS (default 1) recipients per message: smtp-source names them b@, 2b@, 3b@, ... (one account each
# on Postern; Postfix's peer takes any address of the domain).
#   stats VALUES...                   -> "median (min-max)"
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${SHARED:-$ROOT/../shared}
MSGS=${MSGS:-8000}
SESS=${SESS:-20}
SIZE=${SIZE:-4096}
RCPTS=${RCPTS:-1}
ROUNDS=${ROUNDS:-4}
OFFSET=${OFFSET:-31000}
PORT=$((25 + OFFSET))
export PEERS_DIR=${PEERS_DIR:-/tmp/postern-peers}
export MSGS SESS SIZE RCPTS
METRICS_PORT=$((9100 + OFFSET))

echo "== installing the Postfix peer (provides smtp-source)"
bash "$SHARED/peers/postfix.sh" setup >/dev/null
echo "== building postern (release)"
cargo build --release --locked -p postern >/dev/null 2>&1
BIN=${POSTERN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/postern}

DNS_OUT=$(mktemp)
python3 bench/fake-dns.py >"$DNS_OUT" &
DNS_PID=$!
# Data directories are removed when the script ends, not after each run: this machine's root
# filesystem is ext4 without a journal, where the inode allocator skips every inode freed in the
# last minute (recently_deleted() in fs/ext4/ialloc.c), one by one. Removing 20,000 files right
# before a run made that run (Postern's or Postfix's, whichever came next) spend a quarter of its
# CPU time looking for free inodes.
WORK=$(mktemp -d /tmp/postern-bench.XXXXXX)
trap 'kill $DNS_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do [ -s "$DNS_OUT" ] && break; sleep 0.05; done
DNS_PORT=$(head -1 "$DNS_OUT")

run_postern() {  # $1 = true|false (checks), $2 = true|false (batch_sync, default true); prints msgs/s
  local D; D=$(mktemp -d "$WORK/run.XXXXXX")
  "$BIN" init --dir "$D/data" --domain example.test --listen-ip 127.0.0.1 --port-offset "$OFFSET" >/dev/null
  # benchmarks run as root: the server stays root here (a real one runs as [server] user)
  [ "$(id -u)" = 0 ] && sed -i 's/^\[server\]$/[server]\nuser = "root"/' "$D/data/postern.toml"
  sed -i 's/^\[smtp\]$/[smtp]\nmax_connections_per_ip = 1000/' "$D/data/postern.toml"
  sed -i "s/^\[storage\]\$/[storage]\nbatch_sync = ${2:-true}/" "$D/data/postern.toml"
  printf '\n[dns]\nserver = "127.0.0.1:%s"\n\n[inbound]\nchecks = %s\n\n[greylist]\nenabled = false\n\n[delivery]\nenabled = false\n\n[metrics]\nlisten = "127.0.0.1:%s"\n' \
    "$DNS_PORT" "$1" "$METRICS_PORT" >> "$D/data/postern.toml"
  local rcpts=(b)
  [ "$RCPTS" -gt 1 ] && rcpts=(b $(seq -f '%gb' 2 "$RCPTS"))
  for r in "${rcpts[@]}"; do
    echo 'Bench!Quantum#Orbit-2026' | "$BIN" --dir "$D/data" user add "$r@example.test" --password-stdin >/dev/null
  done
  POSTERN_LOG=warn "$BIN" --dir "$D/data" serve >/dev/null 2>"$D/serve.log" </dev/null &
  local pid=$!
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
  local t0 t1; t0=$(date +%s.%N)
  /usr/sbin/smtp-source -s "$SESS" -l "$SIZE" -m "$MSGS" -r "$RCPTS" -f a@example.test -t b@example.test "127.0.0.1:$PORT"
  t1=$(date +%s.%N)
  curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | quantiles postern_accept_seconds_bucket >"$WORK/latency" || true
  kill -TERM $pid; wait $pid || true
  local stored headers
  stored=$(sqlite3 "$D/data/postern.db" "SELECT COUNT(*) FROM messages")
  [ "$stored" = "$((MSGS * RCPTS))" ] || { echo "only $stored of $((MSGS * RCPTS)) stored" >&2; exit 1; }
  if [ "$1" = true ]; then
    # every stored message carries our Authentication-Results with the SPF and DMARC verdicts
    blob=$(sqlite3 "$D/data/postern.db" "SELECT blob_id FROM messages ORDER BY id DESC LIMIT 1")
    headers=$(head -c 2000 "$D/data/blobs/${blob:0:2}/$blob")
    echo "$headers" | grep -q "spf=pass" && echo "$headers" | grep -q "dmarc=pass" \
      || { echo "checks did not run: $headers" >&2; exit 1; }
  fi
  echo "scale=1; $MSGS / ($t1 - $t0)" | bc
}

run_postfix() {
  local PF=$SHARED/peers/postfix.sh out t0 t1
  bash "$PF" stop >/dev/null 2>&1 || true
  bash "$PF" start >/dev/null
  if [ "$RCPTS" = 1 ]; then
    out=$(bash "$PF" bench)
    echo "$out" | sed -n 's/.* = \([0-9.]*\) msgs\/s (accepted).*/\1/p'
  else
    # the peer script's bench sends one recipient: the same smtp-source line as above, on its port
    t0=$(date +%s.%N)
    /usr/sbin/smtp-source -s "$SESS" -l "$SIZE" -m "$MSGS" -r "$RCPTS" -f a@example.test -t b@example.test 127.0.0.1:2525
    t1=$(date +%s.%N)
    echo "scale=1; $MSGS / ($t1 - $t0)" | bc
  fi
  bash "$PF" stop >/dev/null
}

quantiles() {  # Prometheus histogram text on stdin, metric name $1 -> "p50 p99" in ms
  python3 -c '
import re, sys
name = sys.argv[1]
b = []
for line in sys.stdin:
    m = re.match(name + r"\{.*le=\"([^\"]+)\".*\} (\S+)", line)
    if m:
        b.append((float("inf") if m[1] == "+Inf" else float(m[1]), float(m[2])))
b.sort()
if not b:
    print("- -")
    sys.exit()
total = b[-1][1]
def q(p):
    rank, lo, below = p * total, 0.0, 0.0
    for le, n in b:
        if n >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * (rank - below) / max(n - below, 1e-9)
        lo, below = le, n
print("%.2f %.2f" % (q(0.5) * 1000, q(0.99) * 1000))
' "$1"
}

stats() {  # median min max of the arguments
  printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f (%.1f-%.1f)", m, a[1], a[NR]}'
}

