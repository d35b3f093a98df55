#!/usr/bin/env bash
# IMAP throughput and latency: Postern vs Dovecot 2.3, same machine, same run, same load generator
# (bench/imap-load.py: CLIENTS concurrent clients over implicit TLS, each looping LOGIN, SELECT,
# FETCH flags, FETCH a body, STORE, APPEND, LOGOUT for SECONDS).
#
# Password hashing differs by default: the Dovecot peer stores {PLAIN} passwords, Postern argon2id
# (19 MiB, t=2). So Dovecot is run twice: with its {PLAIN} users, and with the same users re-hashed
# as {ARGON2ID} (libsodium, doveadm's defaults), which is the like-for-like comparison.
#
# Then the memory figure: IDLE_N authenticated sessions held in IDLE, Postern's RSS measured.
# (For that run only, argon2 costs are lowered so that logging in IDLE_N sessions takes seconds.)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${SHARED:-$ROOT/../shared}
CLIENTS=${CLIENTS:-20}
SECONDS_RUN=${SECONDS_RUN:-30}
NUSERS=${NUSERS:-20}
IDLE_N=${IDLE_N:-10000}
OFFSET=${OFFSET:-32000}
export PEERS_DIR=${PEERS_DIR:-/tmp/postern-peers}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== Dovecot peer"
bash "$SHARED/peers/dovecot.sh" setup >/dev/null
bash "$SHARED/peers/dovecot.sh" stop >/dev/null 2>&1 || true

echo "== building postern (release)"
cargo build --release --locked -p postern >/dev/null 2>&1
BIN=${POSTERN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/postern}

D=$(mktemp -d /tmp/postern-imapbench.XXXXXX)
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  bash "$SHARED/peers/dovecot.sh" stop >/dev/null 2>&1 || true
  rm -rf "$D"
}
trap cleanup EXIT

setup_postern() { # $1 = extra [auth] lines
  rm -rf "$D/data"
  "$BIN" init --dir "$D/data" --domain example.test --listen-ip 127.0.0.1 --port-offset "$OFFSET" >/dev/null
  # benchmarks run as root: the server stays root here (a real one runs as [server] user)
  [ "$(id -u)" = 0 ] && sed -i 's/^\[server\]$/[server]\nuser = "root"/' "$D/data/postern.toml"
  # one loopback source: lift the per-IP and per-account caps for the benchmark only
  sed -i "s/^\[imap\]$/[imap]\nmax_connections = 30000\nmax_connections_per_ip = 30000\nmax_sessions_per_account = 30000/" "$D/data/postern.toml"
  printf '\n[auth]\n%s\n' "$1" >> "$D/data/postern.toml"
  PUSERS=
  for i in $(seq 1 "$NUSERS"); do
    echo "Bench-Quantum#Orbit-$i-2026" | "$BIN" --dir "$D/data" user add "bench$i@example.test" --password-stdin >/dev/null
    PUSERS="$PUSERS${PUSERS:+,}bench$i@example.test:Bench-Quantum#Orbit-$i-2026"
  done
}

start_postern() {
  POSTERN_LOG=warn "$BIN" --dir "$D/data" serve >/dev/null 2>"$D/serve.log" </dev/null &
  PID=$!
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$((993 + OFFSET))) 2>/dev/null && break; sleep 0.05; done
}

stop_postern() { kill -TERM "$PID"; wait "$PID" || true; PID=; }

DUSERS=
for i in $(seq 1 "$NUSERS"); do DUSERS="$DUSERS${DUSERS:+,}user$i:pass$i"; done

ONLY=${ONLY:-all}   # all | idle
if [ "$ONLY" = all ]; then
echo "== Postern (argon2id 19 MiB, t=2)"
setup_postern "argon2_memory_kib = 19456"
start_postern
postern=$(python3 bench/imap-load.py --port $((993 + OFFSET)) --users "$PUSERS" --clients "$CLIENTS" --seconds "$SECONDS_RUN")
echo "$postern"
stop_postern

echo "== Dovecot ({PLAIN} passwords)"
bash "$SHARED/peers/dovecot.sh" start >/dev/null
dplain=$(python3 bench/imap-load.py --port 10993 --users "$DUSERS" --clients "$CLIENTS" --seconds "$SECONDS_RUN")
echo "$dplain"
bash "$SHARED/peers/dovecot.sh" stop >/dev/null

