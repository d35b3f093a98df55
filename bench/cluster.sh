#!/usr/bin/env bash
# Throughput of one, two and three Postern nodes on one PostgreSQL (and one Redis) against the
# SQLite single node, in the same run, on this machine (every node, PostgreSQL, Redis and the
# load generator share its cores).
#
#   smtp-source -s SESS -l SIZE -m MSGS -> the SQLite node's port 25 (durable delivery into INBOX)
#   the same load split over the N PostgreSQL nodes (one smtp-source per node, SESS/N sessions and
#   MSGS/N messages each, at once) -> msgs/s from the first connection to the last 250
#
# Each 250 means the message and its body are committed (SQLite: body fsynced with syncfs, row in
# the WAL with synchronous=FULL; PostgreSQL: body and rows in one transaction, fsync on, the
# default synchronous_commit). Every message is counted in the database afterwards. Rounds
# alternate the order; the median and the range are printed, as Markdown rows for BENCHMARKS.md.
#   MSGS=12000 SESS=24 ROUNDS=3 bash bench/cluster.sh
#
# MODE=imap: the IMAP load instead (bench/imap-load.py: CLIENTS clients over implicit TLS, each
# looping LOGIN, SELECT, FETCH, STORE, APPEND, LOGOUT for SECONDS_RUN seconds), the clients split
# over the nodes (one generator per node, each with its own users so that their set-up does not
# collide); IMAP commands per second summed over the generators, and none may fail.
#   MODE=imap CLIENTS=24 SECONDS_RUN=20 ROUNDS=3 bash bench/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${SHARED:-$ROOT/../shared}
MSGS=${MSGS:-12000}
SESS=${SESS:-24}
SIZE=${SIZE:-4096}
ROUNDS=${ROUNDS:-3}
MODE=${MODE:-smtp}
CLIENTS=${CLIENTS:-24}
SECONDS_RUN=${SECONDS_RUN:-20}
USERS=12   # bench1..bench12, split over the generators
export PEERS_DIR=${PEERS_DIR:-/tmp/postern-peers}

echo "== the Postfix peer provides smtp-source"
bash "$SHARED/peers/postfix.sh" setup >/dev/null
echo "== building postern (release)"
cargo build --release --locked -p postern >/dev/null 2>&1
BIN=${POSTERN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/postern}

WORK=$(mktemp -d /tmp/postern-cluster-bench.XXXXXX)
chmod 755 "$WORK"  # the private PostgreSQL below runs as the postgres user
DNS_OUT=$(mktemp)
python3 bench/fake-dns.py >"$DNS_OUT" &
DNS_PID=$!
PG=$(bash tests/pg.sh start "$WORK/pg")
REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK" >/dev/null 2>&1 &
REDIS_PID=$!
cleanup() {
  kill $DNS_PID $REDIS_PID 2>/dev/null || true
  pkill -f "$WORK/.*/data serve" 2>/dev/null || true
  bash tests/pg.sh stop "$WORK/pg" || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -s "$DNS_OUT" ] && break; sleep 0.05; done
DNS_PORT=$(head -1 "$DNS_OUT")
export PGPASSWORD=mailpass POSTERN_BENCH_PG_PASSWORD=mailpass

