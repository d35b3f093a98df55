#!/usr/bin/env bash
# Two Postern binaries (say, before and after a change) on the same SQLite inbound load, in the
# same run, alternating: smtp-source -s SESS -l SIZE -m MSGS against port 25 (durable delivery
# into INBOX, every message counted afterwards). Prints each run and the medians.
#   bash bench/compare-binaries.sh OLD_BIN NEW_BIN     (MSGS, SESS, SIZE, ROUNDS as in cluster.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?old binary}; NEW=${2:?new binary}
MSGS=${MSGS:-12000}; SESS=${SESS:-24}; SIZE=${SIZE:-4096}; ROUNDS=${ROUNDS:-3}
export PEERS_DIR=${PEERS_DIR:-/tmp/postern-peers}
bash "${SHARED:-../shared}/peers/postfix.sh" setup >/dev/null  # provides smtp-source
WORK=$(mktemp -d /tmp/postern-ab.XXXXXX)
DNS_OUT=$(mktemp)
python3 bench/fake-dns.py >"$DNS_OUT" &
DNS_PID=$!
trap 'kill $DNS_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do [ -s "$DNS_OUT" ] && break; sleep 0.05; done
DNS_PORT=$(head -1 "$DNS_OUT")

run() {  # $1 = binary; prints msgs/s
  local bin=$1 D; D=$(mktemp -d "$WORK/run.XXXXXX")
  "$bin" init --dir "$D/data" --domain example.test --listen-ip 127.0.0.1 --port-offset 31000 >/dev/null
  [ "$(id -u)" = 0 ] && sed -i 's/^\[server\]$/[server]\nuser = "root"/' "$D/data/postern.toml"
  sed -i 's/^\[smtp\]$/[smtp]\nmax_connections_per_ip = 1000/' "$D/data/postern.toml"
  printf '\n[dns]\nserver = "127.0.0.1:%s"\n\n[greylist]\nenabled = false\n\n[delivery]\nenabled = false\n' "$DNS_PORT" >> "$D/data/postern.toml"
  echo 'Bench!Quantum#Orbit-2026' | "$bin" --dir "$D/data" user add b@example.test --password-stdin >/dev/null
  POSTERN_LOG=warn "$bin" --dir "$D/data" serve >/dev/null 2>"$D/serve.log" </dev/null &
  local pid=$!
  for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/31025) 2>/dev/null && break; sleep 0.05; done
  local t0 t1; t0=$(date +%s.%N)
  /usr/sbin/smtp-source -s "$SESS" -l "$SIZE" -m "$MSGS" -f a@remote.test -t b@example.test 127.0.0.1:31025
  t1=$(date +%s.%N)
  kill -TERM $pid; wait $pid || true
  local stored; stored=$(sqlite3 "$D/data/postern.db" "SELECT COUNT(*) FROM messages")
  [ "$stored" = "$MSGS" ] || { echo "stored $stored of $MSGS" >&2; exit 1; }
  echo "scale=1; $MSGS / ($t1 - $t0)" | bc
}

A=(); B=()
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then a=$(run "$OLD"); b=$(run "$NEW"); else b=$(run "$NEW"); a=$(run "$OLD"); fi
  A+=("$a"); B+=("$b"); echo "round $r: old $a msgs/s, new $b msgs/s"
done
python3 -c 'import statistics,sys; n=len(sys.argv)//2; a=sorted(map(float,sys.argv[1:n+1])); b=sorted(map(float,sys.argv[n+1:]))
print(f"old {statistics.median(a):.1f} ({a[0]:.1f}-{a[-1]:.1f})  new {statistics.median(b):.1f} ({b[0]:.1f}-{b[-1]:.1f})  new/old {statistics.median(b)/statistics.median(a):.3f}")' "${A[@]}" "${B[@]}"