echo "== Dovecot ({ARGON2ID} passwords)"
U=$PEERS_DIR/dovecot/users
cp "$U" "$U.plain"
for i in $(seq 1 "$NUSERS"); do
  h=$(doveadm pw -s ARGON2ID -p "pass$i")
  sed -i "s|^user$i:{PLAIN}pass$i:|user$i:$h:|" "$U"
done
bash "$SHARED/peers/dovecot.sh" start >/dev/null
dargon=$(python3 bench/imap-load.py --port 10993 --users "$DUSERS" --clients "$CLIENTS" --seconds "$SECONDS_RUN")
echo "$dargon"
bash "$SHARED/peers/dovecot.sh" stop >/dev/null
mv "$U.plain" "$U"

# The same load on both: Postern paced at the session rate Dovecot {PLAIN} reached, so that the
# per-command latencies compare like for like (unpaced, Postern serves several times the load).
RATE=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["sessions_per_s"])' "$dplain")
echo "== Postern paced at Dovecot {PLAIN}'s $RATE sessions/s"
setup_postern "argon2_memory_kib = 19456"
start_postern
paced=$(python3 bench/imap-load.py --port $((993 + OFFSET)) --users "$PUSERS" --clients "$CLIENTS" --seconds "$SECONDS_RUN" --rate "$RATE")
echo "$paced"
stop_postern
fi

echo "== Postern: $IDLE_N sessions in IDLE (argon2 lowered for this run only)"
setup_postern "argon2_memory_kib = 64
argon2_iterations = 1"
start_postern
rss0=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
python3 bench/imap-load.py --port $((993 + OFFSET)) --users "$PUSERS" --idle "$IDLE_N" --hold 20 > "$D/idle.json" &
LP=$!
for _ in $(seq 600); do [ -s "$D/idle.json" ] && break; sleep 1; done
sleep 5
idle=$(cat "$D/idle.json")
rss1=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
fds=$(ls /proc/$PID/fd | wc -l)
wait $LP || true
stop_postern
echo "$idle; Postern RSS before ${rss0} KiB, with sessions ${rss1} KiB; fds $fds"

[ "$ONLY" = all ] || exit 0
python3 - "$postern" "$dplain" "$dargon" "$idle" "$rss0" "$rss1" "$paced" <<'EOF'
import json, sys, datetime
p, dp, da, idle = (json.loads(x) for x in sys.argv[1:5])
rss0, rss1 = int(sys.argv[5]), int(sys.argv[6])
pp = json.loads(sys.argv[7])
now = datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%MZ")
print()
print("| run | server | ops/s | p50 ms | p99 ms | errors | ratio Postern/peer |")
print("|---|---|---|---|---|---|---|")
print(f"| {now} | Postern (argon2id) | {p['ops_per_s']} | {p['p50_ms']} | {p['p99_ms']} | {p['errors']} | |")
print(f"| {now} | Dovecot {{ARGON2ID}} | {da['ops_per_s']} | {da['p50_ms']} | {da['p99_ms']} | {da['errors']} | **{p['ops_per_s']/da['ops_per_s']:.2f}** |")
print(f"| {now} | Dovecot {{PLAIN}} | {dp['ops_per_s']} | {dp['p50_ms']} | {dp['p99_ms']} | {dp['errors']} | {p['ops_per_s']/dp['ops_per_s']:.2f} |")
print()
print("| command | Postern p50 / p99 ms | Dovecot {ARGON2ID} p50 / p99 ms | Dovecot {PLAIN} p50 / p99 ms |")
print("|---|---|---|---|")
def pq(r, k):
    c = r["per_command"].get(k, {})
    return f"{c.get('p50_ms')} / {c.get('p99_ms')}"
for k in p["per_command"]:
    print(f"| {k} | {pq(p, k)} | {pq(da, k)} | {pq(dp, k)} |")
print()
print(f"At the same load ({pp['sessions_per_s']} sessions/s, {pp['ops_per_s']} ops/s, Postern paced to Dovecot {{PLAIN}}'s rate):")
print()
print("| command | Postern p50 / p99 ms | Dovecot {PLAIN} p50 / p99 ms |")
print("|---|---|---|")
for k in pp["per_command"]:
    print(f"| {k} | {pq(pp, k)} | {pq(dp, k)} |")
print()
print(f"IDLE: {idle['idle_sessions']} sessions (errors {idle['errors']}), Postern RSS {rss0//1024} MiB -> {rss1//1024} MiB "
      f"({(rss1-rss0)/max(1,idle['idle_sessions']):.1f} KiB per session)")
EOF