# init_node DIR OFFSET [DATABASE_URL NODE_NAME]: a data directory for the benchmark
init_node() {
  local d=$1 off=$2 url=${3:-} name=${4:-}
  if [ -n "$url" ]; then
    "$BIN" init --dir "$d" --domain example.test --listen-ip 127.0.0.1 --port-offset "$off" \
      --database "$url" --database-password env:POSTERN_BENCH_PG_PASSWORD >/dev/null
  else
    "$BIN" init --dir "$d" --domain example.test --listen-ip 127.0.0.1 --port-offset "$off" >/dev/null
  fi
  [ "$(id -u)" = 0 ] && sed -i 's/^\[server\]$/[server]\nuser = "root"/' "$d/postern.toml"
  sed -i 's/^\[smtp\]$/[smtp]\nmax_connections_per_ip = 1000/' "$d/postern.toml"
  sed -i 's/^\[imap\]$/[imap]\nmax_connections_per_ip = 1000\nmax_sessions_per_account = 1000/' "$d/postern.toml"
  printf '\n[dns]\nserver = "127.0.0.1:%s"\n\n[greylist]\nenabled = false\n\n[delivery]\nenabled = false\n' \
    "$DNS_PORT" >> "$d/postern.toml"
  if [ -n "$name" ]; then
    printf '\n[cluster]\nredis = "redis://127.0.0.1:%s"\nnode_name = "%s"\n' "$REDIS_PORT" "$name" >> "$d/postern.toml"
  fi
}

add_users() {  # $1 = data directory
  local i
  for i in $(seq 1 "$USERS"); do
    echo "Bench-Quantum#Orbit-$i-2026" | "$BIN" --dir "$1" user add "bench$i@example.test" --password-stdin >/dev/null
  done
}

# drive PORT... : the load split over the ports, at once; prints the rate (msgs/s or IMAP ops/s)
drive() {
  local n=$# i=0 p gens=() t0 t1 outs=()
  if [ "$MODE" = imap ]; then
    for p in "$@"; do
      local users="" u
      for u in $(seq 1 "$USERS"); do
        [ $(( (u - 1) % n )) = "$i" ] && users+="bench$u@example.test:Bench-Quantum#Orbit-$u-2026,"
      done
      outs+=("$WORK/imap.$i.json")
      python3 bench/imap-load.py --port $((p - 25 + 993)) --users "${users%,}" --clients $((CLIENTS / n)) \
        --seconds "$SECONDS_RUN" > "$WORK/imap.$i.json" &
      gens+=($!)
      i=$((i + 1))
    done
    for g in "${gens[@]}"; do wait "$g"; done
    python3 - "${outs[@]}" <<'PY'
import json, sys
runs = [json.load(open(f)) for f in sys.argv[1:]]
errors = sum(len(r.get("errors", [])) if isinstance(r.get("errors"), list) else r.get("errors", 0) for r in runs)
if errors:
    sys.exit(f"imap: {errors} errors: {runs}")
print(round(sum(r["ops_per_s"] for r in runs), 1))
PY
    return
  fi
  t0=$(date +%s.%N)
  for p in "$@"; do
    /usr/sbin/smtp-source -s $((SESS / n)) -l "$SIZE" -m $((MSGS / n)) -f a@remote.test -t b@example.test "127.0.0.1:$p" &
    gens+=($!)
  done
  for g in "${gens[@]}"; do wait "$g"; done
  t1=$(date +%s.%N)
  echo "scale=1; $(( (MSGS / n) * n )) / ($t1 - $t0)" | bc
}

wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; return 1; }

run_sqlite() {  # prints msgs/s
  local D; D=$(mktemp -d "$WORK/sqlite.XXXXXX")
  init_node "$D/data" 31000
  echo 'Bench!Quantum#Orbit-2026' | "$BIN" --dir "$D/data" user add b@example.test --password-stdin >/dev/null
  [ "$MODE" = imap ] && add_users "$D/data"
  POSTERN_LOG=warn "$BIN" --dir "$D/data" serve >/dev/null 2>"$D/serve.log" </dev/null &
  local pid=$!
  wait_port 31025
  local rate; rate=$(drive 31025)
  kill -TERM $pid; wait $pid || true
  if [ "$MODE" = smtp ]; then
    local stored; stored=$(sqlite3 "$D/data/postern.db" "SELECT COUNT(*) FROM messages WHERE mailbox_id IN (SELECT x.id FROM mailboxes x JOIN accounts a ON a.id = x.account_id WHERE a.address = 'b@example.test')")
    [ "$stored" = "$MSGS" ] || { echo "sqlite: stored $stored of $MSGS" >&2; exit 1; }
  fi
  echo "$rate"
}

run_pg() {  # $1 = nodes; prints msgs/s
  local n=$1 D db url i pids=() ports=()
  D=$(mktemp -d "$WORK/pg$n.XXXXXX")
  db="bench_$(basename "$D" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9\n' '_')"
  psql "host=${PG%:*} port=${PG#*:} user=mail dbname=mail" -qc "CREATE DATABASE $db"
  url="postgres://mail@${PG}/$db"
  for i in $(seq 1 "$n"); do
    local off=$((32000 + i * 1000))
    if [ "$i" -gt 1 ]; then mkdir -p "$D/n$i/data"; cp "$D/n1/data/master.key" "$D/n$i/data/"; fi
    init_node "$D/n$i/data" "$off" "$url" "n$i"
    if [ "$i" = 1 ]; then
      echo 'Bench!Quantum#Orbit-2026' | "$BIN" --dir "$D/n1/data" user add b@example.test --password-stdin >/dev/null
      [ "$MODE" = imap ] && add_users "$D/n1/data"
    fi
    ports+=($((25 + off)))
  done
  for i in $(seq 1 "$n"); do
    POSTERN_LOG=warn "$BIN" --dir "$D/n$i/data" serve >/dev/null 2>"$D/n$i.log" </dev/null &
    pids+=($!)
  done
  for p in "${ports[@]}"; do wait_port "$p"; done
  local rate; rate=$(drive "${ports[@]}")
  for p in "${pids[@]}"; do kill -TERM "$p"; done
  for p in "${pids[@]}"; do wait "$p" || true; done
  if [ "$MODE" = smtp ]; then
    local want=$(( (MSGS / n) * n )) stored
    stored=$(psql "host=${PG%:*} port=${PG#*:} user=mail dbname=$db" -qtAc "SELECT COUNT(*) FROM messages")
    [ "$stored" = "$want" ] || { echo "pg$n: stored $stored of $want" >&2; exit 1; }
  fi
  psql "host=${PG%:*} port=${PG#*:} user=mail dbname=mail" -qc "DROP DATABASE $db"
  echo "$rate"
}

stats() { python3 -c 'import statistics,sys; v=sorted(map(float,sys.argv[1:])); print(f"{statistics.median(v):.1f} ({v[0]:.1f}-{v[-1]:.1f})")' "$@"; }

declare -a S P1 P2 P3
if [ "$MODE" = imap ]; then UNIT="IMAP ops/s"; LOAD="imap-load.py, $CLIENTS clients, ${SECONDS_RUN} s"
else UNIT="msgs/s"; LOAD="-s $SESS -l $SIZE, $MSGS msgs"; fi
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="s 1 2 3"; else order="3 2 1 s"; fi
  for what in $order; do
    case $what in
      s) v=$(run_sqlite); S+=("$v"); echo "round $r: sqlite 1 node $v $UNIT" ;;
      1) v=$(run_pg 1); P1+=("$v"); echo "round $r: postgres 1 node $v $UNIT" ;;
      2) v=$(run_pg 2); P2+=("$v"); echo "round $r: postgres 2 nodes $v $UNIT" ;;
      3) v=$(run_pg 3); P3+=("$v"); echo "round $r: postgres 3 nodes $v $UNIT" ;;
    esac
  done
done
when=$(date -u +%Y-%m-%dT%H:%MZ)
echo
echo "| run | SQLite, 1 node | PostgreSQL, 1 node | PostgreSQL, 2 nodes | PostgreSQL, 3 nodes |"
echo "|---|---|---|---|---|"
echo "| $when, $LOAD, $ROUNDS rounds, $UNIT median (min-max) | $(stats "${S[@]}") | $(stats "${P1[@]}") | $(stats "${P2[@]}") | $(stats "${P3[@]}") |"
